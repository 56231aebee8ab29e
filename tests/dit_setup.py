"""A tiny DiT set-up shared by the parallelism tests and their multi-process worker."""

import os

import jax
import numpy as np

from sora_jax import config as config_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, loop
from sora_jax.training import train_state as ts
from sora_jax.parallel import partitioning
from sora_jax.data import packing
from sora_jax.models import builders
from sora_jax.data import batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")

# (data, fsdp, tensor, sequence) meshes of the 8 simulated devices.
MESHES = [(8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (1, 2, 2, 2)]


def tiny_config(**mesh):
    """configs/tiny.py:micro on the given mesh axis sizes, validated."""
    c = config_lib.load_with_arg(TINY, "micro")
    # 4 heads: 2 per tensor shard, still split over sequence 2 in the (1, 2, 2, 2) mesh.
    c.dit.model.num_heads = 4
    c.dit.condition.rate = 0.5  # given frames in half the videos: the conditioning path too
    for axis, size in mesh.items():
        c.mesh[axis] = size
    return config_lib.validate(c)


def mesh_config(shape):
    return tiny_config(**dict(zip(mesh_lib.AXES, shape)))


def fixed_batch(c):
    """The packed DiT batch of step 0 over random one-colour latents (a pure function of c)."""
    rng = np.random.default_rng(0)
    tokens, positions = [], []
    ch = c.vae.model.latent_channels
    for t, h, w in [(2, 4, 6), (1, 4, 4), (2, 4, 4), (1, 6, 4)] * 8:
        lat = np.broadcast_to(rng.normal(size=(1, 1, 1, ch)), (t, h, w, ch)).astype(np.float32)
        tok, pos = packing.patchify(lat, tuple(c.dit.patch))
        tokens.append(tok)
        positions.append(pos)
    text = builders.build_text_encoder(c)
    ids, mask = text.tokenize(["a small red circle on a grey background"] * len(tokens))
    cache = batches.LatentCache(tokens, positions, ids, mask, np.zeros(ch), np.ones(ch))
    null_ids, null_mask = (a[0] for a in text.tokenize([""]))
    return batches.dit_batch(c, cache, null_ids, null_mask, 0)


def build(c, mesh):
    """(initial state placed on `mesh`, jitted sharded train step)."""
    text = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh, None)
    step = loop.jit_train_step(
        dit_trainer.make_train_step(c, dit, text, tx),
        mesh,
        loop.shardings_of(state),
        partitioning.rules_from_config(c.mesh.rules),
    )
    return state, step


def run_steps(c, mesh, batch, steps=1, when_compiled=lambda: None):
    """(losses, state) after `steps` train steps on the same batch from the same init.

    The step is compiled before the first one runs and `when_compiled` called in between: the
    multi-process worker lines its processes up there, since CPU collectives give up on a
    peer that comes more than 30 s late (one process may still be compiling).
    """
    state, step = build(c, mesh)
    batch = mesh_lib.shard_batch(batch, mesh)
    if steps:
        step = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
        when_compiled()
    losses = []
    for i in range(steps):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    return losses, state

"""Validation during DiT training: held-out loss at fixed times and noise, and samples.

Every `dit.train.val_every` steps (and at the last step) the diffusion loss is measured on the
held-out videos (`data.val_fraction` of a grain source, by index; for the built-in set, moving
shapes after the latent cache), packed once into the training row shapes without caption
dropout, token dropping or frame conditioning. Batch i's times and noise are drawn from
`fold_in(PRNGKey(dit.train.val_seed), i)`, so the same weights give the same loss in any run,
before or after a resume, and curves of two runs with the same data and seed compare. The loss
is reported for the trained params ('val/loss') and their EMA ('val/loss_ema'), and per
(latent frames x height x width) token-grid bucket ('val/loss/<t>x<h>x<w>').

Every `dit.train.sample_every` steps the EMA model samples `config.sample.prompts` (size and
seed of config.sample) into `<workdir>/dit/val_samples/<step>/` (.mp4, .gif, a gallery page)
and the GIFs go to TensorBoard as images.
"""

from __future__ import annotations

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sora_jax.data import batches as batches_lib
from sora_jax.inference import loader
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.inference import samples
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.training import train_state as ts


def packing_config(config):
    """config with what makes training batches random switched off: caption dropout, token
    dropping and frame conditioning."""
    c = config.copy_and_resolve_references()
    c.dit.text_dropout = 0.0
    c.dit.token_drop.rate = 0.0
    c.dit.token_drop.start_rate = 0.0
    c.dit.condition.rate = 0.0
    return c


def _num_videos(batch) -> int:
    return sum(len(np.unique(row[row > 0])) for row in batch["segment_ids"])


def pack_held_out(config, cache: batches_lib.LatentCache, null_ids, null_mask) -> list[dict]:
    """The held-out videos of `cache` packed, in order, into as few batches of the training
    row shape as first-fit allows; a video longer than a row is left out (logged)."""
    c = packing_config(config)
    rng = np.random.default_rng(0)  # draws nothing that matters: no caption dropout
    out, start, n = [], 0, len(cache.tokens)
    while start < n:
        # The longest run of videos from `start` that one batch holds whole.
        for end in range(n, start, -1):
            draw = np.arange(start, end)
            batch = batches_lib.pack_cached(c, cache, null_ids, null_mask, rng, 0, draw)
            if _num_videos(batch) == end - start:
                break
        else:
            logging.warning(
                "validation: held-out video %d (%d tokens) is longer than a row; left out",
                start,
                len(cache.tokens[start]),
            )
            start += 1
            continue
        out.append(batch)
        start = end
    return out


def segment_buckets(batch) -> list[list[str | None]]:
    """Per row, per segment slot: the video's token grid 't x h x w' (None: empty slot)."""
    slots = batch["caption_mask"].shape[1]
    names = []
    for seg, pos in zip(batch["segment_ids"], batch["positions"]):
        row = []
        for k in range(1, slots + 1):
            p = pos[seg == k]
            row.append("x".join(str(int(v)) for v in p.max(0) + 1) if len(p) else None)
        names.append(row)
    return names


def make_segment_errors(token_errors, draw):
    """`f(params, batch, key) -> (error sums f32[b s], counts f32[b s])` per segment slot, at
    the times and noise `draw(batch, key)` gives (no dropout)."""

    def segment_errors(params, batch, key):
        t, noise, t_cond = draw(batch, key)
        err = token_errors(params, batch, t, noise, t_cond, None)
        seg = batch["segment_ids"]
        one_hot = seg[..., None] == jnp.arange(1, batch["caption_mask"].shape[1] + 1)
        counts = jnp.sum(one_hot, axis=1) * batch["tokens"].shape[-1]
        return jnp.einsum("bl,bls->bs", err, one_hot.astype(err.dtype)), counts.astype(err.dtype)

    return segment_errors


class Validator:
    """`validator(step, state) -> {name: value}` for `loop.run`: writes the held-out losses
    and the samples due at `step` (every host calls it; process 0 writes) and returns the
    losses ({} when none is due)."""

    def __init__(
        self, config, held_out: list[dict], segment_errors, mesh, writer, out_dir, models=None
    ):
        """`held_out`: host batches (`pack_held_out`); `segment_errors`: from
        `make_segment_errors`; `models(state) -> loader.InferenceModel` of the state's EMA
        weights (`sample_model`; None: no samples), sampled into `out_dir`/<step>."""
        self.train = config.dit.train
        self.config, self.mesh, self.writer = config, mesh, writer
        self.out_dir, self.models = out_dir, models
        self.batches = held_out
        self.buckets = [segment_buckets(b) for b in held_out]
        self.rules = partitioning.rules_from_config(config.mesh.rules)
        # Replicated results: every host reads them whole.
        self.fn = jax.jit(segment_errors, out_shardings=mesh_lib.replicated(mesh))

    def due(self, every: int, step: int) -> bool:
        return every > 0 and (step % every == 0 or step == self.train.steps)

    def losses(self, params) -> dict[str, float]:
        """'loss' and 'loss/<bucket>' of `params` over the held-out batches (sums of squared
        errors / counts of loss elements, as the training loss)."""
        sums, counts = collections.defaultdict(float), collections.defaultdict(float)
        with partitioning.activate(self.mesh, self.rules):
            for i, (batch, names) in enumerate(zip(self.batches, self.buckets)):
                key = jax.random.fold_in(jax.random.PRNGKey(self.train.val_seed), i)
                e, n = jax.device_get(self.fn(params, mesh_lib.shard_batch(batch, self.mesh), key))
                for r, row in enumerate(names):
                    for k, name in enumerate(row):
                        if name is not None:
                            for tag in ("loss", f"loss/{name}"):
                                sums[tag] += float(e[r, k])
                                counts[tag] += float(n[r, k])
        return {tag: sums[tag] / counts[tag] for tag in sums}

    def __call__(self, step: int, state) -> dict[str, float]:
        out = {}
        if self.batches and self.due(self.train.val_every, step):
            out = {f"val/{k}": v for k, v in self.losses(state.params).items()}
            out["val/loss_ema"] = self.losses(ts.ema_model(state))["loss"]
            self.writer.write_scalars(step, out)
        if self.models is not None and self.due(self.train.sample_every, step):
            paths = self.write_samples(step, state)
            gifs = [p for p in paths if p.endswith(".gif")]
            self.writer.write_images(
                step,
                {f"val/samples/{i:02d}": open(p, "rb").read() for i, p in enumerate(gifs)},
            )
        return out

    def write_samples(self, step: int, state) -> list[str]:
        """Samples of config.sample.prompts by the EMA weights at `step` (paths of the
        .mp4 and .gif files; none on processes but 0, which sample along)."""
        s = self.config.sample
        pipe = pipeline_lib.Pipeline(self.models(state), mesh=self.mesh)
        size = dict(num_frames=s.num_frames, height=s.height, width=s.width, seed=s.seed)
        if jax.process_index() != 0:
            pipe.generate(list(s.prompts), **size)
            return []
        directory = os.path.join(self.out_dir, str(step))
        return samples.write_samples(pipe, list(s.prompts), directory, **size)


def sample_model(config, vae_model, vae_params, dit, text_encoder, name: str):
    """`state -> loader.InferenceModel` of the EMA weights of a DiT train state."""

    def build(state) -> loader.InferenceModel:
        extras = jax.device_get(state.extras)
        return loader.InferenceModel(
            config=config,
            vae=vae_model,
            vae_params=vae_params,
            dit=dit,
            text_encoder=text_encoder,
            params=ts.ema_model(state),
            latent_mean=np.asarray(extras["latent_mean"]),
            latent_std=np.asarray(extras["latent_std"]),
            name=name,
        )

    return build

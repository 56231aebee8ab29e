"""Stage 1: train the causal video VAE (L1 reconstruction + KL) on moving shapes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax.data import shapes
from sora_jax.models import vae as vae_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import checkpoint, grad_accum, loop
from sora_jax.training import train_state as ts


def build_vae(config: ml_collections.ConfigDict) -> vae_lib.CausalVAE:
    m = config.vae.model
    return vae_lib.CausalVAE(
        base_channels=m.base_channels,
        channel_mults=tuple(m.channel_mults),
        num_res_blocks=m.num_res_blocks,
        latent_channels=m.latent_channels,
        temporal_downsample=tuple(bool(d) for d in m.temporal_downsample),
        norm_groups=m.norm_groups,
        patch_size=m.patch_size,
        shortcuts=m.shortcuts,
    )


def to_model_range(video: np.ndarray) -> np.ndarray:
    """uint8[... 3] in [0, 255] -> f32 in [-1, 1]."""
    return video.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """f32 in [-1, 1] -> uint8 in [0, 255]."""
    return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _bucket_source(seed, num_examples, frames, height, width):
    return shapes.MovingShapes(
        seed=seed,
        num_examples=num_examples,
        frame_choices=(frames,),
        resolutions=((height, width),),
        image_fraction=1.0 if frames == 1 else 0.0,
    )


def vae_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
    """The batch of step `step`: one (frames, h, w) bucket, a pure function of the step."""
    d, t = config.data, config.vae.train
    buckets = [tuple(b) for b in t.buckets]
    bucket = buckets[np.random.default_rng([d.seed, 1, step]).integers(len(buckets))]
    source = _bucket_source(d.seed, d.num_examples, *bucket)
    first = step * t.batch_size
    videos = [source[(first + i) % len(source)]["video"] for i in range(t.batch_size)]
    return {"video": to_model_range(np.stack(videos))}


def make_train_step(model: vae_lib.CausalVAE, tx, v: ml_collections.ConfigDict):
    """Pure `train_step(state, batch, rng) -> (state, metrics)` for the VAE (config.vae)."""

    def train_step(state: ts.TrainState, batch, rng):
        k = v.train.grad_accum_steps

        def loss_fn(params, micro):
            # With k microbatches: the mean of their losses (batch statistics such as the
            # latent-noise spread, and the random draws, are per microbatch).
            x, index = micro["video"], micro["index"][0]
            rng_post, rng_aug = jax.random.split(rng if k == 1 else jax.random.fold_in(rng, index))
            mean, logvar = model.apply({"params": params}, x, method=model.encode)
            z = mean
            if v.sample_posterior:
                z = vae_lib.posterior_sample(mean, logvar, rng_post)
            if v.latent_noise > 0:
                # Noise relative to the latents' own spread (held constant, so the encoder
                # cannot escape it by growing): the decoder learns to map nearby latents to
                # nearby videos, which the DiT's imperfect samples need.
                spread = jax.lax.stop_gradient(jnp.std(mean, axis=(0, 1, 2, 3)))
                z = z + v.latent_noise * spread * jax.random.normal(rng_aug, z.shape)
            recon = model.apply({"params": params}, z, method=model.decode)
            l1 = jnp.mean(jnp.abs(recon - x))
            mse = jnp.mean((recon - x) ** 2)
            kl = jnp.mean(vae_lib.kl_divergence(mean, logvar))
            loss = (l1 + v.mse_weight * mse + v.kl_weight * kl) / k
            return loss, {"l1": l1, "kl": kl, "mse": mse}

        # Microbatch j's rows all carry index j (rows j, j + k, ... go to microbatch j).
        index = jnp.arange(batch["video"].shape[0]) % k
        (loss, aux), grads = grad_accum.sum_gradients(
            jax.value_and_grad(loss_fn, has_aux=True),
            state.params,
            {"video": batch["video"], "index": index},
            k,
        )
        new_state = ts.apply_gradients(state, grads, tx, v.train.ema_decay)
        return new_state, {"loss": loss, **aux, **ts.norms(grads, state.params)}

    return train_step


def init_state(config, model, tx, mesh):
    """Abstract-first init: params are created directly with replicated sharding."""
    t, h, w = config.vae.train.buckets[0]
    x = jnp.zeros((1, t, h, w, 3), jnp.float32)

    def init(key):
        params = model.init({"params": key, "posterior": key}, x, sample_posterior=False)["params"]
        return ts.create(params, tx)

    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(config.seed))


def train(config: ml_collections.ConfigDict, workdir: str, mesh, writer):
    """Trains (or resumes, or skips if finished) the VAE; returns (model, state, history)."""
    model = build_vae(config)
    t = config.vae.train
    tx = ts.make_optimizer(t)
    state = init_state(config, model, tx, mesh)
    ckpt = checkpoint.for_stage(config, workdir, "vae")
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    step_fn = loop.jit_train_step(make_train_step(model, tx, config.vae), mesh)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    state, history = loop.run(
        "vae", state, step_fn, functools.partial(vae_batch, config), t, ckpt, writer, mesh, key
    )
    ckpt.close()
    return model, state, history


def load(config, workdir: str, mesh):
    """The trained VAE (model, EMA params) from the workdir's latest VAE checkpoint."""
    model = build_vae(config)
    tx = ts.make_optimizer(config.vae.train)
    ckpt = checkpoint.for_stage(config, workdir, "vae")
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"no VAE checkpoint under {ckpt.directory}: train the 'vae' stage first "
            f"(python -m sora_jax.train --config=... --workdir={workdir})"
        )
    state = ckpt.restore(init_state(config, model, tx, mesh))
    ckpt.close()
    return model, state.ema_params

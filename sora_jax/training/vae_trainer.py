"""Stage 1: train the causal video VAE on moving shapes, or on own videos (data.source's,
``vae.train.data='source'``: `data.vae_input`, its iterator state checkpointed with the model).

Losses: L1 + L2 reconstruction, KL, optionally LPIPS (``config.vae.perceptual``) and a 3D patch
GAN with hinge loss and VQGAN's adaptive weight from a start step (``config.vae.gan``; the
discriminator's params and optimizer state live in the same checkpointed state). Batches can mix
videos and images (``vae.train.image_batch_size``). After the last step the latents' per-channel
mean and std over ``vae.latent_stats_batches`` batches are stored in the final checkpoint
(``state.extras``): the DiT stage normalises latents with them.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from sora_jax.common import checkpoint, finite
from sora_jax.data import input_pipeline, shapes, vae_input
from sora_jax.evaluation import vae_eval
from sora_jax.models import builders
from sora_jax.models import discriminator as disc_lib
from sora_jax.models import lpips as lpips_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import vae_inference, wan_folder
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import loop, vae_losses
from sora_jax.training import train_state as ts


class VAEState(ts.TrainState):
    """The VAE's train state plus the discriminator's params and optimizer state (both None
    without a GAN, so such checkpoints keep the plain TrainState layout)."""

    disc_params: Any = None
    disc_opt_state: Any = None


@functools.lru_cache(maxsize=None)
def _bucket_source(seed, num_examples, frames, height, width, exclude_words):
    return shapes.MovingShapes(
        seed=seed,
        num_examples=num_examples,
        frame_choices=(frames,),
        resolutions=((height, width),),
        image_fraction=1.0 if frames == 1 else 0.0,
        exclude_words=exclude_words,
    )


def vae_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
    """The batch of step `step`, a pure function of the step: ``video`` f32[b t h w 3] of one
    (frames, h, w) bucket and, with ``image_batch_size > 0``, ``image`` f32[bi 1 h w 3] (still
    images of the same size, from a source of their own)."""
    d, t = config.data, config.vae.train
    frames, h, w = vae_input.step_bucket(config, step)
    exclude = tuple(d.exclude_words)
    source = _bucket_source(d.seed, d.num_examples, frames, h, w, exclude)
    first = step * t.batch_size
    videos = [source[(first + i) % len(source)]["video"] for i in range(t.batch_size)]
    batch = {"video": builders.to_model_range(np.stack(videos))}
    if t.image_batch_size > 0:
        images = _bucket_source(d.seed + 1, d.num_examples, 1, h, w, exclude)
        first = step * t.image_batch_size
        batch["image"] = builders.to_model_range(
            np.stack(
                [images[(first + i) % len(images)]["video"] for i in range(t.image_batch_size)]
            )
        )
    return batch


def build_discriminator(config) -> disc_lib.PatchDiscriminator3d | None:
    """The GAN's discriminator, or None when ``config.vae.gan.weight`` is 0."""
    g = config.vae.gan
    if g.weight <= 0:
        return None
    return disc_lib.PatchDiscriminator3d(
        channels=tuple(g.channels),
        temporal_downsample=tuple(bool(d) for d in g.temporal_downsample),
        norm_groups=g.norm_groups,
    )


def disc_optimizer(config):
    g = config.vae.gan
    t = ml_collections.ConfigDict(dict(config.vae.train))
    t.learning_rate = g.learning_rate
    return ts.make_optimizer(t)


def build_perceptual(config):
    """``(f32[b t h w 3], f32[b t h w 3]) -> f32[b t]`` LPIPS with the weights of
    ``config.vae.perceptual.path``, or None when its weight is 0."""
    p = config.vae.perceptual
    if p.weight <= 0:
        return None
    return lpips_lib.distance_fn(*lpips_lib.load(p.path))


def _replace_at(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of nested dict ``tree`` with the leaf at ``path`` replaced."""
    if not path:
        return value
    return {**tree, path[0]: _replace_at(tree[path[0]], path[1:], value)}


def _get_at(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def make_train_step(
    model: vae_lib.CausalVAE,
    tx,
    v: ml_collections.ConfigDict,
    disc: disc_lib.PatchDiscriminator3d | None = None,
    disc_tx=None,
    perceptual=None,
):
    """Pure `train_step(state, batch, rng) -> (state, metrics)` for the VAE (config.vae).

    ``disc`` / ``disc_tx`` (see ``build_discriminator``) turn on the GAN, ``perceptual`` (see
    ``build_perceptual``) the LPIPS term. The batch's parts (``video``, and ``image`` for joint
    batches) each go through the VAE; every loss is a mean over all examples of all parts.
    """
    g = v.get("gan")

    def reconstruction_loss(recon, x):
        """f32[b] per example: L1 + mse_weight * L2 (+ perceptual_weight * LPIPS)."""
        err = recon - x
        l1 = jnp.mean(jnp.abs(err), axis=(1, 2, 3, 4))
        mse = jnp.mean(err**2, axis=(1, 2, 3, 4))
        parts = {"l1": l1, "mse": mse}
        rec = l1 + v.mse_weight * mse
        if perceptual is not None:
            parts["lpips"] = jnp.mean(perceptual(recon, x), axis=1)
            rec = rec + v.perceptual.weight * parts["lpips"]
        return rec, parts

    def forward(params, x, rng):
        rng_post, rng_aug = jax.random.split(rng)
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
        return z, mean, logvar

    def gan_terms(params, disc_params, zs, xs, recons, factor):
        """(generator loss, adaptive weight): the weight compares the gradient norms of the
        reconstruction and GAN losses at the decoder's last layer (no gradient through it)."""

        def gen(recons):
            fake = [disc.apply({"params": disc_params}, r) for r in recons]
            n = sum(f.shape[0] for f in fake)
            return sum(vae_losses.generator_loss(f) * f.shape[0] for f in fake) / n

        def last_layer_losses(kernel):
            p = _replace_at(jax.lax.stop_gradient(params), vae_losses.last_layer_path, kernel)
            rs = [
                model.apply({"params": p}, jax.lax.stop_gradient(z), method=model.decode)
                for z in zs
            ]
            n = sum(x.shape[0] for x in xs)
            rec = sum(jnp.sum(reconstruction_loss(r, x)[0]) for r, x in zip(rs, xs)) / n
            return rec, gen(rs)

        kernel = jax.lax.stop_gradient(_get_at(params, vae_losses.last_layer_path))
        rec_grad = jax.grad(lambda k: last_layer_losses(k)[0])(kernel)
        gan_grad = jax.grad(lambda k: last_layer_losses(k)[1])(kernel)
        weight = vae_losses.adaptive_weight(rec_grad, gan_grad, g.max_adaptive_weight)
        return gen(recons), weight

    def loss_fn(params, disc_params, batch, rng, factor):
        xs = [batch[k] for k in ("video", "image") if k in batch]
        # The videos use `rng` itself (as before joint batches), the images a stream of their own.
        rngs = [rng] + [jax.random.fold_in(rng, i) for i in range(1, len(xs))]
        zs, recons, rec, kl, parts = [], [], [], [], {}
        for x, r in zip(xs, rngs):
            z, mean, logvar = forward(params, x, r)
            recon = model.apply({"params": params}, z, method=model.decode)
            rec_x, parts_x = reconstruction_loss(recon, x)
            zs.append(z)
            recons.append(recon)
            rec.append(rec_x)
            kl.append(vae_lib.kl_divergence(mean, logvar))
            for k, val in parts_x.items():
                parts.setdefault(k, []).append(val)
        aux = {k: jnp.mean(jnp.concatenate(val)) for k, val in parts.items()}
        aux["kl"] = jnp.mean(jnp.concatenate(kl))
        loss = jnp.mean(jnp.concatenate(rec)) + v.kl_weight * aux["kl"]
        if disc is not None:
            # Before the start step the GAN term is multiplied by 0: skip its decodes and
            # discriminator passes, which cost several times the rest of the step.
            g_loss, weight = jax.lax.cond(
                factor > 0,
                lambda: gan_terms(params, disc_params, zs, xs, recons, factor),
                lambda: (jnp.float32(0.0), jnp.float32(0.0)),
            )
            loss = loss + g.weight * factor * weight * g_loss
            aux.update(gan_g_loss=g_loss, gan_adaptive_weight=weight, gan_factor=factor)
        return loss, (aux, [jax.lax.stop_gradient(r) for r in recons])

    def disc_loss_fn(disc_params, batch, recons, factor):
        xs = [batch[k] for k in ("video", "image") if k in batch]
        losses = [
            vae_losses.hinge_discriminator_loss(
                disc.apply({"params": disc_params}, x), disc.apply({"params": disc_params}, r)
            )
            * x.shape[0]
            for x, r in zip(xs, recons)
        ]
        return factor * sum(losses) / sum(x.shape[0] for x in xs)

    def train_step(state: VAEState, batch, rng):
        factor = vae_losses.gan_factor(state.step, g.start_step) if disc is not None else 0.0
        (loss, (aux, recons)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.disc_params, batch, rng, factor
        )
        new_state = ts.apply_gradients(state, grads, tx, v.train.ema_decay)
        metrics = {"loss": loss, **aux, **ts.norms(grads, state.params)}
        ok = finite.step_is_finite(loss, metrics["grad_norm"])
        if disc is not None:
            # The discriminator learns from the same step's reconstructions (before the update),
            # and only from the start step on (its loss is scaled by the same factor).
            d_loss, d_grads = jax.lax.cond(
                factor > 0,
                lambda: jax.value_and_grad(disc_loss_fn)(state.disc_params, batch, recons, factor),
                lambda: (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, state.disc_params)),
            )
            updates, d_opt = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
            new_state = new_state.replace(
                disc_params=optax.apply_updates(state.disc_params, updates), disc_opt_state=d_opt
            )
            metrics["gan_d_loss"] = d_loss
            ok = ok & jnp.isfinite(d_loss)
        if v.train.skip_nonfinite:
            new_state = finite.keep_if_finite(state, new_state, ok)
        metrics["finite"] = ok
        return new_state, metrics

    return train_step


def _stats_extras(mean, std) -> dict:
    return {
        "latent_mean": jnp.asarray(mean, jnp.float32),
        "latent_std": jnp.asarray(std, jnp.float32),
    }


def init_state(config, model, tx, mesh, disc=None, disc_tx=None) -> VAEState:
    """Abstract-first init: params are created directly with replicated sharding. ``extras``
    holds the latent statistics (0 mean, unit std until the end of training fills them in)."""
    t, h, w = config.vae.train.buckets[0]
    x = jnp.zeros((1, t, h, w, 3), jnp.float32)
    c = config.vae.model.latent_channels
    init_vae = builders.vae_init_fn(config, model)

    def init(key):
        # The VAE draws from `key` itself, the discriminator from a stream of its own (so
        # adding a GAN leaves the VAE's init unchanged).
        params = init_vae(key)
        base = ts.create(params, tx, _stats_extras(np.zeros(c), np.ones(c)))
        state = VAEState(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        if disc is not None:
            dp = disc.init(jax.random.fold_in(key, 1), x)["params"]
            state = state.replace(disc_params=dp, disc_opt_state=disc_tx.init(dp))
        return state

    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(config.seed))


def latent_stats(config, model, params, batches=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std f32[c] of the posterior means of ``vae.latent_stats_batches``
    training-distribution batches: `batches(i)`'s (default: the built-in set's, drawn after
    the training steps' batches)."""
    if batches is None:
        batches = lambda i: vae_batch(config, config.vae.train.steps + i)  # noqa: E731
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)[0])
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(config.vae.latent_stats_batches):
        batch = batches(i)
        for x in batch.values():
            z = np.asarray(encode(params, x), np.float64)
            z = z.reshape(-1, z.shape[-1])
            total, total_sq, count = total + z.sum(0), total_sq + (z**2).sum(0), count + len(z)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def with_latent_stats(config, model, state: VAEState, batches=None) -> VAEState:
    """``state`` with ``extras`` = the latent statistics of its EMA params (on `batches`,
    see `latent_stats`)."""
    mean, std = latent_stats(config, model, state.ema_params, batches)
    logging.info("VAE latent stats: mean %s std %s", np.round(mean, 3), np.round(std, 3))
    return state.replace(extras=_stats_extras(mean, std))


def _restore(ckpt: checkpoint.Checkpointer, target: VAEState, step: int) -> VAEState:
    """Restores step `step` into ``target``; checkpoints from before latent statistics were
    stored (no ``extras``) restore without them (``extras`` is then None)."""
    try:
        return ckpt.restore(target, step)
    except ValueError as e:  # orbax: the saved tree's structure differs from the target's
        # Such a checkpoint holds a plain TrainState with extras None (and no GAN).
        plain = ts.TrainState(target.step, target.params, target.opt_state, target.ema_params)
        try:
            old = ckpt.restore(plain, step)
        except ValueError:
            raise e from None
        return target.replace(
            step=old.step, params=old.params, opt_state=old.opt_state, ema_params=old.ema_params
        ).replace(extras=None)


def uses_source(config) -> bool:
    """Whether the VAE trains on data.source's videos (`vae_input`), not the built-in set."""
    return checkpoint.stage_has_data(config, "vae")


def validator(config, model, writer, held_out=None):
    """`validate(step, state) -> {name: value}` for `loop.run` (None when vae.train.val_every
    is 0): every val_every steps and at the last, PSNR and SSIM of the EMA VAE's
    reconstructions of `val_examples` held-out videos per training bucket, as
    'vae/val/psnr/<t>x<h>x<w>', and their mean over buckets ('vae/val/psnr', 'vae/val/ssim'),
    written to TensorBoard. The videos: `held_out(k, bucket)`'s (own data,
    `VAEBatches.held_out_videos`), else moving shapes of config.eval.seed (never a training
    seed)."""
    t = config.vae.train
    if not t.val_every:
        return None
    if held_out is None:
        held_out = lambda k, b: vae_eval.held_out_videos(config.eval.seed, k, *b)  # noqa: E731
    sets = {"x".join(map(str, b)): held_out(t.val_examples, tuple(b)) for b in t.buckets}
    sets = {name: videos for name, videos in sets.items() if len(videos)}
    if not sets:
        logging.warning("VAE validation: no held-out videos (data.val_fraction=0?); skipped")
        return None
    inference = vae_inference.from_config(config)

    def validate(step: int, state) -> dict[str, float]:
        if step % t.val_every and step != t.steps:
            return {}
        out = {}
        for name, videos in sets.items():
            recon = vae_eval.reconstruct_videos(
                model, state.ema_params, videos, inference, batch_size=len(videos)
            )
            m = vae_eval.metrics(videos, recon)
            out.update({f"vae/val/{k}/{name}": m[k] for k in ("psnr", "ssim")})
        for k in ("psnr", "ssim"):
            out[f"vae/val/{k}"] = float(np.mean([out[f"vae/val/{k}/{n}"] for n in sets]))
        writer.write_scalars(step, out)
        return out

    return validate


def train(config: ml_collections.ConfigDict, workdir: str, mesh, writer):
    """Trains (or resumes, or skips if finished) the VAE; returns (model, state, history)."""
    model = builders.build_vae(config)
    t = config.vae.train
    tx = ts.make_optimizer(t)
    disc = build_discriminator(config)
    disc_tx = disc_optimizer(config) if disc is not None else None
    state = init_state(config, model, tx, mesh, disc, disc_tx)
    ckpt = checkpoint.for_stage(config, workdir, "vae")
    own = uses_source(config)
    if own:
        log_dir = os.path.join(workdir, "vae")
        os.makedirs(log_dir, exist_ok=True)
        batch_fn = vae_input.VAEBatches(config, mesh, input_pipeline.bad_files_path(log_dir))
        # The latent statistics: the first batches of a fresh pass over the data (opened when
        # the last step is done).
        fresh = functools.cache(lambda: vae_input.VAEBatches(config, mesh))
        stats_batches = lambda i: fresh().local_batch(i)  # noqa: E731
        held_out = batch_fn.held_out_videos
    else:
        batch_fn = functools.partial(vae_batch, config)
        stats_batches = held_out = None
    if ckpt.all_steps():
        target = state
        if own:
            state, data = loop.resume(
                "vae", ckpt, lambda s: (_restore(ckpt, target, s), ckpt.restore_data(s))
            )
            batch_fn.set_state(data)
        else:
            state = loop.resume("vae", ckpt, lambda s: _restore(ckpt, target, s))
    step_fn = loop.jit_train_steps(
        make_train_step(model, tx, config.vae, disc, disc_tx, build_perceptual(config)), mesh
    )
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    state, history = loop.run(
        "vae",
        state,
        step_fn,
        batch_fn,
        t,
        ckpt,
        writer,
        mesh,
        key,
        finalize=functools.partial(with_latent_stats, config, model, batches=stats_batches),
        validate=validator(config, model, writer, held_out),
    )
    ckpt.close()
    return model, state, history


def load_state(config, workdir: str, mesh) -> tuple[vae_lib.CausalVAE, VAEState]:
    """(model, state) from the workdir's latest VAE checkpoint; ``state.extras`` always holds
    the latent statistics (computed here for checkpoints written before they were stored).
    A Wan VAE (vae.kind 'wan') comes from its folder instead, at step 0 with its own
    statistics."""
    model = builders.build_vae(config)
    if config.vae.kind == "wan":
        params = jax.device_put(
            wan_folder.load_vae_params(model, config.vae.path), mesh_lib.replicated(mesh)
        )
        extras = _stats_extras(*wan_folder.latent_stats(config))
        zero = jnp.zeros((), jnp.int32)
        return model, VAEState(zero, params, None, params, extras)
    tx = ts.make_optimizer(config.vae.train)
    disc = build_discriminator(config)
    disc_tx = disc_optimizer(config) if disc is not None else None
    ckpt = checkpoint.for_stage(config, workdir, "vae")
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"no VAE checkpoint under {ckpt.directory}: train the 'vae' stage first "
            f"(python -m sora_jax.train --config=... --workdir={workdir})"
        )
    target = init_state(config, model, tx, mesh, disc, disc_tx)
    _, state = ckpt.restore_newest(lambda s: _restore(ckpt, target, s), "VAE checkpoint")
    ckpt.close()
    if state.extras is None:
        state = with_latent_stats(config, model, state)
    return model, state


def load_latent_stats(config, workdir: str, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) f32[c] of the VAE's latents, stored with its checkpoint."""
    _, state = load_state(config, workdir, mesh)
    return np.asarray(state.extras["latent_mean"]), np.asarray(state.extras["latent_std"])

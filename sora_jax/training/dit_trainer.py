"""Stage 2: train the DiT (rectified flow or DDPM) on patch-n'-packed VAE latents.

The frozen VAE encodes a cache of moving-shapes videos once (so the VAE costs
nothing per step); each step packs a random draw of cached latents, of mixed
durations and aspect ratios, into fixed-length token rows (`data.batches`). Own
videos come through the grain input (`data.dit_input`).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax.common import checkpoint, finite
from sora_jax.data import batches, dit_input
from sora_jax.diffusion import objectives
from sora_jax.models import builders
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.training import finetune, grad_accum, loop, vae_trainer, validation
from sora_jax.training import train_state as ts


def text_features(text_encoder, text_params, ids, mask):
    """f32[b s lt dim] text embeddings for caption ids i32[b s lt]."""
    b, s, lt = ids.shape
    emb = text_encoder.encode(text_params, ids.reshape(b * s, lt), mask.reshape(b * s, lt))
    return emb.reshape(b, s, lt, -1)


def loss_mask(batch):
    """bool[b l]: the tokens that carry loss (not padding, not given frames)."""
    valid = batch["segment_ids"] > 0
    return valid & ~batch["cond_mask"] if "cond_mask" in batch else valid


def make_draw(config):
    """`draw(batch, rng) -> (t f32[b s], noise like batch['tokens'], t_cond f32[b s] | None)`:
    a step's times, noise and given frames' times for the whole batch."""
    objective = objectives.from_config(config)
    cond_noise = float(config.dit.condition.noise)

    def draw(batch, rng):
        x0, seg = batch["tokens"], batch["segment_ids"]
        num_seg = batch["caption_mask"].shape[1]  # caption slots per row, from the batch
        rng_t, rng_n = jax.random.split(rng)
        # Tokens per segment f32[b s]: the token-dependent time shift of each video (the whole
        # video's count when tokens were dropped).
        counts = jnp.sum(seg[:, :, None] == jnp.arange(1, num_seg + 1), axis=1)
        counts = batch.get("num_tokens", counts.astype(jnp.float32))
        t = objective.sample_t(rng_t, seg.shape[:1] + (num_seg,), counts)
        # Given frames' time per segment f32[b s] with noise augmentation, else None (a
        # stream of its own, so that it leaves t and the noise unchanged).
        t_cond = None
        if cond_noise > 0:
            t_cond = cond_noise * jax.random.uniform(jax.random.fold_in(rng, 2), t.shape)
        return t, jax.random.normal(rng_n, x0.shape, x0.dtype), t_cond

    return draw


def make_token_errors(config, dit, text_encoder, frozen_text_params=None):
    """`errors(params, batch, t, noise, t_cond, dropout_rng) -> f32[b l]`: each token's
    squared error of the objective's target, weighted and summed over channels (0 on tokens
    without loss), for params {'dit': ..., 'text': ...}. See `make_train_step` for the text
    encoder's params; `dropout_rng` None runs without LoRA dropout."""
    objective = objectives.from_config(config)
    adapter_dropout = dit.lora is not None and dit.lora.dropout > 0

    def errors(params, batch, t, noise, t_cond, dropout_rng):
        if "caption_emb" in batch:
            text = batch["caption_emb"]
        else:
            text_params = params["text"] if text_encoder.trainable else frozen_text_params
            text = text_features(
                text_encoder, text_params, batch["caption_ids"], batch["caption_mask"]
            )
        x0, seg = batch["tokens"], batch["segment_ids"]
        per_token = lambda a: jnp.take_along_axis(a, jnp.maximum(seg - 1, 0), axis=1)  # noqa: E731
        t_tok = per_token(t)[..., None]
        x_t = objective.corrupt(x0, noise, t_tok)
        valid = loss_mask(batch)
        if "cond_mask" in batch:
            # Given frames: at their own time (0, clean, without noise augmentation), and no
            # loss on them.
            cond = batch["cond_mask"] & (seg > 0)
            x_given = x0
            if t_cond is not None:
                x_given = objective.corrupt(x0, noise, per_token(t_cond)[..., None])
            x_t = jnp.where(cond[..., None], x_given, x_t)
            kw = dict(cond_mask=cond, t_given=t_cond)
        else:
            kw = {}
        out = dit.apply(
            {"params": params["dit"]},
            x_t,
            t,
            seg,
            batch["positions"],
            text,
            batch["caption_mask"],
            **kw,
            rngs={"dropout": dropout_rng} if adapter_dropout and dropout_rng is not None else None,
        )
        diff = out - objective.target(x0, noise, t_tok)
        return jnp.sum(diff**2 * objective.loss_weight(t_tok), axis=-1) * valid

    return errors


def make_train_step(config, dit, text_encoder, tx, frozen_text_params=None):
    """Pure `train_step(state, batch, rng) -> (state, metrics)` for the DiT.

    With a trainable text encoder its params are state.params['text']; a frozen
    one's are passed in and closed over (they are not trained or checkpointed), unless the
    batch brings cached 'caption_emb' (then the encoder does not run in the step at all).
    """
    accum = config.dit.train.grad_accum_steps
    skip_nonfinite = bool(config.dit.train.skip_nonfinite)
    draw = make_draw(config)
    errors = make_token_errors(config, dit, text_encoder, frozen_text_params)

    def loss_fn(params, inputs, dropout_rng):
        """Sum of the squared errors of (a microbatch of) the batch / the whole batch's count
        of loss elements (`denoms`, the same in every row)."""
        batch, t, noise, t_cond, denoms = inputs
        mask = builders.trainable_mask(config, params)
        if mask is not None:
            # No gradient is built for frozen leaves (the base of a LoRA run, `freeze`):
            # XLA drops their weight-gradient matmuls and buffers.
            params = jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)
        return jnp.sum(errors(params, batch, t, noise, t_cond, dropout_rng)) / denoms[0], {}

    def train_step(state: ts.TrainState, batch, rng):
        t, noise, t_cond = draw(batch, rng)
        seg = batch["segment_ids"]
        denom = jnp.sum(loss_mask(batch)) * batch["tokens"].shape[-1]
        # denom is the same for every microbatch: broadcast it along the batch axis.
        denoms = jnp.full(seg.shape[:1], denom, jnp.float32)
        dropout_rng = jax.random.fold_in(rng, 3)
        grad_fn = jax.value_and_grad(
            functools.partial(loss_fn, dropout_rng=dropout_rng), has_aux=True
        )
        (loss, aux), grads = grad_accum.sum_gradients(
            grad_fn, state.params, (batch, t, noise, t_cond, denoms), accum
        )
        aux["padding_fraction"] = 1.0 - jnp.mean(seg > 0)
        if "cond_mask" in batch:
            cond = batch["cond_mask"] & (seg > 0)
            aux["cond_fraction"] = jnp.sum(cond) / jnp.maximum(jnp.sum(seg > 0), 1)
        new_state = ts.apply_gradients(state, grads, tx, config.dit.train.ema_decay)
        norms = ts.norms(grads, state.params)
        ok = finite.step_is_finite(loss, norms["grad_norm"])
        if skip_nonfinite:
            new_state = finite.keep_if_finite(state, new_state, ok)
        return new_state, {"loss": loss, **aux, **norms, "finite": ok}

    return train_step


def boxed_init(config, dit, text_encoder, tx, extras, batch: int = 1):
    """`init(key) -> TrainState` whose DiT leaves are boxed with their logical axis names
    (for jax.eval_shape and the shardings; `init_state` unboxes)."""
    init_params = builders.dit_init_fn(config, dit, text_encoder, batch)

    def init(key):
        params = init_params(key)
        trainable = builders.trainable_mask(config, nn.unbox(params))
        return ts.create(params, tx, extras, trainable)

    return init


def init_state(config, dit, text_encoder, tx, mesh, extras):
    """The initial TrainState, each array created already placed as config.mesh.rules say."""
    init = boxed_init(config, dit, text_encoder, tx, extras, mesh_lib.batch_size_divisor(mesh))
    rules = partitioning.rules_from_config(config.mesh.rules)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    state, _ = partitioning.init_sharded(init, mesh, rules, key)
    return state


def _extras(latent_mean, latent_std):
    return {"latent_mean": jnp.asarray(latent_mean), "latent_std": jnp.asarray(latent_std)}


def train(config: ml_collections.ConfigDict, workdir: str, mesh, writer):
    """Trains (or resumes, or skips if finished) the DiT; returns (state, history)."""
    if config.dit.finetune.init_from and "vae" not in config.stages:
        finetune.seed_vae(config, workdir, mesh)
    vae_model, vae_state = vae_trainer.load_state(config, workdir, mesh)
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    t = config.dit.train
    tx = finetune.optimizer(
        config,
        ts.make_optimizer(t),
        nn.unbox(builders.abstract_dit_params(config, dit, text_encoder)),
    )
    grain_source = checkpoint.stage_has_data(config, "dit")
    ckpt = checkpoint.for_stage(config, workdir, "dit")
    null_ids, null_mask = (np.asarray(a)[0] for a in text_encoder.tokenize([""]))
    vae_params = vae_state.ema_params
    if grain_source:
        # Own videos are normalised with their own statistics (dit_input), the built-in set
        # with the VAE's stored ones; either way the DiT's checkpoint keeps the copy it trains
        # with (sampling uses that one), so a resumed run normalises as it started.
        batch_fn, mean, std = dit_input.build(
            config, vae_model, vae_params, text_encoder, mesh, os.path.join(workdir, "dit")
        )
        extras = _extras(mean, std)
    else:
        extras = vae_state.extras
    state = init_state(config, dit, text_encoder, tx, mesh, extras)
    if ckpt.all_steps():
        target = state
        if grain_source:
            state, data = loop.resume(
                "dit", ckpt, lambda s: (ckpt.restore(target, s), ckpt.restore_data(s))
            )
            batch_fn.set_state(data)
        else:
            state = loop.resume("dit", ckpt, lambda s: ckpt.restore(target, s))
    elif config.dit.finetune.init_from:
        state = finetune.initialize(config, state)
    elif config.init.from_pretrained:
        state = finetune.from_pretrained(config, state)
    if not grain_source:
        stats = jax.device_get(state.extras)
        cache = batches.build_latent_cache(
            config, vae_model, vae_params, text_encoder, stats["latent_mean"], stats["latent_std"]
        )
        plan = batches.length_plan(config, cache)
        batch_fn = functools.partial(
            batches.dit_batch, config, cache, null_ids, null_mask, plan=plan
        )
    step_fn = loop.jit_train_steps(
        make_train_step(config, dit, text_encoder, tx, text_encoder.params),
        mesh,
        loop.shardings_of(state),
        partitioning.rules_from_config(config.mesh.rules),
        t.steps_per_call,
    )
    validate = validator(
        config, workdir, mesh, writer, (vae_model, vae_params), dit, text_encoder, state, batch_fn
    )
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    state, history = loop.run(
        "dit", state, step_fn, batch_fn, t, ckpt, writer, mesh, key, validate=validate
    )
    ckpt.close()
    return state, history


def validator(config, workdir, mesh, writer, vae, dit, text_encoder, state, batch_fn):
    """The run's `validation.Validator` (None when dit.train.val_every and sample_every are
    0): held-out videos of the grain source (`batch_fn.held_out_cache`) or of the built-in
    set, normalised with the state's latent statistics."""
    t = config.dit.train
    if not (t.val_every or t.sample_every):
        return None
    held_out = []
    if t.val_every:
        null_ids, null_mask = (np.asarray(a)[0] for a in text_encoder.tokenize([""]))
        if checkpoint.stage_has_data(config, "dit"):
            cache = batch_fn.held_out_cache(t.val_examples)
        else:
            stats = jax.device_get(state.extras)
            cache = batches.held_out_shapes(
                config,
                *vae,
                text_encoder,
                stats["latent_mean"],
                stats["latent_std"],
                t.val_examples,
            )
        held_out = validation.pack_held_out(config, cache, null_ids, null_mask)
    errors = validation.make_segment_errors(
        make_token_errors(config, dit, text_encoder, text_encoder.params), make_draw(config)
    )
    models = None
    if t.sample_every:
        name = os.path.basename(os.path.abspath(workdir))
        models = validation.sample_model(config, *vae, dit, text_encoder, name)
    out_dir = os.path.join(workdir, "dit", "val_samples")
    return validation.Validator(config, held_out, errors, mesh, writer, out_dir, models)

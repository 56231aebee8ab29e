"""Train state (a pytree), the optimizer and the EMA update shared by every stage."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sora_jax.common import config_checks as cc
from sora_jax.models import geometry

STAGES = ("vae", "dit")  # config.stages: what `python -m sora_jax.train` trains, in order


class TrainState(flax.struct.PyTreeNode):
    """Everything a stage needs to resume: the step, params, optimizer state, EMA.

    `extras` holds arrays that are not trained but belong with the checkpoint
    (e.g. the latent normalisation statistics the DiT was trained with).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    extras: Any = None


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with linear warm-up, cosine decay to 10%, and global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=max(t.steps, t.warmup_steps + 1),
        end_value=0.1 * t.learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=t.weight_decay),
    )


def create(params, tx: optax.GradientTransformation, extras=None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=params,
        extras=extras,
    )


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA warm-up: early steps average over fewer steps so short runs are not stale."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def apply_gradients(
    state: TrainState, grads, tx: optax.GradientTransformation, ema_decay: float
) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def norms(grads, params) -> dict[str, jax.Array]:
    return {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}


def validate_stages(config):
    """Checks config.stages."""
    stages = tuple(config.stages)
    cc.check(
        len(stages) > 0 and all(s in STAGES for s in stages),
        "stages",
        stages,
        f"must be a non-empty subset of {STAGES}",
    )


def validate_config(config):
    """Checks each stage's config.<stage>.train.* (optimizer, EMA, loop, batches); the VAE
    and the DiT sections must be valid already."""
    for stage in STAGES:
        t = config[stage].train
        cc.positive(
            config,
            f"{stage}.train.steps",
            f"{stage}.train.learning_rate",
            f"{stage}.train.log_every",
            f"{stage}.train.checkpoint_every",
            f"{stage}.train.keep_checkpoints",
        )
        cc.check(t.warmup_steps >= 0, f"{stage}.train.warmup_steps", t.warmup_steps, "must be >= 0")
        cc.check(
            0.0 <= t.ema_decay < 1.0, f"{stage}.train.ema_decay", t.ema_decay, "must be in [0, 1)"
        )
        cc.check(t.grad_clip > 0, f"{stage}.train.grad_clip", t.grad_clip, "must be > 0")
    v = config.vae.train
    cc.check(
        v.image_batch_size >= 0, "vae.train.image_batch_size", v.image_batch_size, "must be >= 0"
    )
    cc.positive(config, "vae.train.batch_size")
    cc.check(
        len(v.buckets) > 0,
        "vae.train.buckets",
        v.buckets,
        "must list at least one (frames, height, width)",
    )
    for bucket in v.buckets:
        cc.check(
            len(bucket) == 3, "vae.train.buckets", bucket, "each bucket is (frames, height, width)"
        )
        geometry.check_size(config, "vae.train.buckets", *bucket)
    cc.positive(config, "dit.train.grad_accum_steps")

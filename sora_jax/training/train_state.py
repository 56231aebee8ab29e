"""Train state (a pytree), the optimizer and the EMA update shared by every stage."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sora_jax.common import trees


class TrainState(flax.struct.PyTreeNode):
    """Everything a stage needs to resume: the step, params, optimizer state, EMA.

    `ema_params` averages only the trained leaves (a `trees.subset` of `params`: a LoRA
    fine-tune's adapters, not its frozen base); `ema_model` is the whole EMA model.
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


def create(params, tx: optax.GradientTransformation, extras=None, trainable=None) -> TrainState:
    """Step 0 of `params`; `trainable` (a bool tree of their paths, None = all) picks the
    leaves the EMA keeps."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=trees.subset(params, trainable),
        extras=extras,
    )


def ema_model(state: TrainState):
    """The EMA weights of the whole model: the frozen leaves are the params themselves."""
    return trees.overlay(state.params, state.ema_params)


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
    ema = jax.tree.map(
        lambda e, p: d * e + (1.0 - d) * p, state.ema_params, trees.like(params, state.ema_params)
    )
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def norms(grads, params) -> dict[str, jax.Array]:
    return {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}

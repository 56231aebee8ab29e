"""Classifier-free guidance on the model's native output (velocity, eps, x0 or v)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def guide(
    cond: jax.Array,
    uncond: jax.Array,
    t: jax.Array,
    scale: float,
    interval: tuple[float, float] = (0.0, 1.0),
    rescale: float = 0.0,
) -> jax.Array:
    """uncond + scale (cond - uncond) for t in [interval], else cond; `cond`/`uncond` f32[b ...].

    The interval (Kynkäänniemi et al. 2024) skips guidance where it mostly hurts (the
    highest noise levels cost diversity; the lowest add little). `rescale` = phi of Lin et
    al. 2023 sec. 3.4: the guided output is scaled to the conditional output's per-example
    std, mixed in with weight phi, which undoes the over-saturation of large scales.
    """
    guided = uncond + scale * (cond - uncond)
    if rescale > 0:
        axes = tuple(range(1, cond.ndim))
        std_cond = jnp.std(cond, axis=axes, keepdims=True)
        std_guided = jnp.std(guided, axis=axes, keepdims=True)
        rescaled = guided * (std_cond / jnp.maximum(std_guided, 1e-12))
        guided = rescale * rescaled + (1.0 - rescale) * guided
    lo, hi = interval
    return jnp.where((t >= lo) & (t <= hi), guided, cond)

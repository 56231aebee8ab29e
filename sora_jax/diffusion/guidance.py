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
    segment_ids: jax.Array | None = None,
    num_segments: int = 0,
) -> jax.Array:
    """uncond + scale (cond - uncond) for t in [interval], else cond; `cond`/`uncond` f32[b ...].
    `t` is a scalar or broadcasts against them (e.g. f32[b l 1], a time per token).

    The interval (Kynkäänniemi et al. 2024) skips guidance where it mostly hurts (the
    highest noise levels cost diversity; the lowest add little). `rescale` = phi of Lin et
    al. 2023 sec. 3.4: the guided output is scaled to the conditional output's per-example
    std, mixed in with weight phi, which undoes the over-saturation of large scales. For
    packed rows f32[b l d] with `segment_ids` i32[b l] (1..num_segments, 0 = padding) an
    example is a segment: the std is each segment's own.
    """
    guided = uncond + scale * (cond - uncond)
    if rescale > 0:
        if segment_ids is None:
            axes = tuple(range(1, cond.ndim))
            std_cond = jnp.std(cond, axis=axes, keepdims=True)
            std_guided = jnp.std(guided, axis=axes, keepdims=True)
        else:
            std_cond = _segment_std(cond, segment_ids, num_segments)
            std_guided = _segment_std(guided, segment_ids, num_segments)
        rescaled = guided * (std_cond / jnp.maximum(std_guided, 1e-12))
        guided = rescale * rescaled + (1.0 - rescale) * guided
    lo, hi = interval
    return jnp.where((t >= lo) & (t <= hi), guided, cond)


def _segment_std(x: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """f32[b l 1]: the std of x f32[b l d] over each token's segment (all its tokens and
    channels), broadcast back to the segment's tokens."""
    onehot = (segment_ids[..., None] == jnp.arange(1, num_segments + 1)).astype(x.dtype)
    count = jnp.maximum(jnp.sum(onehot, axis=1) * x.shape[-1], 1.0)  # [b s]
    mean = jnp.einsum("bls,bld->bs", onehot, x) / count
    centred = x - jnp.einsum("bls,bs->bl", onehot, mean)[..., None]
    var = jnp.einsum("bls,bld->bs", onehot, centred**2) / count
    return jnp.einsum("bls,bs->bl", onehot, jnp.sqrt(var))[..., None]

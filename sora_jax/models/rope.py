"""3D rotary position embeddings (RoPE) over (t, h, w) patch-grid positions.

The head dim is split into three even chunks, one per axis; each chunk is rotated by
angles ``pos_axis * theta**(-2i/d_axis)`` (rotate-half convention inside the chunk).
Because rotations compose, ``<rope(q, p), rope(k, p')>`` depends only on ``p - p'``:
attention sees relative positions, so any duration / resolution works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["rope_3d", "axis_dims"]

DEFAULT_FRACTIONS = (0.25, 0.375, 0.375)


def axis_dims(
    head_dim: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> tuple[int, int, int]:
    """Even per-axis dims (dt, dh, dw) summing to ``head_dim``; w takes the remainder.

    ``fractions`` are relative shares (normalised), e.g. 64 -> (16, 24, 24).
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"rope_3d: head dim {head_dim} must be even and >= 6")
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ValueError(f"rope_3d: fractions must be three positive numbers, got {fractions}")
    total = float(sum(fractions))
    dt = max(2, 2 * round(head_dim * fractions[0] / total / 2))
    dh = max(2, 2 * round(head_dim * fractions[1] / total / 2))
    dw = head_dim - dt - dh
    if dw < 2:
        raise ValueError(
            f"rope_3d: fractions {fractions} leave no room for w in head dim {head_dim}"
        )
    return dt, dh, dw


def _rotate(x: jax.Array, pos: jax.Array, theta: float) -> jax.Array:
    """Rotates ``f32[b l heads d]`` by angles of ``pos f32[b l]`` (rotate-half layout)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    ang = pos[..., None, None] * freqs  # [b l 1 half]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def rope_3d(
    x: jax.Array,
    positions: jax.Array,
    theta: float = 10000.0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> jax.Array:
    """Applies 3D RoPE: ``x f[b l heads d]``, ``positions i32[b l 3]`` -> ``f[b l heads d]``.

    Computed in float32, returned in ``x.dtype``.
    """
    if x.ndim != 4 or positions.shape != (*x.shape[:2], 3):
        raise ValueError(
            f"rope_3d: x {x.shape} must be [b l heads d] and positions {positions.shape} [b l 3]"
        )
    dims = axis_dims(x.shape[-1], fractions)
    xf = x.astype(jnp.float32)
    pos = positions.astype(jnp.float32)
    chunks, start = [], 0
    for axis, d in enumerate(dims):
        chunks.append(_rotate(xf[..., start : start + d], pos[..., axis], theta))
        start += d
    return jnp.concatenate(chunks, axis=-1).astype(x.dtype)

"""Temporal-difference loss on packed spacetime tokens.

The plain diffusion loss weighs every error alike, and in short clips of small moving objects
almost all of it is static content (background, colour): a model that gets the motion wrong
loses little. This term adds the squared change of the error between a token and the token one
latent frame later at the same place in the same video, so errors that differ between frames
(wrong or missing motion) count more than errors shared by all frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["next_frame_index", "motion_loss"]


def next_frame_index(segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    """``i32[b l]``: index of the token at (t + 1, h, w) of the same segment, or -1.

    ``segment_ids i32[b l]`` (0 = padding), ``positions i32[b l 3]`` (t, h, w). Segments are
    laid out frame after frame (row-major within a frame), so the candidate is ``h*w`` tokens
    ahead, where ``h*w`` is the number of the segment's tokens in frame 0; the candidate is
    checked by its segment and position, so dropped or reordered tokens give -1, never a wrong
    neighbour.
    """
    b, l = segment_ids.shape
    rows = jnp.arange(b)[:, None]
    first = ((positions[..., 0] == 0) & (segment_ids > 0)).astype(jnp.int32)
    per_frame = jnp.zeros((b, l + 1), jnp.int32).at[rows, segment_ids].add(first)
    cand = jnp.arange(l)[None, :] + jnp.take_along_axis(per_frame, segment_ids, axis=1)
    safe = jnp.minimum(cand, l - 1)
    nxt_pos = jnp.take_along_axis(positions, safe[..., None], axis=1)
    ok = (
        (cand < l)
        & (segment_ids > 0)
        & (jnp.take_along_axis(segment_ids, safe, axis=1) == segment_ids)
        & (nxt_pos[..., 0] == positions[..., 0] + 1)
        & jnp.all(nxt_pos[..., 1:] == positions[..., 1:], axis=-1)
    )
    return jnp.where(ok, cand, -1)


def motion_loss(err: jax.Array, valid: jax.Array, next_index: jax.Array) -> jax.Array:
    """Mean squared frame-to-frame change of ``err f32[b l d]`` over valid token pairs.

    ``valid bool[b l]`` marks tokens that carry a loss (not padding, dropped or given frames);
    a pair counts when both of its tokens are valid. Returns a scalar (0 with no pairs).
    """
    safe = jnp.maximum(next_index, 0)
    nxt = jnp.take_along_axis(err, safe[..., None], axis=1)
    pair = (next_index >= 0) & valid & jnp.take_along_axis(valid, safe, axis=1)
    sq = jnp.sum((nxt - err) ** 2, axis=-1) * pair
    return jnp.sum(sq) / (jnp.maximum(jnp.sum(pair), 1) * err.shape[-1])

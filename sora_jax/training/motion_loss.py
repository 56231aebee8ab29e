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

__all__ = ["next_frame_index", "pair_mask", "squared_change", "motion_loss"]


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


def pair_mask(valid: jax.Array, next_index: jax.Array) -> jax.Array:
    """``bool[b l]``: tokens with a next-frame neighbour, both carrying a loss (``valid``:
    not padding, dropped or given frames)."""
    nxt_valid = jnp.take_along_axis(valid, jnp.maximum(next_index, 0), axis=1)
    return (next_index >= 0) & valid & nxt_valid


def squared_change(err: jax.Array, next_index: jax.Array) -> jax.Array:
    """``f32[b l]``: squared change of ``err f32[b l d]`` from each token to its next-frame
    neighbour, summed over d (meaningless where there is none: mask with ``pair_mask``)."""
    nxt = jnp.take_along_axis(err, jnp.maximum(next_index, 0)[..., None], axis=1)
    return jnp.sum((nxt - err) ** 2, axis=-1)


def motion_loss(err: jax.Array, valid: jax.Array, next_index: jax.Array) -> jax.Array:
    """Mean squared frame-to-frame change of ``err f32[b l d]`` over the pairs of
    ``pair_mask`` (a scalar; 0 with no pairs)."""
    pairs = pair_mask(valid, next_index)
    total = jnp.sum(squared_change(err, next_index) * pairs)
    return total / (jnp.maximum(jnp.sum(pairs), 1) * err.shape[-1])

"""Who attends to whom, as per-token ids: never an ``[L, L]`` mask.

A query attends to a key when both carry the same non-zero id (0 = padding: attends to and is
attended by nothing). Packed rows hold each video's tokens contiguously, so ids are runs along
the row; kernels use that to skip (query block, key block) pairs whose id ranges do not
overlap (``block_overlap``).

The factorised layouts ('hw': within a frame, 't': within an (h, w) column) become the same
thing by grouping: the row is sorted so each group is contiguous and gets its own id
(``layout_segments``); attention runs on the sorted tokens and the output is put back.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Segments", "layout_segments", "has_key", "block_overlap", "pad_length", "LAYOUTS"]

# Layout -> (position axes a group shares, position axes that order tokens within it).
LAYOUTS = {"thw": None, "hw": ((0,), (1, 2)), "t": ((1, 2), (0,))}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Segments:
    """Attention ids of one call.

    ``q i32[b lq]``: the queries' ids; ``kv i32[b lk] | None``: the keys' (None: the same as
    ``q``, i.e. self-attention over the same tokens, which some kernels require);
    ``order i32[b lq] | None``: self-attention runs on ``tokens[order]`` (whose ids are ``q``,
    already in that order); ``inverse`` (its inverse permutation, made once with the order)
    puts the result back.
    """

    q: jax.Array
    kv: jax.Array | None = None
    order: jax.Array | None = None
    inverse: jax.Array | None = None

    @property
    def keys(self) -> jax.Array:
        return self.q if self.kv is None else self.kv


def layout_segments(segment_ids: jax.Array, positions: jax.Array, layout: str) -> Segments:
    """Self-attention ids of a layout: ``segment_ids i32[b l]``, ``positions i32[b l 3]``.

    'thw' is the segments themselves. 'hw' / 't' sort each row by (segment, group, rest) with
    padding last, and number the groups 1, 2, ... in that order, so the ids are non-decreasing
    runs (padding 0 at the end) and blocks of different groups are skipped.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"attention layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if LAYOUTS[layout] is None:
        return Segments(segment_ids)
    shared, within = LAYOUTS[layout]
    big = jnp.iinfo(jnp.int32).max
    seg = jnp.where(segment_ids > 0, segment_ids, big)
    # lexsort: the last key is the primary one.
    keys = [positions[..., a] for a in reversed(within)]
    keys += [positions[..., a] for a in reversed(shared)] + [seg]
    order = jax.vmap(lambda *k: jnp.lexsort(k))(*keys).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, order, axis=1)
    group = jnp.stack([take(seg)] + [take(positions[..., a]) for a in shared], axis=-1)
    changed = jnp.any(group[:, 1:] != group[:, :-1], axis=-1)
    ids = jnp.cumsum(jnp.pad(changed, ((0, 0), (1, 0)), constant_values=True), axis=1)
    ids = jnp.where(take(segment_ids) > 0, ids, 0).astype(jnp.int32)
    return Segments(ids, order=order, inverse=jnp.argsort(order, axis=1).astype(jnp.int32))


def pad_length(x: jax.Array, multiple: int) -> jax.Array:
    """Pads axis 1 (the tokens) with zeros to a multiple of ``multiple``: padded tokens get
    id 0, so they see nothing and nothing sees them."""
    return jnp.pad(x, [(0, 0), (0, -x.shape[1] % multiple)] + [(0, 0)] * (x.ndim - 2))


def has_key(segments: Segments) -> jax.Array:
    """``bool[b lq]``: the query has at least one key with its (non-zero) id."""
    q, kv = segments.q, segments.keys
    # Ids are < number of tokens (they number segments or groups of one row's tokens).
    size = max(q.shape[1], kv.shape[1]) + 1
    count = jax.vmap(lambda k: jnp.zeros(size, jnp.int32).at[k].add(1))(kv)
    return (q > 0) & (jnp.take_along_axis(count, jnp.clip(q, 0, size - 1), axis=1) > 0)


def _block_ranges(ids: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """``i32[b l] -> (lo, hi) i32[b l/block]``: smallest / largest non-zero id per block
    (an all-padding block gets lo > hi, so it overlaps nothing)."""
    blocks = ids.reshape(ids.shape[0], -1, block)
    big = jnp.iinfo(jnp.int32).max
    lo = jnp.min(jnp.where(blocks > 0, blocks, big), axis=-1)
    hi = jnp.max(blocks, axis=-1)
    return lo, hi


def block_overlap(q_ids: jax.Array, kv_ids: jax.Array, block_q: int, block_kv: int) -> jax.Array:
    """``bool[b lq/block_q lk/block_kv]``: may the query block see anything in the key block.

    Lengths must be multiples of the blocks. Exact for runs of ids (what packing and
    ``layout_segments`` make): a pair is False only if their id ranges are disjoint, and then
    no query of the one has a key in the other.
    """
    q_lo, q_hi = _block_ranges(q_ids, block_q)
    k_lo, k_hi = _block_ranges(kv_ids, block_kv)
    return (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])

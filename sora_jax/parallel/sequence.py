"""Sequence-parallel attention: token rows split along their length over the 'sequence' axis.

Choice: the all-to-all head/sequence swap (DeepSpeed-Ulysses), not ring attention. Each device
holds ``l / sp`` tokens of every head; one all-to-all turns that into all ``l`` tokens of
``h / sp`` heads, attention runs unchanged (segment masks and all) per head group, and a second
all-to-all swaps back. Two collectives of the activations' size per attention, exact (no
online-softmax rescaling), and any attention kernel works inside. Its limit: heads (per tensor
shard) must be divisible by the sequence split; ring attention, which has no such limit but
``sp`` steps of K/V passing, is the alternative when that does not hold.

Cross-attention to text (short keys, not split along the sequence) needs no swap: each device
attends its own queries to all keys.

Every attention kernel runs through here (``sora_jax.models.attention.attention``) inside a
mesh context (``jax.set_mesh``) with logical rules (``nn.logical_axis_rules``): the mesh axes
come from the rules for ``axes.QKV`` (``('batch', 'length', 'heads', 'kv')``), and the kernel
runs per device in ``shard_map`` (Pallas kernels cannot be partitioned by the compiler). The
caller passes the attention each device runs on its share (``local_attention``), so this module
depends on no model code. Without a mesh it is that attention on the whole arrays.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from sora_jax.parallel.axes import QKV


def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def attention(q, k, v, segments, *, local_attention, with_lse: bool = False):
    """``f[b lq h d], f[b lk h d], f[b lk h d]`` and their ids (``kernels.segments.Segments``)
    -> ``f[b lq h d]`` (``(out, lse f32[b lq h])`` if ``local_attention`` returns that:
    ``with_lse``),
    run per device under ``shard_map``: rows over the rules' batch axes, heads over their
    heads axis, and the query length over their ``length`` axis (the swap above).

    ``local_attention(q, k, v, segments)`` (same shapes and layout) is the attention each
    device runs on its share: all tokens of its heads for self-attention, its queries for
    cross-attention. Rows or heads that do not divide over their axes are not split (each
    device then repeats that work).
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return local_attention(q, k, v, segments)
    batch, seq, heads, _ = nn.logical_to_mesh_axes(QKV, rules)
    b, lq, h, d = q.shape
    batch = batch if b % _axis_size(mesh, batch) == 0 else None
    sp = _axis_size(mesh, seq)
    tp = _axis_size(mesh, heads)
    if sp > 1 and (lq % sp or h % tp or (h // tp) % sp):
        raise ValueError(
            f"sequence-parallel attention: length {lq} and heads per tensor shard "
            f"{h}/{tp} must both be divisible by the sequence split {sp}"
        )
    heads = heads if h % tp == 0 else None
    seq = seq if sp > 1 else None
    self_attention = segments.kv is None
    tokens = P(batch, seq, heads, None)
    row = P(batch, None)
    if self_attention:
        reordered = None if segments.order is None else row
        ids = type(segments)(row, None, reordered, reordered)
        fn = functools.partial(_swap_attention, seq, local_attention)
        kv_spec = tokens
    else:
        ids = type(segments)(P(batch, seq), row)
        fn = local_attention
        kv_spec = P(batch, None, heads, None)
    out_specs = (tokens, P(batch, seq, heads)) if with_lse else tokens
    return jax.shard_map(
        fn, in_specs=(tokens, kv_spec, kv_spec, ids), out_specs=out_specs, check_vma=False
    )(q, k, v, segments)


def _swap_attention(axis, local_attention, q, k, v, segments):
    """Local ``f[b l/sp h' d]`` -> all-to-all -> ``f[b l h'/sp d]``, attend, swap back
    (ids are whole rows on every device)."""
    if axis is None:
        return local_attention(q, k, v, segments)
    gather_seq = functools.partial(
        jax.lax.all_to_all, axis_name=axis, split_axis=2, concat_axis=1, tiled=True
    )
    scatter_seq = functools.partial(
        jax.lax.all_to_all, axis_name=axis, split_axis=1, concat_axis=2, tiled=True
    )
    out = local_attention(gather_seq(q), gather_seq(k), gather_seq(v), segments)
    if isinstance(out, tuple):
        return scatter_seq(out[0]), scatter_seq(out[1][..., None])[..., 0]
    return scatter_seq(out)

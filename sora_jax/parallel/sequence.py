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

Used through ``sora_jax.models.attention.attention(..., implementation='sequence_parallel')``
inside a mesh context (``jax.set_mesh``) with logical rules (``nn.logical_axis_rules``): the
mesh axes come from the rules for ``axes.QKV`` (``('batch', 'length', 'heads', 'kv')``). The
caller passes the attention each device runs on its share (``local_attention``), so this module
depends on no model code. Without a mesh, or with a 1-long sequence axis, it is that attention
on the whole arrays.
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


def attention(q, k, v, mask=None, *, local_attention):
    """``f[b lq h d], f[b lk h d], f[b lk h d], bool[b 1 lq lk] | None -> f[b lq h d]``,
    with the query length split over the rules' ``length`` mesh axis.

    ``local_attention(q, k, v, mask)`` (same shapes and layout) is the attention each device
    runs on its share: all tokens of its heads for self-attention, its queries for
    cross-attention.
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return local_attention(q, k, v, mask)
    batch, seq, heads, _ = nn.logical_to_mesh_axes(QKV, rules)
    sp = _axis_size(mesh, seq)
    if sp == 1:
        return local_attention(q, k, v, mask)
    b, lq, h, d = q.shape
    tp = _axis_size(mesh, heads)
    if lq % sp or (h // tp) % sp or h % tp:
        raise ValueError(
            f"sequence-parallel attention: length {lq} and heads per tensor shard "
            f"{h}/{tp} must both be divisible by the sequence split {sp}"
        )
    if _axis_size(mesh, batch) > 1 and b % _axis_size(mesh, batch):
        raise ValueError(f"sequence-parallel attention: batch {b} not divisible over {batch}")
    self_attention = k.shape[1] == lq
    tokens = P(batch, seq, heads, None)
    kv_spec = tokens if self_attention else P(batch, None, heads, None)
    mask_spec = P(batch, None, seq if not self_attention else None, None)
    if self_attention:
        fn = functools.partial(_swap_attention, seq, local_attention)
    else:
        fn = functools.partial(_local_queries, local_attention)
    args, specs = (q, k, v), (tokens, kv_spec, kv_spec)
    if mask is not None:
        args, specs = args + (mask,), specs + (mask_spec,)
    return jax.shard_map(fn, in_specs=specs, out_specs=tokens, check_vma=False)(*args)


def _swap_attention(axis, local_attention, q, k, v, mask=None):
    """Local ``f[b l/sp h' d]`` -> all-to-all -> ``f[b l h'/sp d]``, attend, swap back."""
    gather_seq = functools.partial(
        jax.lax.all_to_all, axis_name=axis, split_axis=2, concat_axis=1, tiled=True
    )
    out = local_attention(gather_seq(q), gather_seq(k), gather_seq(v), mask)
    return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def _local_queries(local_attention, q, k, v, mask=None):
    """Each device's queries against all (unsplit) keys: no communication."""
    return local_attention(q, k, v, mask)

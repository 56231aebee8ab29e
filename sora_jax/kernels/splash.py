"""TPU: Pallas splash attention with segment ids (``jax.experimental.pallas.ops.tpu``).

Runs per device on its share of rows and heads (the caller wraps it in ``shard_map``: Mosaic
kernels cannot be partitioned automatically). Lengths are padded to the blocks with id 0;
splash lets id-0 queries attend to id-0 keys and gives queries with no key an average over
masked ones, so the caller zeroes those rows (``segments.has_key``). The mask is full: which
keys a query sees comes from the ids alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from sora_jax.kernels.segments import pad_length

__all__ = ["attention"]

_LANES = 128  # splash blocks are multiples of the TPU lane width


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def attention(
    q, k, v, q_ids, kv_ids, *, block_q: int = 512, block_kv: int = 512, interpret: bool = False
):
    """``f[b lq h d], f[b lk h d], f[b lk h d], i32[b lq], i32[b lk] -> f[b lq h d]``."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq = _round_up(min(block_q, lq), _LANES)
    bk = _round_up(min(block_kv, lk), _LANES)
    q, q_ids = pad_length(q * jnp.asarray(d**-0.5, q.dtype), bq), pad_length(q_ids, bq)
    k, v, kv_ids = pad_length(k, bk), pad_length(v, bk), pad_length(kv_ids, bk)
    full = masks.FullMask((q.shape[1], k.shape[1]))
    blocks = splash.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    kernel = splash.make_splash_mha(
        masks.MultiHeadMask([full] * h),
        head_shards=1,
        q_seq_shards=1,
        block_sizes=blocks,
        interpret=interpret,
    )
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # splash takes [h l d] per row
    per_row = lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=splash.SegmentIds(q=qi, kv=ki))
    out = jax.vmap(per_row)(heads_first(q), heads_first(k), heads_first(v), q_ids, kv_ids)
    return heads_first(out)[:, :lq]

"""Flash-style attention in plain JAX: any XLA backend, memory O(L x block), skips empty blocks.

Queries are cut into blocks of ``block_q`` and keys into blocks of ``block_kv``; each query
block runs an online softmax (running max, running sum, rescaled accumulator) over the key
blocks its ids can see, so no ``[L, L]`` scores or mask ever exist: one ``f32[h bq bkv]``
tile at a time. The key-block loop of a query block runs only from its first to its last
overlapping key block (``segments.block_overlap``), and a block inside that range whose ids
do not overlap is branched over (a real ``lax.cond``: the loops are sequential, never
vectorised, so the skipped work is not done). A row of packed segments then costs
sum(s_i^2) over its segments, not L^2.

The backward pass is a custom VJP that keeps only q, k, v, the output and the log-sum-exp
(O(L)), and recomputes each tile's probabilities: the standard flash-attention backward. It
also takes a cotangent for the log-sum-exp, so two partial attentions can be merged exactly
(``merge``) and trained through.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sora_jax.kernels.segments import block_overlap, pad_length

__all__ = ["attention", "merge"]


def attention(q, k, v, q_ids, kv_ids, *, block_q: int = 512, block_kv: int = 512):
    """``f[b lq h d], f[b lk h d], f[b lk h d], i32[b lq], i32[b lk]`` ->
    ``(out f[b lq h d], lse f32[b lq h])``.

    ``out`` is softmax(q k^T / sqrt(d)) v over the keys with the query's non-zero id, and
    exactly 0 for queries with none (lse = -inf there).
    """
    lq, lk = q.shape[1], k.shape[1]
    bq, bk = min(block_q, lq), min(block_kv, lk)
    out, lse = _attention(
        pad_length(q, bq),
        pad_length(k, bk),
        pad_length(v, bk),
        pad_length(q_ids, bq),
        pad_length(kv_ids, bk),
        bq,
        bk,
    )
    return out[:, :lq], lse[:, :lq]


def merge(parts):
    """Exact attention over the union of disjoint key sets from their partial results:
    ``[(out f[b l h d], lse f32[b l h]), ...] -> (out, lse)``."""
    lses = jnp.stack([lse for _, lse in parts])
    total = jnp.max(lses, axis=0)
    safe = jnp.where(jnp.isfinite(total), total, 0.0)
    weights = jnp.exp(lses - safe)  # 0 for parts with no keys
    norm = jnp.sum(weights, axis=0)
    w = weights / jnp.where(norm > 0, norm, 1.0)
    out = sum(o.astype(jnp.float32) * wi[..., None] for (o, _), wi in zip(parts, w))
    lse = jnp.where(norm > 0, safe + jnp.log(jnp.where(norm > 0, norm, 1.0)), -jnp.inf)
    return out.astype(parts[0][0].dtype), lse


def _key_range(row):
    """First and one-past-last True of ``bool[n]`` (0, 0 when none)."""
    n = row.shape[0]
    any_ = jnp.any(row)
    first = jnp.argmax(row)
    last = n - jnp.argmax(row[::-1])
    return jnp.where(any_, first, 0), jnp.where(any_, last, 0)


def _tile_logits(qb, kb, qid, kid, scale):
    """``f[bq h d], f[bk h d] -> f32[h bq bk]`` scores, ``bool[bq bk]`` mask."""
    s = jnp.einsum("qhd,khd->hqk", qb, kb, preferred_element_type=jnp.float32) * scale
    mask = (qid[:, None] == kid[None, :]) & (qid[:, None] > 0)
    return s, mask


def _row_forward(q, k, v, qi, ki, overlap, bq, bk):
    """One row: ``q f[lq h d]`` ... ``overlap bool[nq nk]`` -> ``f[lq h d], f32[lq h]``."""
    h, d = q.shape[1], q.shape[2]
    scale = d**-0.5
    slice_ = lambda x, i, n: lax.dynamic_slice_in_dim(x, i * n, n)

    def q_block(i):
        qb, qid, row = slice_(q, i, bq), slice_(qi, i, bq), overlap[i]

        def tile(j, carry):
            m, l, acc = carry
            vb = slice_(v, j, bk)
            s, mask = _tile_logits(qb, slice_(k, j, bk), qid, slice_(ki, j, bk), scale)
            s = jnp.where(mask[None], s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_use = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_use[..., None])
            corr = jnp.exp(m - m_use)
            l = l * corr + jnp.sum(p, axis=-1)
            pv = jnp.einsum(
                "hqk,khd->hqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32
            )
            return m_new, l, acc * corr[..., None] + pv

        step = lambda j, c: lax.cond(row[j], tile, lambda _, c: c, j, c)
        init = (
            jnp.full((h, bq), -jnp.inf, jnp.float32),
            jnp.zeros((h, bq), jnp.float32),
            jnp.zeros((h, bq, d), jnp.float32),
        )
        m, l, acc = lax.fori_loop(*_key_range(row), step, init)
        out = acc / jnp.where(l > 0, l, 1.0)[..., None]
        lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
        return jnp.swapaxes(out, 0, 1).astype(q.dtype), lse.T

    out, lse = lax.map(q_block, jnp.arange(q.shape[0] // bq))
    return out.reshape(q.shape), lse.reshape(q.shape[0], h)


def _row_backward(q, k, v, qi, ki, overlap, out, lse, do, dlse, bq, bk):
    """Gradients of one row (same shapes as the inputs), tiles recomputed from ``lse``."""
    scale = q.shape[2] ** -0.5
    slice_ = lambda x, i, n: lax.dynamic_slice_in_dim(x, i * n, n)
    add_at = lambda x, i, n, y: lax.dynamic_update_slice_in_dim(x, slice_(x, i, n) + y, i * n, 0)
    f32 = lambda x: x.astype(jnp.float32)
    delta = jnp.sum(f32(do) * f32(out), axis=-1)  # [lq h]

    def q_block(i, carry):
        dq, dk, dv = carry
        qb, dob, qid, row = slice_(q, i, bq), slice_(do, i, bq), slice_(qi, i, bq), overlap[i]
        lse_b = slice_(lse, i, bq).T  # [h bq]
        lse_b = jnp.where(jnp.isfinite(lse_b), lse_b, 0.0)
        shift = (slice_(dlse, i, bq) - slice_(delta, i, bq)).T  # [h bq]

        def tile(j, carry):
            dqb, dk, dv = carry
            kb, vb = slice_(k, j, bk), slice_(v, j, bk)
            s, mask = _tile_logits(qb, kb, qid, slice_(ki, j, bk), scale)
            p = jnp.where(mask[None], jnp.exp(s - lse_b[..., None]), 0.0)
            dp = jnp.einsum("qhd,khd->hqk", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp + shift[..., None])).astype(q.dtype)
            dqb = dqb + scale * jnp.einsum(
                "hqk,khd->qhd", ds, kb, preferred_element_type=jnp.float32
            )
            dk_j = scale * jnp.einsum("hqk,qhd->khd", ds, qb, preferred_element_type=jnp.float32)
            dv_j = jnp.einsum(
                "hqk,qhd->khd", p.astype(do.dtype), dob, preferred_element_type=jnp.float32
            )
            return dqb, add_at(dk, j, bk, dk_j), add_at(dv, j, bk, dv_j)

        step = lambda j, c: lax.cond(row[j], tile, lambda _, c: c, j, c)
        dqb, dk, dv = lax.fori_loop(
            *_key_range(row), step, (jnp.zeros(qb.shape, jnp.float32), dk, dv)
        )
        return lax.dynamic_update_slice_in_dim(dq, dqb, i * bq, 0), dk, dv

    zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
    dq, dk, dv = lax.fori_loop(0, q.shape[0] // bq, q_block, (zeros(q), zeros(k), zeros(v)))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, q_ids, kv_ids, bq, bk):
    return _forward(q, k, v, q_ids, kv_ids, bq, bk)[0]


def _forward(q, k, v, q_ids, kv_ids, bq, bk):
    overlap = block_overlap(q_ids, kv_ids, bq, bk)
    row = functools.partial(_row_forward, bq=bq, bk=bk)
    out, lse = lax.map(lambda a: row(*a), (q, k, v, q_ids, kv_ids, overlap))
    return (out, lse), (q, k, v, q_ids, kv_ids, overlap, out, lse)


def _backward(bq, bk, res, cotangents):
    q, k, v, q_ids, kv_ids, overlap, out, lse = res
    do, dlse = cotangents
    row = functools.partial(_row_backward, bq=bq, bk=bk)
    dq, dk, dv = lax.map(lambda a: row(*a), (q, k, v, q_ids, kv_ids, overlap, out, lse, do, dlse))
    return dq, dk, dv, None, None


_attention.defvjp(_forward, _backward)

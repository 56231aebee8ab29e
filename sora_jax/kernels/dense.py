"""Dense masked attention: the reference every kernel is tested against, and the 'xla' /
'cudnn' paths (``jax.nn.dot_product_attention`` with the ``[L, L]`` mask built from the ids:
O(L^2) memory, kept for comparison and short rows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mask", "reference", "dot_product"]


def mask(q_ids: jax.Array, kv_ids: jax.Array) -> jax.Array:
    """``i32[b lq], i32[b lk] -> bool[b 1 lq lk]``: same id, and not padding (0)."""
    q, k = q_ids[:, :, None], kv_ids[:, None, :]
    return ((q == k) & (q != 0))[:, None]


def reference(q, k, v, q_ids, kv_ids):
    """Plain float32 softmax attention: ``(out f[b lq h d], lse f32[b lq h])``, zero output and
    -inf lse for queries with no key."""
    d = q.shape[-1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * d**-0.5
    s = jnp.where(mask(q_ids, kv_ids), s, -jnp.inf)
    lse = jax.nn.logsumexp(s, axis=-1)  # -inf where nothing is allowed
    p = jnp.exp(s - jnp.where(jnp.isfinite(lse), lse, 0.0)[..., None])
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32))
    return out.astype(q.dtype), jnp.swapaxes(lse, 1, 2)


def dot_product(q, k, v, q_ids, kv_ids, implementation: str = "xla"):
    """``jax.nn.dot_product_attention`` with the dense mask (rows with no key are not zeroed
    here: the caller does that)."""
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask(q_ids, kv_ids), implementation=implementation
    )

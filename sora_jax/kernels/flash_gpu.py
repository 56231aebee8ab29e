"""GPU: the Pallas (Triton) flash attention with segment ids
(``jax.experimental.pallas.ops.gpu.attention.mha``).

The default GPU kernel: it ships with jax (no extra dependency, any CUDA GPU jax supports),
takes segment ids directly and has its own fused backward. It serves self-attention only (one
id array for queries and keys); other calls take the blockwise path. Lengths are padded to
the blocks with id 0; the caller zeroes queries with no key (padding attends to padding here).
"""

from __future__ import annotations

from jax.experimental.pallas.ops.gpu import attention as pallas_attention

from sora_jax.kernels.segments import pad_length

__all__ = ["attention"]


def attention(q, k, v, ids, *, block_q: int = 128, block_kv: int = 128, interpret: bool = False):
    """``f[b l h d] x 3, i32[b l] -> f[b l h d]`` (self-attention: ids shared by q and kv)."""
    l, d = q.shape[1], q.shape[3]
    block = min(block_q, block_kv, l)
    pad = lambda x: pad_length(x, block)
    blocks = pallas_attention.BlockSizes(
        block_q=block,
        block_k=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    out = pallas_attention.mha(
        pad(q), pad(k), pad(v), pad(ids), sm_scale=d**-0.5, block_sizes=blocks, interpret=interpret
    )
    return out[:, :l]

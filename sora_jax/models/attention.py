"""The one attention entry point of the DiT: ids in (``kernels.segments.Segments``), never a mask.

Implementations (``dit.model.attention_impl``):
  * ``'auto'``: ``'splash'`` on TPU, ``'flash_gpu'`` on GPU, ``'blockwise'`` elsewhere, by the
    platform of the active mesh's devices (so compiling for a TPU topology on a CPU host picks
    splash), else of jax's default backend.
  * ``'blockwise'``: flash-style online softmax in plain JAX (any backend; skips blocks of
    other segments; ``sora_jax/kernels/blockwise.py``).
  * ``'splash'``: Pallas splash attention (TPU).
  * ``'flash_gpu'``: Pallas flash attention (GPU; self-attention; other calls go blockwise).
  * ``'xla'`` / ``'cudnn'``: ``jax.nn.dot_product_attention`` with the dense ``[L, L]`` mask:
    O(L^2) memory, the comparison point. ``'sequence_parallel'`` (older configs) is ``'xla'``.

On CPU the Pallas kernels run in interpret mode (what the tests compare). Inside a mesh with
logical rules every kernel runs per device under ``shard_map`` (rows over the batch axes,
heads over the tensor axis; with a sequence axis the head/sequence all-to-all of
``parallel/sequence.py`` runs around it). Queries with no key (padding) output exactly 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sora_jax.kernels import blockwise, dense, flash_gpu, splash
from sora_jax.kernels.segments import Segments, has_key
from sora_jax.parallel import sequence

__all__ = ["attention", "resolve", "IMPLEMENTATIONS", "Segments"]

IMPLEMENTATIONS = ("auto", "blockwise", "splash", "flash_gpu", "xla", "cudnn", "sequence_parallel")
_AUTO = {"tpu": "splash", "gpu": "flash_gpu"}
# Kernels that return the log-sum-exp (needed to merge partial attentions exactly).
_WITH_LSE = ("blockwise",)


def _platform() -> str:
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def resolve(implementation: str, platform: str | None = None) -> str:
    """The kernel an ``implementation`` name runs on ``platform`` (default: the current one)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose one of {list(IMPLEMENTATIONS)}"
        )
    if implementation == "auto":
        return _AUTO.get(platform or _platform(), "blockwise")
    return {"sequence_parallel": "xla"}.get(implementation, implementation)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segments: Segments,
    implementation: str = "auto",
    *,
    block_q: int = 512,
    block_kv: int = 512,
    shard: bool = True,
    return_lse: bool = False,
):
    """Scaled dot-product attention ``f[b lq h d], f[b lk h d], f[b lk h d] -> f[b lq h d]``
    (and ``lse f32[b lq h]`` with ``return_lse``, which runs the blockwise kernel).

    ``segments``: the ids (a query sees the keys with its non-zero id); with ``order``, the
    self-attention runs on the tokens in that order. ``shard``: under a mesh, run per device
    in ``shard_map`` (False leaves partitioning to the compiler).
    """
    kernel = "blockwise" if return_lse else resolve(implementation)
    b, lq, h, d = q.shape
    if q.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (h, d):
        raise ValueError(f"attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if segments.q.shape != (b, lq) or segments.keys.shape != (b, k.shape[1]):
        raise ValueError(
            f"attention: ids {segments.q.shape} / {segments.keys.shape} do not match "
            f"q {q.shape} / k {k.shape}"
        )
    if segments.kv is None and k.shape[1] != lq:
        raise ValueError("attention: self-attention ids (kv=None) need as many keys as queries")
    platform = _platform()
    local = functools.partial(
        _local,
        kernel=kernel,
        block_q=block_q,
        block_kv=block_kv,
        interpret=platform == "cpu",
        return_lse=return_lse,
    )
    if not shard:
        return local(q, k, v, segments)
    return sequence.attention(q, k, v, segments, local_attention=local, with_lse=return_lse)


def _take(x, index):
    """``x[b, index[b, i], ...]``: tokens of each row reordered (``index i32[b l]``)."""
    return jnp.take_along_axis(x, index.reshape(*index.shape, *[1] * (x.ndim - 2)), axis=1)


def _local(q, k, v, segments, *, kernel, block_q, block_kv, interpret, return_lse):
    """The kernel on whole arrays (one device's share): the order applied, no-key rows zeroed."""
    order = segments.order
    if order is not None:
        q, k, v = _take(q, order), _take(k, order), _take(v, order)
    q_ids, kv_ids = segments.q, segments.keys
    lse = None
    if kernel == "blockwise":
        out, lse = blockwise.attention(q, k, v, q_ids, kv_ids, block_q=block_q, block_kv=block_kv)
    elif kernel == "splash":
        out = splash.attention(
            q, k, v, q_ids, kv_ids, block_q=block_q, block_kv=block_kv, interpret=interpret
        )
    elif kernel == "flash_gpu" and segments.kv is None:
        out = flash_gpu.attention(
            q, k, v, q_ids, block_q=block_q, block_kv=block_kv, interpret=interpret
        )
    elif kernel == "flash_gpu":
        out = blockwise.attention(q, k, v, q_ids, kv_ids, block_q=block_q, block_kv=block_kv)[0]
    else:
        out = dense.dot_product(q, k, v, q_ids, kv_ids, implementation=kernel)
    out = out * has_key(segments)[..., None, None].astype(out.dtype)
    if order is not None:
        out = _take(out, segments.inverse)
        lse = None if lse is None else _take(lse, segments.inverse)
    return (out, lse) if return_lse else out

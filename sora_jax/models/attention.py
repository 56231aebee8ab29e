"""The one attention entry point of the DiT (so other kernels can be plugged in later).

Masks are boolean ``bool[b 1 lq lk]`` (True = may attend), shared by all heads. Packed
sequences use ``segment_mask``: a token attends only to tokens of its own segment, and
padding (segment 0) attends to / is attended by nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sora_jax.parallel import sequence

__all__ = ["attention", "segment_mask", "register_kernel", "kernel_names", "IMPLEMENTATIONS"]

# Our name -> jax.nn.dot_product_attention's `implementation` ('auto' lets jax choose).
# 'sequence_parallel': the query length split over the mesh's sequence axis
# (sora_jax/parallel/sequence.py; plain 'xla' attention without a mesh).
IMPLEMENTATIONS = {"xla": "xla", "cudnn": "cudnn", "auto": None, "sequence_parallel": "xla"}
# Other kernels (e.g. Pallas splash attention on TPU) plug in here by name:
# fn(q f[b lq h d], k f[b lk h d], v f[b lk h d], mask bool[b 1 lq lk] | None) -> f[b lq h d].
_KERNELS = {}


def kernel_names() -> tuple[str, ...]:
    """Every valid ``implementation``: jax's and the registered kernels."""
    return tuple(IMPLEMENTATIONS) + tuple(_KERNELS)


def register_kernel(name: str, fn) -> None:
    """Makes ``attention(..., implementation=name)`` call ``fn(q, k, v, mask)``."""
    if name in IMPLEMENTATIONS:
        raise ValueError(f"attention kernel name {name!r} is taken by jax's implementations")
    _KERNELS[name] = fn


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
    """``i32[b lq], i32[b lk] -> bool[b 1 lq lk]``: same segment and both non-zero."""
    q, k = q_segment_ids[:, :, None], kv_segment_ids[:, None, :]
    return ((q == k) & (q != 0) & (k != 0))[:, None]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """Scaled dot-product attention ``f[b lq h d], f[b lk h d], f[b lk h d] -> f[b lq h d]``.

    ``mask``: ``bool[b 1 lq lk]`` or None. Query rows with no allowed key (padding)
    output exactly zero instead of an average over masked keys.
    """
    if implementation not in IMPLEMENTATIONS and implementation not in _KERNELS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; "
            f"choose one of {sorted(IMPLEMENTATIONS) + sorted(_KERNELS)}"
        )
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if mask is not None:
        expected = (q.shape[0], 1, q.shape[1], k.shape[1])
        if mask.shape != expected:
            raise ValueError(f"attention: mask shape {mask.shape}, expected {expected}")
    if implementation == "sequence_parallel":
        # Each device's share of the heads / queries goes through plain 'xla' attention.
        local = functools.partial(_attend, implementation="xla")
        return sequence.attention(q, k, v, mask, local_attention=local)
    return _attend(q, k, v, mask, implementation)


def _attend(q, k, v, mask, implementation):
    """The kernel call (shapes already checked), with fully masked rows zeroed."""
    if implementation in _KERNELS:
        out = _KERNELS[implementation](q, k, v, mask)
    else:
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation=IMPLEMENTATIONS[implementation]
        )
    if mask is not None:
        # Fully masked rows get uniform weights over masked keys; zero them.
        any_key = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # [b lq 1 1]
        out = out * any_key.astype(out.dtype)
    return out

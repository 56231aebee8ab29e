"""Low-rank adapters (LoRA, Hu et al. 2021) for the dense layers of a model, and the param-tree
operations around them.

A targeted dense layer computes ``x W + b + (alpha / r) * dropout(x) A B`` with ``A f32[in r]``
(LeCun-normal) and ``B f32[r out]`` (zeros), so a model with fresh adapters is the base model
exactly. The base ``kernel`` / ``bias`` keep their names and shapes, hence a base checkpoint
fills a LoRA model's tree unchanged and the adapters are the leaves named ``lora_a`` /
``lora_b`` beside them (``split`` / ``combine``; scanned stacks carry a leading layer axis on
both). ``merge`` folds ``(alpha / r) A B`` into the kernels and drops the adapters,
for export. Dropout acts only where the caller supplies a 'dropout' rng (training), so sampling
is deterministic.

Targets are a regular expression matched in full against each dense layer's own name (e.g.
``qkv|attn_out`` for self-attention, ``cross_.*`` for cross-attention, ``mlp_.*`` for the MLP).
"""

from __future__ import annotations

import dataclasses
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTER_NAMES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which dense layers get adapters and how big: rank r, alpha (the update is scaled by
    alpha / r), dropout on the adapter's input, targets (regex over layer names)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: str = "qkv|attn_out|cross_q|cross_kv|cross_out|mlp_in|mlp_out"

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"lora targets {self.targets!r} is not a regular expression: {e}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def applies(self, name: str) -> bool:
        return re.fullmatch(self.targets, name) is not None


class LoraDense(nn.Module):
    """``nn.Dense`` with its ``kernel`` / ``bias`` params (same names, shapes, math) plus a
    rank-r adapter: ``f[... in] -> f[... features]``."""

    features: int
    spec: LoraSpec
    kernel_axes: tuple  # logical axes of the kernel (in, out)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in, (ax_in, ax_out) = x.shape[-1], self.kernel_axes

        def param(name, init, axes, shape):
            return self.param(
                name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype
            )

        kernel = param("kernel", self.kernel_init, self.kernel_axes, (n_in, self.features))
        bias = param("bias", nn.initializers.zeros_init(), (ax_out,), (self.features,))
        a = param("lora_a", nn.initializers.lecun_normal(), (ax_in, None), (n_in, self.spec.rank))
        b = param(
            "lora_b", nn.initializers.zeros_init(), (None, ax_out), (self.spec.rank, self.features)
        )
        x, kernel, bias, a, b = nn.dtypes.promote_dtype(x, kernel, bias, a, b, dtype=self.dtype)
        contract = (((x.ndim - 1,), (0,)), ((), ()))
        y = jax.lax.dot_general(x, kernel, contract) + bias
        if self.spec.dropout > 0 and self.has_rng("dropout"):
            x = nn.Dropout(self.spec.dropout, deterministic=False)(x)
        return y + self.spec.scale * ((x @ a) @ b)


def _is_adapter(path) -> bool:
    return path[-1] in ADAPTER_NAMES


def split(params) -> tuple[dict, dict]:
    """``(base, adapters)`` of a LoRA model's params (each with only its own leaves, nested as
    in ``params``); boxed (``nn.Partitioned``) leaves are kept boxed."""
    flat = flax.traverse_util.flatten_dict(_unfreeze(params))
    base = {k: v for k, v in flat.items() if not _is_adapter(k)}
    adapters = {k: v for k, v in flat.items() if _is_adapter(k)}
    unflat = flax.traverse_util.unflatten_dict
    return unflat(base), unflat(adapters)


def combine(base, adapters) -> dict:
    """Inverse of ``split``; a path in both is an error."""
    flat = flax.traverse_util.flatten_dict(_unfreeze(base))
    for k, v in flax.traverse_util.flatten_dict(_unfreeze(adapters)).items():
        if k in flat:
            raise ValueError(f"lora: {'/'.join(k)} is in both the base and the adapters")
        flat[k] = v
    return flax.traverse_util.unflatten_dict(flat)


def trainable_mask(params) -> dict:
    """bool pytree: True on the adapters (what a LoRA fine-tune trains)."""
    flat = flax.traverse_util.flatten_dict(_unfreeze(params))
    return flax.traverse_util.unflatten_dict({k: _is_adapter(k) for k in flat})


def frozen_mask(params, pattern: str) -> dict:
    """bool pytree: True where the '/'-joined path matches ``pattern`` (regex, searched), e.g.
    ``text_proj|text_pool_proj`` to freeze the text projections in a full fine-tune."""
    flat = flax.traverse_util.flatten_dict(_unfreeze(params))
    rx = re.compile(pattern)
    return flax.traverse_util.unflatten_dict(
        {k: bool(pattern) and rx.search("/".join(k)) is not None for k in flat}
    )


def merge(params, spec: LoraSpec) -> dict:
    """The base model's params (no adapters) with ``scale * A B`` added to each adapted kernel;
    the base model then gives the LoRA model's outputs (without dropout)."""
    flat = flax.traverse_util.flatten_dict(_unfreeze(params))
    out = {}
    for k, v in flat.items():
        if _is_adapter(k):
            continue
        if k[-1] == "kernel" and k[:-1] + ("lora_a",) in flat:
            a, b = flat[k[:-1] + ("lora_a",)], flat[k[:-1] + ("lora_b",)]
            delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
            v = (v.astype(jnp.float32) + spec.scale * delta).astype(v.dtype)
        out[k] = v
    return flax.traverse_util.unflatten_dict(out)


def _unfreeze(tree):
    return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree

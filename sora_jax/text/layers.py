"""Building blocks shared by the pretrained text encoders (T5, CLIP): Linen layers whose params
carry logical sharding axes, RMS / layer norms, activations and masked attention.

Logical axis names (``sora_jax.parallel.axes``; mapped to mesh axes by rules in the config, as
in MaxText): VOCAB token embedding rows, EMBED model width, HEADS the flattened heads x head_dim
projection width, MLP the feed-forward width, NORM norm scales; None: never sharded.
Params are boxed (`nn.LogicallyPartitioned`) only at init; `TextEncoder` unboxes them, so callers
see plain arrays, and `nn.get_partition_spec` on the boxed tree gives the logical specs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from sora_jax.parallel.axes import NORM

# Hugging Face `hidden_act` names -> functions ("gelu" is the exact erf form in HF).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def partitioned(init, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


class Dense(nn.Module):
    """`nn.Dense` with logical axes: kernel `axes` = (in, out), bias on the out axis."""

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(
            self.features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=partitioned(nn.initializers.lecun_normal(), self.axes),
            bias_init=partitioned(nn.initializers.zeros, self.axes[1:]),
            name="dense",
        )(x)


def embed(num: int, features: int, axes, dtype, name: str) -> nn.Embed:
    return nn.Embed(
        num,
        features,
        dtype=dtype,
        embedding_init=partitioned(nn.initializers.normal(0.02), axes),
        name=name,
    )


class LayerNorm(nn.Module):
    """Mean/variance LayerNorm, statistics in f32: x f[... d] -> f[... d]."""

    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones, (NORM,)), (d,))
        bias = self.param("bias", partitioned(nn.initializers.zeros, (NORM,)), (d,))
        h = x.astype(jnp.float32)
        mu = h.mean(-1, keepdims=True)
        var = jnp.square(h - mu).mean(-1, keepdims=True)
        h = (h - mu) * jax.lax.rsqrt(var + self.epsilon)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
    """T5's norm: no mean subtraction, no bias; mean square in f32: x f[... d] -> f[... d]."""

    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones, (NORM,)), (d,))
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), -1, keepdims=True) + self.epsilon)
        # Like HF: normalise in f32, round to the weights' dtype, then scale.
        return scale.astype(self.dtype) * h.astype(self.dtype)


def key_mask_bias(mask: jax.Array, causal: bool = False) -> jax.Array:
    """Additive attention bias f32[n 1 l l] from key mask bool[n l] (+ causal). Finite (not -inf),
    so a fully masked row gives uniform weights instead of NaN."""
    l = mask.shape[-1]
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((l, l), bool))[None, None]
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def multi_head_attention(q, k, v, bias, num_heads: int, scale: float):
    """q, k, v f[n l (h e)]; bias f32[n|1 h|1 l l] additive -> f[n l (h e)] (softmax in f32)."""
    q, k, v = (rearrange(a, "n l (h e) -> n h l e", h=num_heads) for a in (q, k, v))
    logits = jnp.einsum("nhqe,nhke->nhqk", q, k).astype(jnp.float32) * scale + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return rearrange(jnp.einsum("nhqk,nhke->nhqe", probs, v), "n h l e -> n l (h e)")


def zero_padding(x: jax.Array, mask: jax.Array) -> jax.Array:
    """f[n l d] with padded positions (mask False) set to 0, as f32."""
    return jnp.where(mask[..., None], x.astype(jnp.float32), 0.0)


def head_scale(head_dim: int) -> float:
    return float(1.0 / np.sqrt(head_dim))

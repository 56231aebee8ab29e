"""T5 encoder (T5 / T5 v1.1 / mT5 / UMT5) in Flax Linen, loading local Hugging Face folders.

Math of HF `T5EncoderModel` / `UMT5EncoderModel`: pre-RMSNorm blocks, unscaled dot-product
attention plus a learned bias per (relative-position bucket, head), feed-forward `wo(act(wi x))`
or gated `wo(act(wi_0 x) * wi_1 x)` (v1.1: 'gated-gelu' = tanh GELU). T5 learns the relative
bias in the first block and shares it; UMT5 learns one per block. Output: the final RMSNorm's
hidden states, zero at padded positions.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sora_jax.parallel.axes import EMBED, HEADS, MLP, VOCAB
from sora_jax.text import hf_checkpoint as ckpt
from sora_jax.text.layers import Dense, RMSNorm, activation, embed
from sora_jax.text.layers import key_mask_bias, multi_head_attention, partitioned, zero_padding

MODEL_TYPES = ("t5", "mt5", "umt5")


def relative_position_buckets(
    length: int, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> np.ndarray:
    """i32[l l] bucket of (key - query) offsets, as HF `_relative_position_bucket` (float32 logs,
    truncation): half the buckets per direction, exact up to num_buckets // 4 (bidirectional),
    log-spaced up to max_distance, beyond that the last bucket."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        ratio = np.log(rel.astype(np.float32) / np.float32(max_exact))
    ratio = ratio / np.float32(math.log(max_distance / max_exact))
    large = max_exact + np.where(is_small, 0, ratio * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


class RelativeBias(nn.Module):
    """Learned bias f32[1 h l l] per relative-position bucket and head."""

    num_heads: int
    num_buckets: int
    max_distance: int

    @nn.compact
    def __call__(self, length: int):
        table = self.param(
            "embedding",
            partitioned(nn.initializers.normal(0.02), (None, HEADS)),
            (self.num_buckets, self.num_heads),
        )
        idx = relative_position_buckets(length, self.num_buckets, self.max_distance)
        return jnp.transpose(table.astype(jnp.float32)[idx], (2, 0, 1))[None]


class T5Block(nn.Module):
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    epsilon: float
    act: str
    gated: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        """x f[n l d], bias f32[n h l l] (relative position + key mask) -> f[n l d]."""
        inner = self.num_heads * self.d_kv
        h = RMSNorm(self.epsilon, self.dtype, name="attn_norm")(x)
        q, k, v = (
            Dense(inner, (EMBED, HEADS), use_bias=False, dtype=self.dtype, name=n)(h)
            for n in ("q", "k", "v")
        )
        a = multi_head_attention(q, k, v, bias, self.num_heads, scale=1.0)  # T5 does not scale
        x = x + Dense(self.d_model, (HEADS, EMBED), use_bias=False, dtype=self.dtype, name="o")(a)
        h = RMSNorm(self.epsilon, self.dtype, name="ffn_norm")(x)
        ff = lambda name: Dense(
            self.d_ff, (EMBED, MLP), use_bias=False, dtype=self.dtype, name=name
        )
        if self.gated:
            h = activation(self.act)(ff("wi_0")(h)) * ff("wi_1")(h)
        else:
            h = activation(self.act)(ff("wi")(h))
        return x + Dense(self.d_model, (MLP, EMBED), use_bias=False, dtype=self.dtype, name="wo")(h)


class T5Encoder(nn.Module):
    """`(ids i32[n l], mask bool[n l]) -> f32[n l d_model]` (zeros where mask is False)."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    per_layer_bias: bool = False  # UMT5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        n, l = ids.shape
        act, gated = parse_feed_forward_proj(self.feed_forward_proj)
        mask = mask.astype(bool)
        x = embed(self.vocab_size, self.d_model, (VOCAB, EMBED), self.dtype, "shared")(ids)
        key_bias = key_mask_bias(mask)  # f32[n 1 l l]
        rel = lambda i: RelativeBias(
            self.num_heads,
            self.relative_attention_num_buckets,
            self.relative_attention_max_distance,
            name=f"relative_bias_{i}",
        )(l)
        shared_bias = None if self.per_layer_bias else rel(0) + key_bias
        for i in range(self.num_layers):
            bias = rel(i) + key_bias if self.per_layer_bias else shared_bias
            x = T5Block(
                self.d_model,
                self.d_kv,
                self.d_ff,
                self.num_heads,
                self.layer_norm_epsilon,
                act,
                gated,
                self.dtype,
                name=f"block_{i}",
            )(x, bias)
        x = RMSNorm(self.layer_norm_epsilon, self.dtype, name="final_norm")(x)
        return zero_padding(x, mask)


def parse_feed_forward_proj(spec: str) -> tuple[str, bool]:
    """HF `feed_forward_proj` ('relu', 'gated-gelu', 'gated-silu', ...) -> (activation, gated)."""
    parts = spec.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"feed_forward_proj {spec!r}: expected '<act>' or 'gated-<act>'")
    act = "gelu_new" if spec == "gated-gelu" else parts[-1]
    activation(act)  # validates the name
    return act, len(parts) == 2


def read_t5_config(folder: str) -> dict:
    """T5Encoder fields from `folder/config.json` (model_type t5, mt5 or umt5)."""
    raw = ckpt.read_config(folder)
    kind = raw.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(
            f"{os.path.join(folder, 'config.json')}: model_type {kind!r} is not a T5 "
            f"(expected one of {MODEL_TYPES})"
        )
    get = lambda k, d=None, req=False: ckpt.config_value(raw, k, d, required=req)
    return dict(
        vocab_size=get("vocab_size", req=True),
        d_model=get("d_model", req=True),
        d_kv=get("d_kv", req=True),
        d_ff=get("d_ff", req=True),
        num_layers=get("num_layers", req=True),
        num_heads=get("num_heads", req=True),
        relative_attention_num_buckets=get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=get("relative_attention_max_distance", 128),
        layer_norm_epsilon=get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=get("feed_forward_proj", "relu"),
        per_layer_bias=kind == "umt5",
    )


def _hf_names(keys: tuple[str, ...]) -> tuple[list[str], bool]:
    """Linen path -> HF T5 tensor names (with and without the `encoder.` embed alias)."""
    if keys == ("shared", "embedding"):
        return ["shared.weight", "encoder.embed_tokens.weight"], False
    if keys == ("final_norm", "scale"):
        return ["encoder.final_layer_norm.weight"], False
    if keys[0].startswith("relative_bias_"):
        i = keys[0].rsplit("_", 1)[1]
        return [f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"], False
    i = keys[0].split("_")[1]
    sub = {
        "attn_norm": "layer.0.layer_norm",
        "q": "layer.0.SelfAttention.q",
        "k": "layer.0.SelfAttention.k",
        "v": "layer.0.SelfAttention.v",
        "o": "layer.0.SelfAttention.o",
        "ffn_norm": "layer.1.layer_norm",
        "wi": "layer.1.DenseReluDense.wi",
        "wi_0": "layer.1.DenseReluDense.wi_0",
        "wi_1": "layer.1.DenseReluDense.wi_1",
        "wo": "layer.1.DenseReluDense.wo",
    }[keys[1]]
    return [f"encoder.block.{i}.{sub}.weight"], keys[-1] == "kernel"


def t5_from_config(config: Mapping[str, Any], dtype=jnp.float32) -> T5Encoder:
    return T5Encoder(**config, dtype=dtype)


def load_t5(folder: str, dtype=jnp.float32) -> tuple[T5Encoder, dict]:
    """(module, params in `dtype`) for a local HF T5 / UMT5 folder (encoder weights only)."""
    config = read_t5_config(folder)
    module = t5_from_config(config, dtype)
    reader = ckpt.TensorReader(ckpt.safetensors_files(folder))
    example = (jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
    return module, ckpt.load_params(module, example, reader, _hf_names, dtype)

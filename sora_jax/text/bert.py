"""Frozen BERT-family encoder (e.g. all-MiniLM-L6-v2) in Flax Linen, with a loader for local
Hugging Face folders (config.json + model.safetensors + tokenizer.json / vocab.txt).

The math follows HF `BertModel` (post-LN, absolute positions, token_type_ids all zero); the
output is the last hidden state. Linen module names mirror the HF names so the weight mapping
in `load_bert_params` stays a direct translation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from sora_jax.parallel.axes import EMBED, HEADS, MLP, NORM, VOCAB
from sora_jax.text.layers import ACTIVATIONS, partitioned


def _dense(features, axes, dtype, name):
    """nn.Dense with logical sharding axes (kernel (in, out), bias (out,))."""
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=partitioned(nn.initializers.lecun_normal(), axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1:]),
        name=name,
    )


def _layer_norm(eps, dtype, name):
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=partitioned(nn.initializers.ones, (NORM,)),
        bias_init=partitioned(nn.initializers.zeros, (NORM,)),
        name=name,
    )


def _embed(num, features, axes, name):
    return nn.Embed(
        num, features, embedding_init=partitioned(nn.initializers.normal(0.02), axes), name=name
    )


_ACTIVATIONS = ACTIVATIONS

# BertEncoder fields that are read from config.json.
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
)


class BertSelfAttention(nn.Module):
    hidden_size: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        """x: f[n l d], bias: f32[n 1 1 l] additive key mask -> f[n l d] (before output dense)."""
        dense = lambda name: _dense(self.hidden_size, (EMBED, HEADS), self.dtype, name)
        q, k, v = (
            rearrange(dense(n)(x), "n l (h e) -> n h l e", h=self.num_heads)
            for n in ("query", "key", "value")
        )
        scale = 1.0 / np.sqrt(q.shape[-1])
        logits = jnp.einsum("nhqe,nhke->nhqk", q, k).astype(jnp.float32) * scale + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("nhqk,nhke->nhqe", probs, v)
        return rearrange(out, "n h l e -> n l (h e)")


class BertLayer(nn.Module):
    hidden_size: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    hidden_act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        """Post-LN block: x f[n l d] -> f[n l d]."""
        ln = lambda name: _layer_norm(self.layer_norm_eps, self.dtype, name)
        a = BertSelfAttention(self.hidden_size, self.num_heads, self.dtype, name="attention_self")(
            x, bias
        )
        a = _dense(self.hidden_size, (HEADS, EMBED), self.dtype, "attention_output")(a)
        x = ln("attention_LayerNorm")(x + a)
        h = _dense(self.intermediate_size, (EMBED, MLP), self.dtype, "intermediate")(x)
        h = _ACTIVATIONS[self.hidden_act](h)
        h = _dense(self.hidden_size, (MLP, EMBED), self.dtype, "output")(h)
        return ln("output_LayerNorm")(x + h)


class BertEncoder(nn.Module):
    """HF BertModel without pooler: `(ids i32[n l], mask bool[n l]) -> f32[n l hidden_size]`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by num_attention_heads {self.num_attention_heads}"
            )
        n, l = ids.shape
        if l > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {l} exceeds max_position_embeddings {self.max_position_embeddings}"
            )
        d = self.hidden_size
        word = _embed(self.vocab_size, d, (VOCAB, EMBED), "word_embeddings")(ids)
        pos = _embed(self.max_position_embeddings, d, (None, EMBED), "position_embeddings")
        tok = _embed(self.type_vocab_size, d, (None, EMBED), "token_type_embeddings")
        x = _layer_norm(self.layer_norm_eps, self.dtype, "embeddings_LayerNorm")(
            word + pos(jnp.arange(l))[None] + tok(jnp.zeros_like(ids))
        )
        # Additive mask like HF (finite, so a fully masked row gives uniform weights, not NaN).
        bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :].astype(
            jnp.float32
        )
        for i in range(self.num_hidden_layers):
            x = BertLayer(
                d,
                self.num_attention_heads,
                self.intermediate_size,
                self.layer_norm_eps,
                self.hidden_act,
                self.dtype,
                name=f"layer_{i}",
            )(x, bias)
        return x.astype(jnp.float32)


def read_bert_config(folder: str) -> dict:
    """Parse `folder/config.json` into the BertEncoder field dict (ValueError if not BERT-like)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BERT config not found: {path}")
    with open(path) as f:
        raw = json.load(f)
    pe = raw.get("position_embedding_type", "absolute")
    if pe != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type {pe!r} is not supported (only 'absolute')"
        )
    missing = [k for k in CONFIG_FIELDS[:5] if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing BERT config keys {missing}")
    defaults = {
        f.name: f.default
        for f in BertEncoder.__dataclass_fields__.values()
        if f.name in CONFIG_FIELDS
    }
    return {k: raw.get(k, defaults.get(k)) for k in CONFIG_FIELDS}


def bert_from_config(config: Mapping[str, Any], dtype=jnp.float32) -> BertEncoder:
    return BertEncoder(**{k: config[k] for k in CONFIG_FIELDS if k in config}, dtype=dtype)


def _cfg(config, key):
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def _hf_name_map(num_layers: int) -> dict[tuple[str, ...], tuple[str, str]]:
    """Linen param path -> (HF name without prefix, kind) with kind in {'embed', 'linear', 'ln'}."""
    m: dict[tuple[str, ...], tuple[str, str]] = {}
    for e in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        m[(e, "embedding")] = (f"embeddings.{e}.weight", "embed")
    m[("embeddings_LayerNorm", "scale")] = ("embeddings.LayerNorm.weight", "ln")
    m[("embeddings_LayerNorm", "bias")] = ("embeddings.LayerNorm.bias", "ln")
    for i in range(num_layers):
        hf, fl = f"encoder.layer.{i}", f"layer_{i}"
        dense = {
            ("attention_self", "query"): "attention.self.query",
            ("attention_self", "key"): "attention.self.key",
            ("attention_self", "value"): "attention.self.value",
            ("attention_output",): "attention.output.dense",
            ("intermediate",): "intermediate.dense",
            ("output",): "output.dense",
        }
        for path, name in dense.items():
            m[(fl, *path, "kernel")] = (f"{hf}.{name}.weight", "linear")
            m[(fl, *path, "bias")] = (f"{hf}.{name}.bias", "linear")
        for ln, name in (
            ("attention_LayerNorm", "attention.output.LayerNorm"),
            ("output_LayerNorm", "output.LayerNorm"),
        ):
            m[(fl, ln, "scale")] = (f"{hf}.{name}.weight", "ln")
            m[(fl, ln, "bias")] = (f"{hf}.{name}.bias", "ln")
    return m


def _lookup(tensors: Mapping[str, np.ndarray], name: str):
    """Find `name` with or without a `bert.` prefix; old checkpoints use LayerNorm gamma/beta."""
    candidates = [name]
    if name.endswith("LayerNorm.weight"):
        candidates.append(name[: -len("weight")] + "gamma")
    elif name.endswith("LayerNorm.bias"):
        candidates.append(name[: -len("bias")] + "beta")
    for c in candidates:
        for key in (c, "bert." + c):
            if key in tensors:
                return key, tensors[key]
    return None, None


def load_bert_params(safetensors_path: str, config) -> dict:
    """Load HF BERT weights into the BertEncoder Linen params pytree (f32 numpy leaves).

    `config` is a dict with the BertEncoder fields (e.g. from `read_bert_config`) or a BertEncoder.
    HF Linear weights [out, in] are transposed to Linen kernels [in, out]. Raises ValueError
    naming the first missing key or shape mismatch.
    """
    from safetensors.numpy import load_file

    if not os.path.isfile(safetensors_path):
        raise FileNotFoundError(f"safetensors file not found: {safetensors_path}")
    tensors = load_file(safetensors_path)
    d = _cfg(config, "hidden_size")
    inter = _cfg(config, "intermediate_size")
    expected = {
        "word_embeddings": (_cfg(config, "vocab_size"), d),
        "position_embeddings": (_cfg(config, "max_position_embeddings"), d),
        "token_type_embeddings": (_cfg(config, "type_vocab_size"), d),
    }
    params: dict = {}
    for path, (name, kind) in _hf_name_map(_cfg(config, "num_hidden_layers")).items():
        key, arr = _lookup(tensors, name)
        if key is None:
            raise ValueError(
                f"{safetensors_path}: missing weight {name!r} (also tried 'bert.{name}')"
            )
        arr = np.asarray(arr, dtype=np.float32)
        if kind == "embed":
            want = expected[path[0]]
        elif kind == "ln":
            want = (d,)
        else:  # linear: output width depends on which dense this is
            out = inter if path[1] == "intermediate" else d
            inp = inter if path[1] == "output" else d
            if path[-1] == "kernel":
                want = (out, inp)  # HF layout before the transpose
            else:
                want = (out,)
        if arr.shape != want:
            raise ValueError(
                f"{safetensors_path}: weight {key!r} has shape {arr.shape}, expected {want}"
            )
        if kind == "linear" and path[-1] == "kernel":
            arr = np.ascontiguousarray(arr.T)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = arr
    return params

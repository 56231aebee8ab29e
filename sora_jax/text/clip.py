"""CLIP text encoder in Flax Linen, loading local Hugging Face folders (CLIPTextModel or a full
CLIPModel, whose vision tower is ignored).

Math of HF `CLIPTextModel`: token + learned absolute position embeddings, pre-LayerNorm blocks
with causal self-attention (padding keys masked too), MLP fc2(act(fc1 x)) with act 'quick_gelu'
(OpenAI) or 'gelu', a final LayerNorm. `eos_pool` gives HF's pooled output (the state at the
end-of-text token).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from sora_jax.parallel.axes import EMBED, HEADS, MLP, VOCAB
from sora_jax.text import hf_checkpoint as ckpt
from sora_jax.text.layers import Dense, LayerNorm, activation, embed
from sora_jax.text.layers import head_scale, key_mask_bias, multi_head_attention, zero_padding

MODEL_TYPES = ("clip_text_model", "clip")
# Tensor-name prefixes: transformers >= 5 CLIPTextModel, older ones / CLIPModel.
_PREFIXES = ("", "text_model.")


class CLIPBlock(nn.Module):
    hidden_size: int
    intermediate_size: int
    num_heads: int
    epsilon: float
    act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        """Pre-LN block: x f[n l d], bias f32[n 1 l l] -> f[n l d]."""
        d = self.hidden_size
        h = LayerNorm(self.epsilon, self.dtype, name="layer_norm1")(x)
        q, k, v = (
            Dense(d, (EMBED, HEADS), dtype=self.dtype, name=n)(h)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        a = multi_head_attention(q, k, v, bias, self.num_heads, head_scale(d // self.num_heads))
        x = x + Dense(d, (HEADS, EMBED), dtype=self.dtype, name="out_proj")(a)
        h = LayerNorm(self.epsilon, self.dtype, name="layer_norm2")(x)
        h = Dense(self.intermediate_size, (EMBED, MLP), dtype=self.dtype, name="fc1")(h)
        return x + Dense(d, (MLP, EMBED), dtype=self.dtype, name="fc2")(activation(self.act)(h))


class CLIPTextEncoder(nn.Module):
    """`(ids i32[n l], mask bool[n l]) -> f32[n l hidden_size]` last hidden state (after the
    final LayerNorm), zeros where mask is False. l <= max_position_embeddings."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        n, l = ids.shape
        if l > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {l} exceeds max_position_embeddings {self.max_position_embeddings}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        mask = mask.astype(bool)
        d = self.hidden_size
        x = embed(self.vocab_size, d, (VOCAB, EMBED), self.dtype, "token_embedding")(ids)
        pos = embed(
            self.max_position_embeddings, d, (None, EMBED), self.dtype, "position_embedding"
        )
        x = x + pos(jnp.arange(l))[None]
        bias = key_mask_bias(mask, causal=True)
        for i in range(self.num_hidden_layers):
            x = CLIPBlock(
                d,
                self.intermediate_size,
                self.num_attention_heads,
                self.layer_norm_eps,
                self.hidden_act,
                self.dtype,
                name=f"layer_{i}",
            )(x, bias)
        x = LayerNorm(self.layer_norm_eps, self.dtype, name="final_layer_norm")(x)
        return zero_padding(x, mask)


def eos_pool(hidden, ids, eos_token_id: int):
    """HF CLIP's pooled output f[n d] from hidden f[n l d], ids i32[n l]: the state at the first
    `eos_token_id`, or (legacy configs with eos_token_id == 2) at the highest id."""
    if eos_token_id == 2:
        idx = jnp.argmax(ids, axis=-1)
    else:
        idx = jnp.argmax(ids == eos_token_id, axis=-1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def read_clip_config(folder: str) -> dict:
    """CLIPTextEncoder fields (plus eos/pad token ids) from config.json: a CLIPTextModel's, or
    the `text_config` of a full CLIPModel."""
    raw = ckpt.read_config(folder, section="text_config")
    kind = raw.get("_parent_model_type", raw.get("model_type"))
    if kind not in MODEL_TYPES:
        raise ValueError(f"{folder}/config.json: model_type {kind!r} is not CLIP {MODEL_TYPES}")
    get = lambda k, d=None, req=False: ckpt.config_value(raw, k, d, required=req)
    return dict(
        vocab_size=get("vocab_size", 49408),
        hidden_size=get("hidden_size", 512),
        intermediate_size=get("intermediate_size", 2048),
        num_hidden_layers=get("num_hidden_layers", 12),
        num_attention_heads=get("num_attention_heads", 8),
        max_position_embeddings=get("max_position_embeddings", 77),
        layer_norm_eps=get("layer_norm_eps", 1e-5),
        hidden_act=get("hidden_act", "quick_gelu"),
    ), dict(eos_token_id=get("eos_token_id", 49407), pad_token_id=get("pad_token_id", 1))


def _hf_names(keys: tuple[str, ...]) -> tuple[list[str], bool]:
    leaf = {"embedding": "weight", "kernel": "weight", "scale": "weight", "bias": "bias"}[keys[-1]]
    if keys[0] in ("token_embedding", "position_embedding"):
        name = f"embeddings.{keys[0]}.weight"
    elif keys[0] == "final_layer_norm":
        name = f"final_layer_norm.{leaf}"
    else:
        i, sub = keys[0].split("_")[1], keys[1]
        where = {"layer_norm1": "", "layer_norm2": "", "fc1": "mlp.", "fc2": "mlp."}.get(
            sub, "self_attn."
        )
        name = f"encoder.layers.{i}.{where}{sub}.{leaf}"
    return ckpt.with_prefixes(name, _PREFIXES), keys[-1] == "kernel"


def clip_from_config(config: Mapping[str, Any], dtype=jnp.float32) -> CLIPTextEncoder:
    return CLIPTextEncoder(**config, dtype=dtype)


def load_clip(folder: str, dtype=jnp.float32) -> tuple[CLIPTextEncoder, dict, dict]:
    """(module, params in `dtype`, token ids {eos_token_id, pad_token_id}) for a local HF folder."""
    config, tokens = read_clip_config(folder)
    module = clip_from_config(config, dtype)
    reader = ckpt.TensorReader(ckpt.safetensors_files(folder))
    example = (jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
    return module, ckpt.load_params(module, example, reader, _hf_names, dtype), tokens

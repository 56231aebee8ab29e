"""Text encoders behind one interface (`TextEncoder`) used by the trainer and the sampler.

Kinds:
  'tiny' - `TinyTextEncoder` over a `WordTokenizer` vocabulary, trained jointly with the DiT.
  'bert' - frozen pretrained BERT-family encoder loaded from a local Hugging Face folder.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.text.bert import BertEncoder, bert_from_config, load_bert_params, read_bert_config
from sora_jax.text.tokenizer import WordTokenizer

__all__ = [
    "TinyTextEncoder",
    "BertEncoder",
    "load_bert_params",
    "TextEncoder",
    "build_text_encoder",
    "load_bert_tokenizer",
]


class _EncoderBlock(nn.Module):
    width: int
    num_heads: int
    mlp_ratio: float
    dtype: Any

    @nn.compact
    def __call__(self, x, mask):
        """Pre-LN block. x: f[n l w], mask: bool[n l] (keys) -> f[n l w]."""
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, deterministic=True
        )(h, h, mask=mask[:, None, None, :])
        x = x + h
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = nn.Dense(int(self.width * self.mlp_ratio), dtype=self.dtype)(h)
        h = nn.Dense(self.width, dtype=self.dtype)(nn.gelu(h))
        return x + h


class TinyTextEncoder(nn.Module):
    """Small from-scratch Transformer encoder: `(ids i32[n l], mask bool[n l]) -> f32[n l width]`.

    l <= max_length. Attention only reads keys where mask is True, so masked tokens never
    influence real ones; outputs at masked positions are zeroed. A fully masked row gives
    zeros (Flax masks with a finite large negative, so no NaN).
    """

    vocab_size: int
    max_length: int
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        n, l = ids.shape
        if l > self.max_length:
            raise ValueError(f"sequence length {l} exceeds max_length {self.max_length}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} not divisible by num_heads {self.num_heads}")
        init = nn.initializers.normal(0.02)
        x = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="word_embed")(ids)
        pos = self.param("pos_embed", init, (self.max_length, self.width))
        x = (x + pos[None, :l]).astype(self.dtype)
        mask = mask.astype(bool)
        for i in range(self.depth):
            x = _EncoderBlock(
                self.width, self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}"
            )(x, mask)
        x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
        return (x * mask[..., None]).astype(jnp.float32)


class TextEncoder:
    """What the trainer/sampler use: a Linen module + tokenizer + (maybe frozen) params.

    Attributes: module, trainable, params (None until `init_params` for trainable encoders),
    dim (feature width), max_length, null_text (the caption used for the unconditional branch).
    """

    null_text = ""

    def __init__(
        self,
        module: nn.Module,
        tokenize_fn: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
        *,
        trainable: bool,
        params: Any,
        dim: int,
        max_length: int,
    ):
        self.module = module
        self._tokenize_fn = tokenize_fn
        self.trainable = trainable
        self.params = params
        self.dim = dim
        self.max_length = max_length

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> ids i32[n max_length], mask bool[n max_length] (numpy)."""
        if isinstance(texts, str):
            raise ValueError("tokenize expects a sequence of strings, not a single string")
        return self._tokenize_fn(list(texts))

    def init_params(self, rng: jax.Array) -> Any:
        """Fresh params pytree for the module (for trainable encoders); does not set self.params."""
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        return self.module.init(rng, ids, jnp.ones((1, self.max_length), bool))["params"]

    def encode(self, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Pure: (params, ids i32[n l], mask bool[n l]) -> f32[n l dim]. Frozen encoders stop gradients."""
        out = self.module.apply({"params": params}, ids, mask)
        return out if self.trainable else jax.lax.stop_gradient(out)

    def __call__(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        """Convenience: tokenize + encode with self.params -> (f32[n l dim], mask bool[n l])."""
        if self.params is None:
            raise ValueError("TextEncoder.params is None; call init_params (or train) first")
        ids, mask = self.tokenize(texts)
        return self.encode(self.params, ids, mask), mask


def load_bert_tokenizer(folder: str, max_length: int, pad_id: int | None = None):
    """Tokenizer for a HF BERT folder: tokenizer.json if present, else vocab.txt (WordPiece).

    Returns `tokenize(texts) -> (ids i32[n max_length], mask bool[n max_length])`; sequences get
    [CLS] ... [SEP], are truncated to max_length, and the empty string becomes [CLS][SEP].
    """
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    tj, vt = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "vocab.txt")
    if os.path.isfile(tj):
        tok = Tokenizer.from_file(tj)
    elif os.path.isfile(vt):
        lowercase = True
        tc = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(tc):
            with open(tc) as f:
                lowercase = bool(json.load(f).get("do_lower_case", True))
        tok = BertWordPieceTokenizer(vt, lowercase=lowercase)
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {folder}")
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    if pad_id is None:
        pad_id = tok.token_to_id("[PAD]")
        pad_id = 0 if pad_id is None else pad_id

    def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = tok.encode_batch(list(texts))
        ids = np.full((len(encs), max_length), pad_id, np.int32)
        mask = np.zeros((len(encs), max_length), bool)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = np.asarray(e.attention_mask, bool)
        return ids, mask

    return tokenize


def build_text_encoder(
    kind: str,
    *,
    max_length: int,
    vocabulary: Sequence[str] | None = None,
    width: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    path: str | None = None,
    dtype=jnp.float32,
) -> TextEncoder:
    """Build a TextEncoder. kind='tiny' needs `vocabulary` (trainable, params None);
    kind='bert' needs `path` to a local HF folder (frozen, params loaded)."""
    if int(max_length) < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if kind == "tiny":
        if vocabulary is None:
            raise ValueError("text encoder kind 'tiny' needs a vocabulary")
        tokenizer = WordTokenizer(vocabulary)
        module = TinyTextEncoder(
            vocab_size=tokenizer.vocab_size,
            max_length=max_length,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dtype=dtype,
        )
        enc = TextEncoder(
            module,
            lambda texts: tokenizer.encode(texts, max_length),
            trainable=True,
            params=None,
            dim=width,
            max_length=max_length,
        )
        enc.tokenizer = tokenizer
        return enc
    if kind == "bert":
        if path is None:
            raise ValueError(
                "text encoder kind 'bert' needs `path` to a local Hugging Face model folder"
            )
        if not os.path.isdir(path):
            raise FileNotFoundError(f"BERT model folder not found: {path}")
        config = read_bert_config(path)
        if max_length > config["max_position_embeddings"]:
            raise ValueError(
                f"max_length {max_length} exceeds the model's max_position_embeddings {config['max_position_embeddings']}"
            )
        weights = os.path.join(path, "model.safetensors")
        params = jax.tree_util.tree_map(jnp.asarray, load_bert_params(weights, config))
        with open(os.path.join(path, "config.json")) as f:
            pad_id = json.load(f).get("pad_token_id")
        return TextEncoder(
            bert_from_config(config, dtype),
            load_bert_tokenizer(path, max_length, pad_id),
            trainable=False,
            params=params,
            dim=config["hidden_size"],
            max_length=max_length,
        )
    raise ValueError(f"unknown text encoder kind {kind!r}; expected 'tiny' or 'bert'")

"""Text encoders behind one interface (`TextEncoder`) used by the trainer and the sampler.

Kinds:
  'tiny' - `TinyTextEncoder` over a `WordTokenizer` vocabulary, trained jointly with the DiT.
  'bert' - frozen pretrained BERT-family encoder (e.g. all-MiniLM-L6-v2) from a local HF folder.
  't5'   - frozen T5 / T5 v1.1 / mT5 / UMT5 encoder from a local HF folder.
  'clip' - frozen CLIP text encoder (last hidden state) from a local HF folder.
Frozen encoders carry an `identity` (kind, content hash of the folder, length, dtype) that keys
the text-embedding cache (`sora_jax.text.cache`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.common import config_checks as cc
from sora_jax.text import clip as clip_lib
from sora_jax.text import hf_checkpoint
from sora_jax.text import t5 as t5_lib
from sora_jax.text.bert import BertEncoder, bert_from_config, load_bert_params, read_bert_config
from sora_jax.text.hf_tokenizer import load_tokenizer
from sora_jax.text.tokenizer import WordTokenizer

KINDS = ("tiny", "bert", "t5", "clip")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "TinyTextEncoder",
    "BertEncoder",
    "load_bert_params",
    "TextEncoder",
    "build_text_encoder",
    "load_bert_tokenizer",
    "KINDS",
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

    Attributes: module, trainable, params (None until `init_params` for trainable encoders;
    plain arrays, never sharding boxes), dim (feature width), max_length, null_text (the caption
    used for the unconditional branch), identity (a string naming the frozen encoder's weights,
    tokenizer, length and dtype; None for trainable ones, whose outputs change in training).
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
        identity: str | None = None,
        problems_fn: Callable[[str], list[str]] | None = None,
    ):
        self.module = module
        self._problems_fn = problems_fn
        self.identity = identity
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

    def prompt_problems(self, texts: Sequence[str]) -> list[list[str]]:
        """Per text, what the encoder will not see of it (unknown words, truncation), as
        one-line messages; [] where the tokenizer cannot tell."""
        if self._problems_fn is None:
            return [[] for _ in texts]
        return [self._problems_fn(t) for t in texts]

    def init_params(self, rng: jax.Array) -> Any:
        """Fresh params pytree for the module (for trainable encoders); does not set self.params."""
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        params = self.module.init(rng, ids, jnp.ones((1, self.max_length), bool))["params"]
        return nn.meta.unbox(params)

    def logical_axes(self) -> Any:
        """Tree of logical axis names (PartitionSpec of names like 'embed', 'heads') for params,
        from the module's annotations (replicated where a param has none)."""
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        boxed = jax.eval_shape(
            lambda: self.module.init(jax.random.key(0), ids, jnp.ones(ids.shape, bool))["params"]
        )
        return nn.get_partition_spec(boxed)

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


def check_folder(config):
    """A frozen encoder (text.kind other than 'tiny') names its local model folder."""
    t = config.text
    cc.check(
        t.kind == "tiny" or bool(t.path),
        "text.path",
        t.path,
        f"text.kind={t.kind!r} needs the path of a local Hugging Face model folder",
    )


def load_bert_tokenizer(folder: str, max_length: int, pad_id: int | None = None):
    """Tokenizer of a HF BERT folder (tokenizer.json or vocab.txt); see `hf_tokenizer`."""
    return load_tokenizer(folder, max_length, pad_id)


def _frozen(kind, module, params, tokenize, dim, max_length, path, tok_dir, dtype_name):
    identity = f"{kind}:{hf_checkpoint.fingerprint(path)}:len={max_length}:{dtype_name}"
    if os.path.realpath(tok_dir) != os.path.realpath(path):
        identity += f":tokenizer={hf_checkpoint.fingerprint(tok_dir, weights=False)}"
    return TextEncoder(
        module,
        tokenize,
        trainable=False,
        params=params,
        dim=dim,
        max_length=max_length,
        identity=identity,
        problems_fn=getattr(tokenize, "problems", None),
    )


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
    tokenizer_path: str | None = None,
    dtype: str | Any = "float32",
) -> TextEncoder:
    """Build a TextEncoder. kind='tiny' needs `vocabulary` (trainable, params None); 'bert',
    't5' and 'clip' need `path`, a local HF folder (frozen, params loaded). `tokenizer_path`:
    the tokenizer's folder where it is not `path` (e.g. diffusers' tokenizer/ next to
    text_encoder/). `dtype` 'float32' | 'bfloat16': compute dtype, and the frozen params'."""
    if int(max_length) < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    dtype_name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if dtype_name not in DTYPES:
        raise ValueError(f"text encoder dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    dtype = DTYPES[dtype_name]
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
            problems_fn=lambda text: tokenizer.problems(text, max_length),
            trainable=True,
            params=None,
            dim=width,
            max_length=max_length,
        )
        enc.tokenizer = tokenizer
        return enc
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}; expected one of {KINDS}")
    if not path:
        raise ValueError(
            f"text encoder kind {kind!r} needs `path` to a local Hugging Face model folder"
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{kind} model folder not found: {path}")
    tok_dir = tokenizer_path or path
    if kind == "bert":
        config = read_bert_config(path)
        if max_length > config["max_position_embeddings"]:
            raise ValueError(
                f"max_length {max_length} exceeds the model's max_position_embeddings "
                f"{config['max_position_embeddings']}"
            )
        weights = os.path.join(path, "model.safetensors")
        params = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype), load_bert_params(weights, config)
        )
        pad_id = hf_checkpoint.read_config(path).get("pad_token_id")
        module, dim = bert_from_config(config, dtype), config["hidden_size"]
    elif kind == "t5":
        module, params = t5_lib.load_t5(path, dtype)
        pad_id, dim = hf_checkpoint.read_config(path).get("pad_token_id", 0), module.d_model
    else:
        module, params, tokens = clip_lib.load_clip(path, dtype)
        if max_length > module.max_position_embeddings:
            raise ValueError(
                f"max_length {max_length} exceeds the model's max_position_embeddings "
                f"{module.max_position_embeddings}"
            )
        # Padding is masked out, so the pad id only has to be a valid token.
        pad_id, dim = tokens["pad_token_id"], module.hidden_size
    tokenize = load_tokenizer(tok_dir, max_length, pad_id)
    return _frozen(kind, module, params, tokenize, dim, max_length, path, tok_dir, dtype_name)


def validate_config(config):
    """Checks config.text.* (the frozen encoders' folder is checked where they are built, so
    that a config plans without it: `check_folder`)."""
    t = config.text
    cc.check(t.kind in KINDS, "text.kind", t.kind, f"must be one of {KINDS}")
    cc.check(
        t.dtype in ("float32", "bfloat16"),
        "text.dtype",
        t.dtype,
        "must be 'float32' or 'bfloat16'",
    )
    cc.positive(config, "text.max_length", "text.width", "text.num_heads")
    # depth 0: word + position embeddings only (no mixing between words).
    cc.check(t.depth >= 0, "text.depth", t.depth, "must be >= 0")

"""Tokenizers of local Hugging Face folders, as `tokenize(texts) -> (ids, mask)` at a fixed length.

Sources, first found wins: tokenizer.json (the `tokenizers` library; BERT, T5, CLIP and most
others ship one), vocab.txt (BERT WordPiece), else `transformers.AutoTokenizer` from the folder
(spiece.model, vocab.json + merges.txt; needs the optional `transformers` package). Nothing is
downloaded. Special tokens (BERT's [CLS]/[SEP], T5's </s>, CLIP's start/end of text) are added as
the tokenizer's own post-processor says; truncation keeps them.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np

TokenizeFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>")
_UNK_TOKENS = ("[UNK]", "<unk>")


def _pad_id(token_to_id, pad_id):
    if pad_id is not None:
        return int(pad_id)
    for t in _PAD_TOKENS:
        i = token_to_id(t)
        if i is not None:
            return int(i)
    return 0


def _from_tokenizers(tok, max_length: int, pad_id: int | None) -> TokenizeFn:
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    pad = _pad_id(tok.token_to_id, pad_id)

    def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = tok.encode_batch(list(texts))
        ids = np.full((len(encs), max_length), pad, np.int32)
        mask = np.zeros((len(encs), max_length), bool)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = np.asarray(e.attention_mask, bool)
        return ids, mask

    unk = next((u for u in map(tok.token_to_id, _UNK_TOKENS) if u is not None), None)

    def problems(text: str) -> list[str]:
        e = tok.encode(text)
        out = []
        unknown = [text[a:b] for i, (a, b) in zip(e.ids, e.offsets) if i == unk and b > a]
        if unknown:
            shown = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            out.append(f"text the tokenizer does not know: {shown}")
        if e.overflowing:
            kept = max(b for a, b in e.offsets) if e.offsets else 0
            out.append(f"truncated to {max_length} tokens (cut from {text[kept:].lstrip()[:20]!r})")
        return out

    # Read by the text encoder (its `prompt_problems`): sampling warns about both.
    tokenize.problems = problems
    return tokenize


def _from_transformers(folder: str, max_length: int, pad_id: int | None) -> TokenizeFn:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise FileNotFoundError(
            f"no tokenizer.json or vocab.txt in {folder}; other tokenizer files need the "
            "`transformers` package (pip install 'sora_jax[hf]')"
        ) from e
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    pad = _pad_id(lambda t: tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None, pad_id)

    def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = tok(list(texts), max_length=max_length, truncation=True, padding=False)
        ids = np.full((len(texts), max_length), pad, np.int32)
        mask = np.zeros((len(texts), max_length), bool)
        for i, row in enumerate(enc["input_ids"]):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        return ids, mask

    return tokenize


def load_tokenizer(folder: str, max_length: int, pad_id: int | None = None) -> TokenizeFn:
    """`tokenize(texts) -> (ids i32[n max_length], mask bool[n max_length])` for a HF folder.

    Pads with `pad_id` (default: the tokenizer's [PAD] / <pad> / <|endoftext|>, else 0); the mask
    is False on padding only.
    """
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if int(max_length) < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    tj, vt = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "vocab.txt")
    if os.path.isfile(tj):
        return _from_tokenizers(Tokenizer.from_file(tj), max_length, pad_id)
    if os.path.isfile(vt):
        lowercase = True
        tc = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(tc):
            with open(tc) as f:
                lowercase = bool(json.load(f).get("do_lower_case", True))
        return _from_tokenizers(BertWordPieceTokenizer(vt, lowercase=lowercase), max_length, pad_id)
    return _from_transformers(folder, max_length, pad_id)

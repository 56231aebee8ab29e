"""Word-level tokenizer for the closed caption grammar of the built-in tiny text encoder.

Ids: pad=0, unk=1, null=2 (the empty caption, used for classifier-free guidance), then the
vocabulary words in the order given (duplicates after normalisation are dropped).
"""

from __future__ import annotations

import string
from typing import Iterable, Sequence

import numpy as np

PAD_ID = 0
UNK_ID = 1
NULL_ID = 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<null>")


def normalize_words(text: str) -> list[str]:
    """Lower-case, split on whitespace, strip leading/trailing punctuation; drops empty words."""
    words = (w.strip(string.punctuation) for w in text.lower().split())
    return [w for w in words if w]


class WordTokenizer:
    """Deterministic whitespace tokenizer over a fixed vocabulary.

    `encode(texts, max_length) -> (ids i32[n l], mask bool[n l])` with l == max_length.
    """

    def __init__(self, vocabulary: Sequence[str]):
        if isinstance(vocabulary, str):
            raise ValueError("vocabulary must be a sequence of words, not a single string")
        words: list[str] = []
        seen: set[str] = set()
        for raw in vocabulary:
            if not isinstance(raw, str):
                raise ValueError(
                    f"vocabulary entries must be strings, got {type(raw).__name__}: {raw!r}"
                )
            norm = normalize_words(raw)
            if len(norm) != 1:
                raise ValueError(
                    f"vocabulary entry {raw!r} must normalise to exactly one word, got {norm}"
                )
            (w,) = norm
            if w not in seen:
                seen.add(w)
                words.append(w)
        self._words: tuple[str, ...] = SPECIAL_TOKENS + tuple(words)
        self._ids: dict[str, int] = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(words)}

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> "WordTokenizer":
        """Vocabulary = sorted set of all words in `captions` (order-independent, deterministic)."""
        return cls(sorted({w for c in captions for w in normalize_words(c)}))

    @property
    def vocab_size(self) -> int:
        return len(self._words)

    @property
    def words(self) -> tuple[str, ...]:
        """All tokens, index == id (specials first)."""
        return self._words

    def token_id(self, word: str) -> int:
        norm = normalize_words(word)
        return self._ids.get(norm[0], UNK_ID) if len(norm) == 1 else UNK_ID

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode captions.

        Returns ids i32[n max_length] (pad=0 after the caption) and mask bool[n max_length]
        (True on real tokens). Captions longer than max_length are truncated; an empty caption
        (nothing left after normalisation) is the single null token.
        """
        if isinstance(texts, str):
            raise ValueError("encode expects a sequence of strings, not a single string")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        texts = list(texts)
        ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int32)
        mask = np.zeros((len(texts), max_length), dtype=bool)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"caption {i} is not a string: {text!r}")
            toks = [self._ids.get(w, UNK_ID) for w in normalize_words(text)][:max_length] or [
                NULL_ID
            ]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = True
        return ids, mask

    def problems(self, text: str, max_length: int) -> list[str]:
        """What of `text` the encoder will not see: words outside the vocabulary (they become
        <unk>) and words past `max_length` (cut); [] when it sees all of it."""
        words = normalize_words(text)
        unknown = list(dict.fromkeys(w for w in words if w not in self._ids))
        out = []
        if unknown:
            shown = ", ".join(repr(w) for w in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            out.append(f"words the text encoder does not know: {shown}{more}")
        if len(words) > max_length:
            out.append(
                f"truncated to the first {max_length} of {len(words)} words "
                f"(cut from {words[max_length]!r})"
            )
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of encode for one row (pads dropped); for debugging and tests."""
        return " ".join(self._words[int(i)] for i in ids if int(i) != PAD_ID)

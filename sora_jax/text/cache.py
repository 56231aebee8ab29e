"""Text-embedding cache for frozen encoders, keyed by (encoder identity, text).

A frozen encoder's output for a caption never changes, so training encodes each distinct
caption once (not every step) and sampling re-uses prompt embeddings. Entries live in memory
and, with a `directory`, in npz shards under `directory/<hash of the identity>/` that later runs
(and other processes) read back; the identity is stored beside them and checked, so a different
checkpoint, tokenizer, length or dtype never reads another's embeddings.
"""

from __future__ import annotations

import glob
import hashlib
import os
import uuid
from typing import Sequence

import jax
import numpy as np


class EmbeddingCache:
    """`cache(texts) -> (f32[n l dim], bool[n l])`, as `encoder` would give (numpy).

    Misses are encoded in batches of `batch_size` (the last one padded, so one compile).
    `hits` and `misses` count texts served from the cache and encoded.
    """

    def __init__(self, encoder, directory: str | None = None, batch_size: int = 32):
        if encoder.trainable or not encoder.identity:
            raise ValueError(
                "EmbeddingCache needs a frozen text encoder with an identity (kind 'bert', 't5' "
                "or 'clip'); a trainable encoder's embeddings change during training"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.identity = encoder.identity
        self.batch_size = batch_size
        self.hits = self.misses = 0
        self._mem: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._unsaved: list[str] = []
        self._encode = jax.jit(encoder.encode)
        self.directory = None
        if directory:
            key = hashlib.sha256(self.identity.encode()).hexdigest()[:24]
            self.directory = os.path.join(directory, key)
            self._load()

    def __len__(self) -> int:
        return len(self._mem)

    def __contains__(self, text: str) -> bool:
        return (self.identity, text) in self._mem

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            raise ValueError("EmbeddingCache expects a sequence of strings, not a single string")
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if (self.identity, t) not in self._mem))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        for s in range(0, len(missing), self.batch_size):
            chunk = missing[s : s + self.batch_size]
            padded = chunk + [""] * (self.batch_size - len(chunk))
            ids, mask = self.encoder.tokenize(padded)
            emb = np.asarray(self._encode(self.encoder.params, ids, mask), np.float32)
            for i, t in enumerate(chunk):
                self._mem[(self.identity, t)] = (emb[i], np.asarray(mask[i], bool))
            self._unsaved.extend(chunk)
        if not texts:
            l, d = self.encoder.max_length, self.encoder.dim
            return np.zeros((0, l, d), np.float32), np.zeros((0, l), bool)
        rows = [self._mem[(self.identity, t)] for t in texts]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def flush(self) -> str | None:
        """Writes the entries not yet on disk as one new shard; returns its path (None if
        there is no directory or nothing new). Shards are written atomically (tmp + rename)."""
        if self.directory is None or not self._unsaved:
            return None
        os.makedirs(self.directory, exist_ok=True)
        ident = os.path.join(self.directory, "identity.txt")
        if not os.path.exists(ident):
            with open(ident, "w") as f:
                f.write(self.identity)
        texts = self._unsaved
        emb = np.stack([self._mem[(self.identity, t)][0] for t in texts])
        mask = np.stack([self._mem[(self.identity, t)][1] for t in texts])
        path = os.path.join(self.directory, f"part-{uuid.uuid4().hex}.npz")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, texts=np.asarray(texts, dtype=np.str_), emb=emb, mask=mask)
        os.replace(tmp, path)
        self._unsaved = []
        return path

    def _load(self):
        ident = os.path.join(self.directory, "identity.txt")
        if not os.path.exists(ident):
            return
        with open(ident) as f:
            stored = f.read()
        if stored != self.identity:
            raise ValueError(
                f"text-embedding cache {self.directory} holds encoder {stored!r}, not "
                f"{self.identity!r}"
            )
        l, d = self.encoder.max_length, self.encoder.dim
        for path in sorted(glob.glob(os.path.join(self.directory, "part-*.npz"))):
            with np.load(path) as z:
                if z["emb"].shape[1:] != (l, d):
                    raise ValueError(f"{path}: embeddings {z['emb'].shape[1:]}, expected {(l, d)}")
                for t, e, m in zip(z["texts"].tolist(), z["emb"], z["mask"]):
                    self._mem[(self.identity, t)] = (e, m)


def encode_unique(cache: EmbeddingCache, texts: Sequence[str]):
    """(table f32[u l dim], mask bool[u l], index i32[n]) over the distinct `texts`, with
    table[index[i]] the embedding of texts[i]. Saves new entries when the cache has a directory."""
    unique = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(unique)}
    table, mask = cache(unique)
    cache.flush()
    return table, mask, np.asarray([row[t] for t in texts], np.int32)

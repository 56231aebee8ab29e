"""Offline cache of VAE latents, caption token ids and text embeddings as array_record shards.

Written once by `python -m sora_jax.cache_latents` (so the VAE and a frozen text encoder cost
nothing during DiT training), read by the 'latent_cache' source. Record i holds source example
i: {'latent': f32[t h w c] (the VAE posterior mean, not normalised), 'caption_ids': i32[lt],
'caption_mask': bool[lt], 'index': i} and, for a frozen text encoder (bert / t5 / clip), the
caption's hidden states 'caption_emb' f[lt dim] in text.dtype (masked by caption_mask); or an
empty record where the example was bad (so record indices stay the source's).
`cache_info.json` holds the count, the latent mean / std the trainer normalises with, and what
the cache was made from (VAE, text encoder identity).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module

INFO = "cache_info.json"
SHARD_PATTERN = "latents-{:05d}.array_record"


# npz has no bfloat16: such embeddings are stored as their uint16 bits under this key.
_BF16_KEY = "caption_emb_bf16"


def encode_record(latent, caption_ids, caption_mask, index: int, caption_emb=None) -> bytes:
    """caption_emb: f32 or bf16[lt dim] (a frozen encoder's), stored in its own dtype."""
    arrays = dict(
        latent=np.asarray(latent, np.float32),
        caption_ids=np.asarray(caption_ids, np.int32),
        caption_mask=np.asarray(caption_mask, bool),
        index=np.int64(index),
    )
    if caption_emb is not None:
        emb = np.asarray(caption_emb)
        if emb.dtype == jnp.bfloat16:
            arrays[_BF16_KEY] = emb.view(np.uint16)
        else:
            arrays["caption_emb"] = emb.astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_RECORD = b""


def decode_record(data: bytes) -> dict | None:
    """The record's arrays ('caption_emb' as f32), or None for a bad example's empty record."""
    if not data:
        return None
    with np.load(io.BytesIO(data)) as z:
        out = {k: z[k] for k in z.files}
    if _BF16_KEY in out:
        out["caption_emb"] = out.pop(_BF16_KEY).view(jnp.bfloat16).astype(np.float32)
    return out


class Writer:
    """Writes records in order into shards of `shard_size`, then `cache_info.json`."""

    def __init__(self, directory: str | os.PathLike, shard_size: int = 1024):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("latents-*.array_record"):
            old.unlink()
        self.shard_size, self.count, self._writer = shard_size, 0, None

    def add(self, record: bytes):
        if self.count % self.shard_size == 0:
            self._close_shard()
            path = self.directory / SHARD_PATTERN.format(self.count // self.shard_size)
            self._writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
        self._writer.write(record)
        self.count += 1

    def _close_shard(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self, info: dict):
        self._close_shard()
        info = dict(info, num_examples=self.count)
        (self.directory / INFO).write_text(json.dumps(info, indent=2))
        return info


def open_cache(directory: str | os.PathLike):
    """(random-access source of record bytes, info dict) of a written cache."""
    directory = Path(directory)
    info_path = directory / INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"no latent cache in {directory} ({INFO} missing): write one with "
            "python -m sora_jax.cache_latents --config=... --workdir=..."
        )
    info = json.loads(info_path.read_text())
    paths = sorted(str(p) for p in directory.glob("latents-*.array_record"))
    source = grain.sources.ArrayRecordDataSource(paths)
    if len(source) != info["num_examples"]:
        raise ValueError(
            f"latent cache {directory}: {len(source)} records but {INFO} says "
            f"{info['num_examples']} (an interrupted write? write it again)"
        )
    return source, info

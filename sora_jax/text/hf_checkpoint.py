"""Reading local Hugging Face checkpoint folders: config.json and (sharded) safetensors weights,
mapped onto a Linen params tree whose expected shapes come from the module itself.

Only the tensors a mapping asks for are read (so a full T5 checkpoint's decoder, or a CLIP
model's vision tower, is never loaded). bf16 checkpoints load too (read through JAX).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Linen param path -> (HF tensor names to try, transpose?)
NameFn = Callable[[tuple[str, ...]], tuple[Sequence[str], bool]]


def read_config(folder: str, section: str | None = None) -> dict:
    """`folder/config.json` as a dict; with `section` (e.g. 'text_config' of a full CLIPModel)
    that nested dict when present."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model config not found: {path}")
    with open(path) as f:
        raw = json.load(f)
    if section and isinstance(raw.get(section), dict):
        return {**raw[section], "_parent_model_type": raw.get("model_type")}
    return raw


def safetensors_files(folder: str) -> list[str]:
    """The weight files of a folder: model.safetensors, the shards named by
    model.safetensors.index.json, or else every *.safetensors file."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, n) for n in names]
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return files


class TensorReader:
    """Lazy name -> array access over several safetensors files."""

    def __init__(self, files: Sequence[str]):
        from safetensors import safe_open

        self.files = list(files)
        self._where: dict[str, Any] = {}
        self._handles = []
        for path in self.files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"safetensors file not found: {path}")
            h = safe_open(path, framework="flax")
            self._handles.append(h)
            for k in h.keys():
                self._where[k] = h

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self._where[name].get_tensor(name))


def load_params(
    module: nn.Module,
    example_args: tuple,
    reader: TensorReader,
    hf_names: NameFn,
    dtype=jnp.float32,
) -> dict:
    """Params tree for `module` (plain `dtype` arrays) from HF tensors.

    Expected shapes come from `jax.eval_shape(module.init, ...)`. Linear weights ([out, in] in
    PyTorch) are transposed when `hf_names` says so. Raises ValueError naming the missing tensor
    (and the names tried) or the tensor whose shape does not match.
    """
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_args)["params"])
    abstract = nn.meta.unbox(abstract)
    where = ", ".join(os.path.basename(f) for f in reader.files)

    def load(path, leaf):
        keys = tuple(getattr(p, "key", str(p)) for p in path)
        candidates, transpose = hf_names(keys)
        name = next((c for c in candidates if c in reader), None)
        if name is None:
            raise ValueError(
                f"{where}: missing weight {candidates[0]!r} (tried {list(candidates)}) "
                f"for param {'/'.join(keys)}"
            )
        arr = reader.get(name)
        if transpose:
            arr = arr.T
        if arr.shape != leaf.shape:
            got = arr.T.shape if transpose else arr.shape
            want = tuple(reversed(leaf.shape)) if transpose else leaf.shape
            raise ValueError(f"{where}: weight {name!r} has shape {got}, expected {want}")
        return jnp.asarray(arr, dtype=dtype)

    return jax.tree_util.tree_map_with_path(load, abstract)


def with_prefixes(name: str, prefixes: Sequence[str]) -> list[str]:
    return [p + name for p in prefixes]


def config_value(config: Mapping[str, Any], key: str, default=None, *, required=False):
    if key in config and config[key] is not None:
        return config[key]
    if required:
        raise ValueError(f"model config lacks {key!r}")
    return default


_FINGERPRINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)


def fingerprint(folder: str, samples: int = 16, chunk: int = 1 << 16, weights: bool = True) -> str:
    """Content hash (hex) of a checkpoint folder: config and tokenizer files, and each
    safetensors file's size, header and `samples` evenly spaced chunks of its data. Cheap for
    multi-GB files; any retraining or fine-tuning changes the sampled bytes. Moving or copying
    the folder keeps the hash. weights=False: config and tokenizer files only."""
    import hashlib
    import struct

    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    for path in safetensors_files(folder) if weights else []:
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}:{size}".encode())
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(header_len))
            start = 8 + header_len
            span = max(size - start - chunk, 0)
            for i in range(samples):
                f.seek(start + span * i // max(samples - 1, 1))
                h.update(f.read(chunk))
    return h.hexdigest()

"""Wan VAE weights: diffusers ``AutoencoderKLWan`` folders <-> ``sora_jax.models.wan_vae``.

A diffusers VAE folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or
shards listed in ``diffusion_pytorch_model.safetensors.index.json``), float32 or bfloat16.
``load_folder`` reads it with ``safetensors`` in numpy mode (no torch), maps and shape-checks
every tensor, and returns ``(WanVAE, params)``; ``save_folder`` writes the same layout back
(``to_state_dict(from_state_dict(sd)) == sd`` bit for bit, in the file's dtype).

Key mapping. The Flax modules carry diffusers' module names, list indices joined with ``_``, so
the mapping is one rule per path segment plus one layout per kind of leaf:

    flax path segment              diffusers key segment
    down_blocks_3, resnets_0, ...  down_blocks.3, resnets.0, ...   (``_<n>`` -> ``.<n>``)
    resample                       resample.1                      (index in nn.Sequential)
    kernel / bias / gamma          weight / bias / gamma

    flax leaf                                  diffusers tensor             layout
    .../<conv3d>/kernel  f32[kt kh kw ci co]   ....weight [co ci kt kh kw]  transpose (4,3,0,1,2)
    .../resample/kernel  f32[kh kw ci co]      ....resample.1.weight [co ci kh kw]  (3,2,0,1)
    .../to_qkv|proj/kernel  f32[ci co]         ....weight [co ci 1 1]       transpose + 1x1
    .../norm/gamma  f32[c]  (attention)        ....norm.gamma [c 1 1]       reshape
    .../norm1|norm2|norm_out/gamma  f32[c]     ....gamma [c 1 1 1]          reshape
    .../bias  f32[c]                           ....bias [c]                 as is

For example ``encoder/down_blocks_3/time_conv/kernel`` is ``encoder.down_blocks.3.time_conv.weight``
and ``decoder/up_blocks_0/upsamplers_0/resample/kernel`` is
``decoder.up_blocks.0.upsamplers.0.resample.1.weight``. ``weight_table(model)`` lists every
entry for a model; the encoder's 2.1 ``down_blocks`` are numbered flat, as in diffusers (the
residual blocks and the resampler of each level in turn), the 2.2 ones per level.
A tensor missing from the folder, one the model does not have, or one of the wrong shape is a
ValueError naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import flax
import flax.linen as nn
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for bf16 safetensors files)
import numpy as np
from safetensors import safe_open
import safetensors.numpy

from sora_jax.models import wan_vae

__all__ = [
    "Entry",
    "config_from_diffusers",
    "config_to_diffusers",
    "diffusers_key",
    "weight_table",
    "from_state_dict",
    "to_state_dict",
    "read_state_dict",
    "load_folder",
    "save_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
DIFFUSERS_VERSION = "0.42.1"  # written to config.json; diffusers only warns on a mismatch

# config.json field -> WanVAEConfig field
_CONFIG_FIELDS = {
    "base_dim": "base_dim",
    "decoder_base_dim": "decoder_base_dim",
    "z_dim": "z_dim",
    "dim_mult": "dim_mult",
    "num_res_blocks": "num_res_blocks",
    "attn_scales": "attn_scales",
    "temperal_downsample": "temporal_downsample",
    "dropout": "dropout",
    "latents_mean": "latents_mean",
    "latents_std": "latents_std",
    "is_residual": "is_residual",
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "patch_size": "patch_size",
    "scale_factor_temporal": "scale_factor_temporal",
    "scale_factor_spatial": "scale_factor_spatial",
}
_TUPLE_FIELDS = {"dim_mult", "attn_scales", "temporal_downsample", "latents_mean", "latents_std"}


def config_from_diffusers(d: dict) -> wan_vae.WanVAEConfig:
    """``config.json`` of an ``AutoencoderKLWan`` -> ``WanVAEConfig`` (fields left out take
    diffusers' defaults; an unknown field is a ValueError naming it)."""
    if d.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise ValueError(f"config.json: _class_name {d['_class_name']!r} is not AutoencoderKLWan")
    kwargs = {}
    for key, value in d.items():
        if key.startswith("_"):
            continue
        if key not in _CONFIG_FIELDS:
            raise ValueError(f"config.json: unknown AutoencoderKLWan field {key!r}")
        field = _CONFIG_FIELDS[key]
        kwargs[field] = tuple(value) if field in _TUPLE_FIELDS else value
    if "latents_mean" not in kwargs or "latents_std" not in kwargs:
        # diffusers' defaults are the 16-channel Wan 2.1 statistics.
        defaults = _diffusers_latent_stats()
        kwargs.setdefault("latents_mean", defaults[0])
        kwargs.setdefault("latents_std", defaults[1])
    return wan_vae.WanVAEConfig(**kwargs)


def _diffusers_latent_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508)
    mean += (0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
    std = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743)
    std += (3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
    return mean, std


def config_to_diffusers(cfg: wan_vae.WanVAEConfig) -> dict:
    """``WanVAEConfig`` -> the ``config.json`` dict diffusers' ``AutoencoderKLWan`` reads."""
    out = {"_class_name": "AutoencoderKLWan", "_diffusers_version": DIFFUSERS_VERSION}
    for key, field in _CONFIG_FIELDS.items():
        value = getattr(cfg, field)
        out[key] = list(value) if field in _TUPLE_FIELDS else value
    return out


# ---- the table -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: Flax ``path`` and shape, diffusers ``key`` and shape, and the ``kind``
    of layout change between them (the VAE's ``conv3d``, ``conv2d``, ``linear``, ``gamma``,
    ``bias``; the transformer's ``patch``, ``linear``, ``table``, ``vector``)."""

    path: tuple[str, ...]
    key: str
    flax_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    kind: str


def diffusers_key(path: tuple[str, ...]) -> str:
    """The diffusers state-dict key of the Flax param at ``path``."""
    *mods, leaf = path
    parts = []
    for seg in mods:
        if seg == "resample":
            parts.append("resample.1")
        else:
            parts.append(re.sub(r"_(\d+)$", r".\1", seg))
    parts.append({"kernel": "weight", "bias": "bias", "gamma": "gamma"}[leaf])
    return ".".join(parts)


def _entry(path: tuple[str, ...], shape: tuple[int, ...]) -> Entry:
    leaf = path[-1]
    if leaf == "bias":
        return Entry(path, diffusers_key(path), shape, shape, "bias")
    if leaf == "gamma":
        # The attention norm normalises images (c, 1, 1), the others videos (c, 1, 1, 1).
        ones = (1, 1) if path[-2] == "norm" else (1, 1, 1)
        return Entry(path, diffusers_key(path), shape, shape + ones, "gamma")
    if len(shape) == 5:
        kt, kh, kw, ci, co = shape
        return Entry(path, diffusers_key(path), shape, (co, ci, kt, kh, kw), "conv3d")
    if len(shape) == 4:
        kh, kw, ci, co = shape
        return Entry(path, diffusers_key(path), shape, (co, ci, kh, kw), "conv2d")
    if len(shape) == 2:
        ci, co = shape
        return Entry(path, diffusers_key(path), shape, (co, ci, 1, 1), "linear")
    raise ValueError(f"param {'/'.join(path)} of shape {shape} has no diffusers layout")


def weight_table(model: wan_vae.WanVAE) -> list[Entry]:
    """Every parameter of ``model`` with its diffusers key and shapes (nothing computed)."""
    shapes = flax.traverse_util.flatten_dict(nn.unbox(wan_vae.param_shapes(model)))
    return [_entry(path, tuple(s.shape)) for path, s in sorted(shapes.items())]


def _to_torch(value: np.ndarray, e: Entry) -> np.ndarray:
    if e.kind == "conv3d":
        value = value.transpose(4, 3, 0, 1, 2)
    elif e.kind == "conv2d":
        value = value.transpose(3, 2, 0, 1)
    elif e.kind == "linear":
        value = value.T
    return np.ascontiguousarray(value.reshape(e.torch_shape))


def _from_torch(value: np.ndarray, e: Entry) -> np.ndarray:
    if e.kind == "conv3d":
        return value.transpose(2, 3, 4, 1, 0)
    if e.kind == "conv2d":
        return value.transpose(2, 3, 1, 0)
    if e.kind == "linear":
        return value.reshape(e.torch_shape[:2]).T
    return value.reshape(e.flax_shape)


def params_from_table(tensors, table, from_torch, dtype, what: str, ignored=None):
    """``{diffusers key: array}`` -> Flax params (``dtype``) of the parameters in ``table``
    (``Entry`` list), each converted by ``from_torch(value, entry)``.

    ``tensors`` is a mapping, or anything with ``keys()`` and ``[key]`` (read lazily). Every
    parameter must be present with its exact shape and no tensor may be left over (but those
    ``ignored`` matches); otherwise one ValueError lists each missing, unexpected or
    mis-shaped key. ``what`` names the weights in it, e.g. ``('Wan VAE', 'AutoencoderKLWan')``.
    """
    check_tensors(tensors, table, what, ignored)
    params = {e.path: jnp.asarray(from_torch(np.asarray(tensors[e.key]), e), dtype) for e in table}
    return flax.traverse_util.unflatten_dict(params)


def check_tensors(tensors, table, what: str, ignored=None) -> None:
    """One ValueError listing every tensor of ``table`` that ``tensors`` lacks or holds with
    another shape, and every tensor it holds beyond them (but those ``ignored`` matches);
    shapes are read from the files' headers (``shape_of``) where it can, nothing loaded."""
    keys = set(tensors.keys())
    shape_of = getattr(tensors, "shape_of", lambda k: tuple(tensors[k].shape))
    problems = []
    for e in table:
        if e.key not in keys:
            problems.append(f"missing tensor {e.key!r} (shape {e.torch_shape})")
        elif (shape := tuple(shape_of(e.key))) != e.torch_shape:
            problems.append(f"tensor {e.key!r} has shape {shape}, expected {e.torch_shape}")
    label, class_name = what
    left = keys - {e.key for e in table}
    unexpected = sorted(k for k in left if not (ignored and ignored.search(k)))
    problems += [f"unexpected tensor {k!r} (not in this {class_name})" for k in unexpected]
    if problems:
        raise ValueError(
            f"{label} weights do not match the config ({len(problems)} problem(s)): "
            + "; ".join(problems[:20])
        )


def from_state_dict(tensors, model: wan_vae.WanVAE, dtype=jnp.float32):
    """``{diffusers key: array}`` -> ``model``'s Flax params (``dtype``, default float32);
    see `params_from_table` for what is checked."""
    return params_from_table(
        tensors, weight_table(model), _from_torch, dtype, ("Wan VAE", "AutoencoderKLWan")
    )


def to_state_dict(params, model: wan_vae.WanVAE, dtype=np.float32) -> dict[str, np.ndarray]:
    """``model``'s Flax params -> ``{diffusers key: array in PyTorch layout}`` of ``dtype``
    (``np.float32`` or ``ml_dtypes.bfloat16``)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.unbox(params)))
    table = weight_table(model)
    if set(flat) != {e.path for e in table}:
        extra = sorted("/".join(p) for p in set(flat) ^ {e.path for e in table})
        raise ValueError(f"params do not match the model's parameters: {extra[:10]}")
    return {e.key: _to_torch(np.asarray(flat[e.path]).astype(dtype), e) for e in table}


# ---- folders -------------------------------------------------------------------------------------


class _LazyTensors:
    """The tensors of one or several safetensors files, read on access (numpy, no torch)."""

    def __init__(self, files: dict[str, str]):
        self._file_of = files  # key -> path

    def keys(self):
        return self._file_of.keys()

    def __getitem__(self, key: str) -> np.ndarray:
        with safe_open(self._file_of[key], framework="np") as f:
            return f.get_tensor(key)

    def shape_of(self, key: str) -> tuple[int, ...]:
        """The tensor's shape, from its file's header."""
        with safe_open(self._file_of[key], framework="np") as f:
            return tuple(f.get_slice(key).get_shape())

    def read_slice(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        """``tensor[index]``, reading only that part of the file."""
        with safe_open(self._file_of[key], framework="np") as f:
            return f.get_slice(key)[index]


def read_state_dict(folder: str) -> _LazyTensors:
    """The tensors of a diffusers model folder (one file, or shards with an index), lazily."""
    index = os.path.join(folder, INDEX_NAME)
    single = os.path.join(folder, WEIGHTS_NAME)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {k: os.path.join(folder, v) for k, v in weight_map.items()}
        for path in sorted(set(files.values())):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{INDEX_NAME} names {path}, which does not exist")
        # The index must describe the shards exactly: a tensor it leaves out is never read.
        for path in sorted(set(files.values())):
            with safe_open(path, framework="np") as f:
                for k in f.keys():
                    if files.get(k) != path:
                        raise ValueError(
                            f"{path} holds tensor {k!r}, not listed for it in the index"
                        )
        return _LazyTensors(files)
    if os.path.exists(single):
        with safe_open(single, framework="np") as f:
            return _LazyTensors({k: single for k in f.keys()})
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def load_folder(folder: str, dtype=jnp.float32, compute_dtype=jnp.float32):
    """A diffusers ``AutoencoderKLWan`` folder -> ``(WanVAE, params)``; params in ``dtype``
    (float32 by default, also for a bf16 file), compute in ``compute_dtype``."""
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        cfg = config_from_diffusers(json.load(f))
    model = wan_vae.WanVAE(cfg, dtype=compute_dtype, param_dtype=dtype)
    return model, from_state_dict(read_state_dict(folder), model, dtype)


def save_folder(folder: str, model: wan_vae.WanVAE, params, dtype=np.float32) -> None:
    """Writes ``config.json`` and ``diffusion_pytorch_model.safetensors`` (``dtype``) that
    diffusers' ``AutoencoderKLWan.from_pretrained`` and ``load_folder`` read."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(config_to_diffusers(model.config), f, indent=2, sort_keys=True)
    tensors = to_state_dict(params, model, dtype)
    safetensors.numpy.save_file(
        tensors, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"}
    )

"""Wan transformer weights: diffusers ``WanTransformer3DModel`` folders <->
``sora_jax.models.wan_transformer``.

A diffusers ``transformer/`` folder holds ``config.json`` and
``diffusion_pytorch_model.safetensors`` (or shards listed in
``diffusion_pytorch_model.safetensors.index.json``), float32 or bfloat16. ``load_transformer``
reads it with ``safetensors`` in numpy mode (no torch), maps and shape-checks every tensor and
returns ``(WanTransformer, params)``; ``export_transformer`` writes a folder diffusers'
``WanTransformer3DModel.from_pretrained`` loads (one file or shards), bit-exact in the file's
dtype (``to_state_dict(from_state_dict(sd)) == sd``).

Key mapping. The Flax modules carry diffusers' module names, so the mapping is one rule per path
segment (``_RENAMES``) plus one layout per kind of leaf:

    flax path segment                  diffusers key segment
    blocks_7                           blocks.7                  (list index)
    attn1/to_out, attn2/to_out         attn1.to_out.0, ...       (index in its ModuleList)
    ffn/proj_in, ffn/proj_out          ffn.net.0.proj, ffn.net.2 (diffusers' FeedForward)
    kernel / scale / bias              weight / weight / bias

    flax leaf                                    diffusers tensor                   kind
    patch_embedding/kernel f32[pt*ph*pw*ci d]    patch_embedding.weight [d ci pt ph pw]  patch
    .../kernel f32[in out]                       ....weight [out in]                     linear
    blocks_i/scale_shift_table f32[6 d]          blocks.i.scale_shift_table [1 6 d]      table
    scale_shift_table f32[2 d]                   scale_shift_table [1 2 d]               table
    .../bias, .../norm_q/scale, norm2/scale ...  ....bias, ....norm_q.weight, ...        vector

The patch embedding is diffusers' Conv3d with stride = kernel, i.e. a linear map of each
flattened ``(pt ph pw c)`` patch (the packing's token layout). For example
``blocks_0/ffn/proj_in/kernel`` is ``blocks.0.ffn.net.0.proj.weight`` (transposed) and
``condition_embedder/text_embedder/linear_2/bias`` is
``condition_embedder.text_embedder.linear_2.bias``. ``weight_table(config)`` lists every entry.
A tensor missing from the folder, one the model does not have, or one of the wrong shape is a
ValueError naming the key (diffusers' ignored ``norm_added_q`` tensors excepted).
"""

from __future__ import annotations

import json
import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for bf16 safetensors files)
import numpy as np
import safetensors.numpy

from sora_jax.models import wan_transformer as wt
from sora_jax.models.wan_vae_weights import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    Entry,
    check_tensors,
    params_from_table,
    read_state_dict,
)

__all__ = [
    "Entry",
    "diffusers_key",
    "weight_table",
    "from_state_dict",
    "to_state_dict",
    "read_state_dict",
    "load_transformer",
    "export_transformer",
]

# (parent segment, flax segment) -> diffusers segment; None: any parent.
_RENAMES = {
    (None, "kernel"): "weight",
    (None, "scale"): "weight",
    (None, "to_out"): "to_out.0",
    ("ffn", "proj_in"): "net.0.proj",
    ("ffn", "proj_out"): "net.2",
}
# Tensors diffusers itself skips when loading (``_keys_to_ignore_on_load_unexpected``).
_IGNORED = re.compile(r"norm_added_q")


def diffusers_key(path: tuple[str, ...]) -> str:
    """The diffusers state-dict key of the Flax param at ``path``."""
    parts = []
    for i, seg in enumerate(path):
        parent = path[i - 1] if i else None
        renamed = _RENAMES.get((parent, seg), _RENAMES.get((None, seg)))
        parts.append(renamed or re.sub(r"^blocks_(\d+)$", r"blocks.\1", seg))
    return ".".join(parts)


def _entry(path: tuple[str, ...], shape: tuple[int, ...], cfg: wt.WanTransformerConfig) -> Entry:
    key = diffusers_key(path)
    if path == ("patch_embedding", "kernel"):
        pt, ph, pw = cfg.patch_size
        return Entry(path, key, shape, (shape[1], cfg.in_channels, pt, ph, pw), "patch")
    if path[-1] == "kernel":
        return Entry(path, key, shape, shape[::-1], "linear")
    if path[-1] == "scale_shift_table":
        return Entry(path, key, shape, (1, *shape), "table")
    if len(shape) == 1:
        return Entry(path, key, shape, shape, "vector")
    raise ValueError(f"param {'/'.join(path)} of shape {shape} has no diffusers layout")


def weight_table(config: wt.WanTransformerConfig) -> list[Entry]:
    """Every parameter of the model of ``config`` with its diffusers key and shapes (nothing
    computed)."""
    shapes = wt.param_shapes(wt.WanTransformer(config))
    flat = flax.traverse_util.flatten_dict(nn.unbox(shapes))
    return [_entry(path, tuple(s.shape), config) for path, s in sorted(flat.items())]


def _to_torch(value: np.ndarray, e: Entry) -> np.ndarray:
    if e.kind == "patch":
        d, c, pt, ph, pw = e.torch_shape
        value = value.reshape(pt, ph, pw, c, d).transpose(4, 3, 0, 1, 2)
    elif e.kind == "linear":
        value = value.T
    return np.ascontiguousarray(value.reshape(e.torch_shape))


def _from_torch(value: np.ndarray, e: Entry) -> np.ndarray:
    if e.kind == "patch":
        return value.transpose(2, 3, 4, 1, 0).reshape(e.flax_shape)
    if e.kind == "linear":
        return value.T
    return value.reshape(e.flax_shape)


def _config_of(config) -> wt.WanTransformerConfig:
    return config.config if isinstance(config, wt.WanTransformer) else config


def from_state_dict(tensors, config, dtype=jnp.float32):
    """``{diffusers key: array}`` -> Flax params (``dtype``, default float32) of the model of
    ``config`` (a ``WanTransformerConfig`` or a ``WanTransformer``); see
    `wan_vae_weights.params_from_table` for what is checked."""
    table = weight_table(_config_of(config))
    what = ("Wan transformer", wt.CLASS_NAME)
    return params_from_table(tensors, table, _from_torch, dtype, what, ignored=_IGNORED)


def to_state_dict(params, config, dtype=np.float32) -> dict[str, np.ndarray]:
    """Flax params -> ``{diffusers key: array in PyTorch layout}`` of ``dtype`` (``np.float32``
    or ``ml_dtypes.bfloat16``)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.unbox(params)))
    table = weight_table(_config_of(config))
    if set(flat) != {e.path for e in table}:
        extra = sorted("/".join(p) for p in set(flat) ^ {e.path for e in table})
        raise ValueError(f"params do not match the model's parameters: {extra[:10]}")
    return {e.key: _to_torch(np.asarray(flat[e.path]).astype(dtype), e) for e in table}


# ---- folders -------------------------------------------------------------------------------------


def load_transformer(folder: str, dtype=jnp.float32, compute_dtype=jnp.float32, **fields):
    """A diffusers ``transformer/`` folder -> ``(WanTransformer, params)``: params in ``dtype``
    (float32 by default, also for a bf16 file), compute in ``compute_dtype``; ``fields`` go to
    the module (``attention_impl``, ``attention_blocks``, ``attention_shard``)."""
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        model = wt.WanTransformer.from_diffusers_config(
            json.load(f), dtype=compute_dtype, param_dtype=dtype, **fields
        )
    return model, from_state_dict(read_state_dict(folder), model.config, dtype)


def _read_part(tensors, e: Entry, index: tuple[slice, ...]) -> np.ndarray:
    """The part ``index`` (in the Flax layout) of parameter ``e``, read from the files."""
    if e.kind == "linear":  # Flax [in, out] is torch [out, in] transposed
        return tensors.read_slice(e.key, index[::-1]).T
    if e.kind == "vector":
        return tensors.read_slice(e.key, index)
    if e.kind == "table":  # torch [1, 6, dim]
        return tensors.read_slice(e.key, (slice(None), *index))[0]
    return _from_torch(np.asarray(tensors[e.key]), e)[index]  # the small patch embedding


def load_sharded(folder: str, target):
    """The weights of the diffusers ``transformer/`` folder as the params ``target`` describes
    (arrays or ``jax.ShapeDtypeStruct`` leaves with a ``sharding``, e.g. a train state's):
    each process reads from the safetensors files only the slices its devices hold, so no
    host holds the whole model. Keys and shapes are checked first (one ValueError naming each
    problem); the folder's config must build the same param tree as ``target``."""
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        cfg = wt.WanTransformerConfig.from_diffusers(json.load(f))
    tensors = read_state_dict(folder)
    table = weight_table(cfg)
    check_tensors(tensors, table, ("Wan transformer", wt.CLASS_NAME), ignored=_IGNORED)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.unbox(target)))
    if set(flat) != {e.path for e in table}:
        extra = sorted("/".join(p) for p in set(flat) ^ {e.path for e in table})
        raise ValueError(
            f"{folder}: its transformer's params differ from the model's: {extra[:10]}"
        )
    out = {}
    for e in table:
        want = flat[e.path]
        if tuple(want.shape) != e.flax_shape:
            raise ValueError(
                f"{folder}: {e.key} is {e.flax_shape} (Flax layout), the model's {want.shape}"
            )
        out[e.path] = jax.make_array_from_callback(
            e.flax_shape,
            want.sharding,
            lambda index, e=e, dtype=want.dtype: _read_part(tensors, e, index).astype(dtype),
        )
    return flax.traverse_util.unflatten_dict(out)


def _shards(tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
    """Consecutive keys (sorted) grouped into shards of at most ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own)."""
    shards, size = [{}], 0
    for key in sorted(tensors):
        n = tensors[key].nbytes
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += n
    return shards


def export_transformer(
    params, config, folder: str, dtype=np.float32, max_shard_bytes: int | None = None
) -> None:
    """Writes ``config.json`` and the weights (``dtype``) of ``config`` (a
    ``WanTransformerConfig`` or a ``WanTransformer``) to ``folder``: one
    ``diffusion_pytorch_model.safetensors``, or with ``max_shard_bytes`` numbered shards and
    their ``.index.json``, as diffusers' ``save_pretrained`` names them."""
    cfg = _config_of(config)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(cfg.to_diffusers(), f, indent=2, sort_keys=True)
    tensors = to_state_dict(params, cfg, dtype)
    meta = {"format": "pt"}
    shards = _shards(tensors, max_shard_bytes) if max_shard_bytes else [tensors]
    if len(shards) == 1:
        safetensors.numpy.save_file(shards[0], os.path.join(folder, WEIGHTS_NAME), metadata=meta)
        return
    stem, ext = WEIGHTS_NAME.rsplit(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        safetensors.numpy.save_file(shard, os.path.join(folder, name), metadata=meta)
        weight_map.update({k: name for k in shard})
    index = {
        "metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with open(os.path.join(folder, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2)

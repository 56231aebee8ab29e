"""VAE weights in safetensors files: a documented, diffusers-style key layout for ``CausalVAE``.

Supported architecture family: causal 3D-conv video VAEs with the structure of
``sora_jax.models.vae.CausalVAE`` (conv_in, per level ``num_res_blocks`` residual blocks of
group norm + causal 3x3x3 convs and a down/upsampler, a mid residual block, norm_out + conv_out;
optional 1x1x1 shortcut convs where a block changes width), stored with PyTorch-style names and
layouts. This is the layout of our own architecture written in the naming convention of
diffusers' autoencoders, so checkpoints can be exchanged with PyTorch code that builds the same
network; it is NOT a promise that another project's VAE (e.g. diffusers'
``AutoencoderKLCogVideoX``) loads: its layers differ (our downsampler folds 2x2(x2) pixels into
channels before its conv, our shortcuts are parameter-free), and a mismatch fails loudly with the
offending key rather than loading silently.

Key mapping (``L = len(channel_mults)`` levels; decoder blocks are numbered from the coarsest,
as in diffusers' ``up_blocks``):

    flax params path                              safetensors name
    encoder/conv_in/{kernel,bias}                 encoder.conv_in.conv.{weight,bias}
    encoder/down{l}_res{i}/norm1/{scale,bias}     encoder.down_blocks.{l}.resnets.{i}.norm1.{weight,bias}
    encoder/down{l}_res{i}/conv1/...              encoder.down_blocks.{l}.resnets.{i}.conv1.conv.*
    (norm2, conv2 likewise; skip ->)              ....resnets.{i}.conv_shortcut.conv.*
    encoder/down{l}_sample/conv/...               encoder.down_blocks.{l}.downsamplers.0.conv.conv.*
    encoder/mid_res/...                           encoder.mid_block.resnets.0.*
    encoder/mid_attn/norm/{scale,bias}            encoder.mid_block.attentions.0.group_norm.{weight,bias}
    encoder/mid_attn/to_{q,k,v}/{kernel,bias}     encoder.mid_block.attentions.0.to_{q,k,v}.{weight,bias}
    encoder/mid_attn/to_out/{kernel,bias}         encoder.mid_block.attentions.0.to_out.0.{weight,bias}
    encoder/norm_out/{scale,bias}                 encoder.conv_norm_out.{weight,bias}
    encoder/conv_out/...                          encoder.conv_out.conv.*
    decoder/conv_in, mid_res, norm_out, conv_out  decoder.{conv_in.conv, mid_block.resnets.0, conv_norm_out, conv_out.conv}.*
    decoder/mid_attn/...                          decoder.mid_block.attentions.0.* (as the encoder's)
    decoder/up{l}_res{i}/...                      decoder.up_blocks.{L-1-l}.resnets.{i}.*
    decoder/up{l}_sample/conv/...                 decoder.up_blocks.{L-1-l}.upsamplers.0.conv.conv.*

Layouts: conv ``weight`` is PyTorch's ``(out, in, kt, kh, kw)``, the Flax ``kernel`` is
``(kt, kh, kw, in, out)`` (a transpose: both are cross-correlations, nothing is flipped);
the attention projections are linear layers: PyTorch ``(out, in)``, Flax ``kernel`` ``(in, out)``;
group-norm ``weight`` is the Flax ``scale``; biases are ``(out,)``. Tensors are read as float32.
"""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from sora_jax.models import vae as vae_lib

__all__ = ["external_name", "to_external", "from_external", "save", "load", "param_template"]

_TORCH_FROM_FLAX = (4, 3, 0, 1, 2)  # (kt kh kw in out) -> (out in kt kh kw)
_FLAX_FROM_TORCH = (2, 3, 4, 1, 0)
_RES_SUB = {
    "norm1": "norm1",
    "norm2": "norm2",
    "conv1": "conv1.conv",
    "conv2": "conv2.conv",
    "skip": "conv_shortcut.conv",
}
_ATTN_SUB = {
    "norm": "group_norm",
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out": "to_out.0",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _torch_axes(ndim: int) -> tuple[int, ...]:
    """Axis order taking a Flax kernel to PyTorch's layout (conv 5-D or linear 2-D)."""
    return _TORCH_FROM_FLAX if ndim == 5 else (1, 0)


def _flax_axes(ndim: int) -> tuple[int, ...]:
    return _FLAX_FROM_TORCH if ndim == 5 else (1, 0)


def external_name(path: tuple[str, ...], num_levels: int) -> str:
    """The safetensors name of the Flax param at ``path`` (e.g. ``('encoder', 'conv_in',
    'kernel')``); ValueError for a path outside the layout."""
    *mods, leaf = path
    if leaf not in _LEAF or len(mods) < 2 or mods[0] not in ("encoder", "decoder"):
        raise ValueError(f"param {'/'.join(path)} is not part of the CausalVAE layout")
    part, block, rest = mods[0], mods[1], mods[2:]
    name = None
    if block in ("conv_in", "conv_out") and not rest:
        name = f"{block}.conv"
    elif block == "norm_out" and not rest:
        name = "conv_norm_out"
    elif m := re.fullmatch(r"(down|up)(\d+)_res(\d+)", block):
        level = int(m[2]) if part == "encoder" else num_levels - 1 - int(m[2])
        kind = "down_blocks" if part == "encoder" else "up_blocks"
        name = f"{kind}.{level}.resnets.{m[3]}"
    elif m := re.fullmatch(r"(down|up)(\d+)_sample", block):
        level = int(m[2]) if part == "encoder" else num_levels - 1 - int(m[2])
        kind = "down_blocks.{}.downsamplers" if part == "encoder" else "up_blocks.{}.upsamplers"
        name = kind.format(level) + ".0"
    elif block == "mid_res":
        name = "mid_block.resnets.0"
    elif block == "mid_attn":
        name = "mid_block.attentions.0"
    if name is None:
        raise ValueError(f"param {'/'.join(path)} is not part of the CausalVAE layout")
    if "resnets" in name:
        if len(rest) != 1 or rest[0] not in _RES_SUB:
            raise ValueError(f"param {'/'.join(path)} is not part of the CausalVAE layout")
        name += "." + _RES_SUB[rest[0]]
    elif "attentions" in name:
        if len(rest) != 1 or rest[0] not in _ATTN_SUB:
            raise ValueError(f"param {'/'.join(path)} is not part of the CausalVAE layout")
        name += "." + _ATTN_SUB[rest[0]]
    elif "samplers" in name:
        if rest != ["conv"]:
            raise ValueError(f"param {'/'.join(path)} is not part of the CausalVAE layout")
        name += ".conv.conv"
    return f"{part}.{name}.{_LEAF[leaf]}"


def _num_levels(model: vae_lib.CausalVAE) -> int:
    return len(model.channel_mults)


def param_template(model: vae_lib.CausalVAE):
    """The model's param tree as ``jax.ShapeDtypeStruct`` leaves (no compute, no memory)."""
    x = jnp.zeros((1, 1, model.spatial_compression, model.spatial_compression, 3))
    init = lambda k: model.init({"params": k}, x, sample_posterior=False)["params"]  # noqa: E731
    return jax.eval_shape(init, jax.random.key(0))


def to_external(params, model: vae_lib.CausalVAE) -> dict[str, np.ndarray]:
    """Flax params -> ``{safetensors name: f32 array in PyTorch layout}``."""
    out = {}
    for path, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items():
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = np.ascontiguousarray(value.transpose(_torch_axes(value.ndim)))
        out[external_name(path, _num_levels(model))] = value
    return out


def from_external(tensors: dict, model: vae_lib.CausalVAE, strict: bool = True):
    """``{name: array}`` in the layout above -> the model's Flax params.

    Every param of ``model`` must be present with its exact shape (ValueError naming the key,
    its expected and found shapes otherwise); with ``strict`` unused tensors are an error too.
    """
    template = flax.traverse_util.flatten_dict(param_template(model))
    params, used, problems = {}, set(), []
    for path, spec in template.items():
        name = external_name(path, _num_levels(model))
        expected = spec.shape
        if path[-1] == "kernel":
            expected = tuple(spec.shape[i] for i in _torch_axes(len(spec.shape)))
        if name not in tensors:
            problems.append(f"missing tensor {name!r} (shape {expected}, for {'/'.join(path)})")
            continue
        value = np.asarray(tensors[name])
        used.add(name)
        if value.shape != expected:
            problems.append(
                f"tensor {name!r} has shape {value.shape}, expected {expected} "
                f"(for {'/'.join(path)}{', PyTorch layout (out, in, ...)' if path[-1] == 'kernel' else ''})"
            )
            continue
        if path[-1] == "kernel":
            value = value.transpose(_flax_axes(value.ndim))
        params[path] = jnp.asarray(value, jnp.float32)
    unused = sorted(set(tensors) - used)
    if strict and unused:
        problems.append(f"unexpected tensors (not in this CausalVAE): {unused[:10]}")
    if problems:
        raise ValueError(
            f"checkpoint does not match the CausalVAE ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:20])
        )
    return flax.traverse_util.unflatten_dict(params)


def save(path: str, params, model: vae_lib.CausalVAE) -> None:
    """Writes the params as a safetensors file in the layout above."""
    safetensors.numpy.save_file(to_external(params, model), path, metadata={"format": "sora_jax"})


def load(path: str, model: vae_lib.CausalVAE, strict: bool = True):
    """Reads a safetensors file in the layout above into the model's Flax params."""
    return from_external(safetensors.numpy.load_file(path), model, strict=strict)

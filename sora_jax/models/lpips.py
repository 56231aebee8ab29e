"""LPIPS perceptual distance (Zhang et al. 2018, "lin" variant over VGG16) in Linen, weights from
a local file.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

``f_l`` are the VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of inputs
shifted / scaled by LPIPS's fixed ImageNet constants, ``n`` normalises each pixel's feature
vector to unit length, ``w_l >= 0`` are the learned linear heads (1x1 convs, no bias). It is 0 for
identical inputs and grows with perceptual difference.

Nothing is downloaded: the weights are read from a ``.safetensors`` or ``.npz`` file
(``config.vae.perceptual.path``) with these names and PyTorch layouts, i.e. torchvision's
``vgg16().features`` state dict and the ``lpips`` package's ``vgg.pth`` heads side by side::

    features.{i}.weight  f32[co ci 3 3]   i = 0 2 5 7 10 12 14 17 19 21 24 26 28 (the convs of
    features.{i}.bias    f32[co]               torchvision's vgg16().features, in order)
    lin{l}.model.1.weight f32[1 c_l 1 1]  l = 0..4, c_l = 64 128 256 512 512

(``{k: v.numpy() for k, v in {**vgg16.features.state_dict() renamed to 'features.*',
**lpips_vgg_state_dict}.items()}`` saved with ``safetensors.numpy.save_file``.) A narrower or
shallower VGG-like stack in the same layout also loads (tests use one): ``load`` reads the widths
from the conv shapes and the blocks from the index gaps (a max pool sits between blocks), then
checks every name and shape against that architecture and names the first mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LPIPS",
    "architecture",
    "external_names",
    "load",
    "save",
    "random_weights",
    "distance_fn",
]

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)
# LPIPS's ScalingLayer: inputs in [-1, 1] -> (x - shift) / scale.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class LPIPS(nn.Module):
    """``(f32[n h w 3], f32[n h w 3]) in [-1, 1] -> f32[n]`` perceptual distances."""

    widths: Sequence[int] = VGG16_WIDTHS
    depths: Sequence[int] = VGG16_DEPTHS

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two f32[n h w 3], got {x.shape} and {y.shape}")
        n = x.shape[0]
        h = (jnp.concatenate([x, y]) - _SHIFT) / _SCALE  # one pass over both: f32[2n h w 3]
        total = 0.0
        for block, (width, depth) in enumerate(zip(self.widths, self.depths)):
            if block > 0:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
            for j in range(depth):
                h = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"conv{block}_{j}")(h))
            # Unit feature vectors; the epsilon keeps the gradient bounded at all-zero pixels.
            f = h * jax.lax.rsqrt(jnp.sum(h * h, axis=-1, keepdims=True) + 1e-10)
            diff = jnp.square(f[:n] - f[n:])  # f32[n h w c]
            lin = self.param(f"lin{block}", nn.initializers.ones, (width,), jnp.float32)
            total = total + jnp.mean(diff @ lin, axis=(1, 2))
        return total


def _conv_indices(depths: Sequence[int]) -> list[int]:
    """torchvision ``features`` indices of the convs: conv, relu per layer, a pool per block."""
    out, i = [], 0
    for block, depth in enumerate(depths):
        if block > 0:
            i += 1  # the max pool
        for _ in range(depth):
            out.append(i)
            i += 2  # conv, relu
    return out


def external_names(widths=VGG16_WIDTHS, depths=VGG16_DEPTHS) -> dict[str, tuple]:
    """{file name: (flax param path, PyTorch shape)} of the layout above."""
    names, convs, ci = {}, iter(_conv_indices(depths)), 3
    for block, (width, depth) in enumerate(zip(widths, depths)):
        for j in range(depth):
            i = next(convs)
            names[f"features.{i}.weight"] = ((f"conv{block}_{j}", "kernel"), (width, ci, 3, 3))
            names[f"features.{i}.bias"] = ((f"conv{block}_{j}", "bias"), (width,))
            ci = width
        names[f"lin{block}.model.1.weight"] = ((f"lin{block}",), (1, width, 1, 1))
    return names


def _read(path: str) -> dict[str, np.ndarray]:
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"LPIPS weights file {path!r} not found (config.vae.perceptual.path; the layout is "
            "documented in sora_jax/models/lpips.py; nothing is downloaded)"
        )
    if path.endswith(".safetensors"):
        import safetensors.numpy  # noqa: PLC0415

        return dict(safetensors.numpy.load_file(path))
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    raise ValueError(f"LPIPS weights {path!r}: expected a .safetensors or .npz file")


def architecture(tensors: dict[str, np.ndarray]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(widths, depths) of the stack in a weights dict: a conv index gap of 3 (relu, pool)
    starts a new block, 2 (relu) continues one."""
    indices = sorted(
        int(k.split(".")[1]) for k in tensors if k.startswith("features.") and k.endswith(".weight")
    )
    if not indices:
        raise ValueError("LPIPS weights: no 'features.{i}.weight' tensors")
    widths, depths, prev = [], [], None
    for i in indices:
        if prev is None or i - prev == 3:
            widths.append(int(tensors[f"features.{i}.weight"].shape[0]))
            depths.append(0)
        elif i - prev != 2:
            raise ValueError(f"LPIPS weights: conv indices {indices} are not a VGG16-like stack")
        depths[-1] += 1
        prev = i
    return tuple(widths), tuple(depths)


def load(path: str) -> tuple[LPIPS, dict]:
    """``(LPIPS module, its Linen params)`` from a weights file (layout above)."""
    tensors = _read(path)
    try:
        widths, depths = architecture(tensors)
    except ValueError as e:
        raise ValueError(f"{e} (in {path})") from None
    layout = external_names(widths, depths)
    unexpected = sorted(set(tensors) - set(layout))
    if unexpected:
        raise ValueError(f"LPIPS weights {path}: unexpected tensors {unexpected[:5]}")
    params: dict = {}
    for name, (flax_path, shape) in layout.items():
        if name not in tensors:
            raise ValueError(f"LPIPS weights {path}: missing tensor {name!r} (shape {shape})")
        a = np.asarray(tensors[name], np.float32)
        if a.shape != shape:
            raise ValueError(
                f"LPIPS weights {path}: tensor {name!r} has shape {a.shape}, expected {shape}"
            )
        if flax_path[-1] == "kernel":
            a = einops.rearrange(a, "co ci kh kw -> kh kw ci co")
        elif flax_path[0].startswith("lin"):
            a = a.reshape(-1)
        node = params
        for key in flax_path[:-1]:
            node = node.setdefault(key, {})
        node[flax_path[-1]] = jnp.asarray(a)
    return LPIPS(widths, depths), params


def save(path: str, params: dict, widths=VGG16_WIDTHS, depths=VGG16_DEPTHS) -> None:
    """Writes Linen params in the file layout (the inverse of ``load``)."""
    tensors = {}
    for name, (flax_path, shape) in external_names(widths, depths).items():
        a = params
        for key in flax_path:
            a = a[key]
        a = np.asarray(a, np.float32)
        if flax_path[-1] == "kernel":
            a = einops.rearrange(a, "kh kw ci co -> co ci kh kw")
        tensors[name] = np.ascontiguousarray(a.reshape(shape))
    if path.endswith(".npz"):
        np.savez(path, **tensors)
    else:
        import safetensors.numpy  # noqa: PLC0415

        safetensors.numpy.save_file(tensors, path)


def random_weights(seed: int, widths=VGG16_WIDTHS, depths=VGG16_DEPTHS) -> dict:
    """Randomly initialised params (the linear heads drawn >= 0, as trained ones are)."""
    model = LPIPS(tuple(widths), tuple(depths))
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    params = model.init(jax.random.PRNGKey(seed), x, x)["params"]
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(widths))
    for block, k in enumerate(keys):
        params[f"lin{block}"] = jax.random.uniform(k, params[f"lin{block}"].shape)
    return params


def distance_fn(model: LPIPS, params):
    """``(f32[b t h w 3], f32[b t h w 3]) -> f32[b t]``: LPIPS of every frame pair."""

    def fn(x, y):
        b = x.shape[0]
        flat = [einops.rearrange(v, "b t h w c -> (b t) h w c") for v in (x, y)]
        d = model.apply({"params": params}, *flat)
        return einops.rearrange(d, "(b t) -> b t", b=b)

    return fn

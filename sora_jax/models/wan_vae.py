"""The Wan 2.1 / Wan 2.2 video VAE (diffusers' ``AutoencoderKLWan``), in Flax Linen.

Layout is channels-last throughout: videos are ``f32[b t h w c]`` in [-1, 1], latents
``f32[b t' h' w' z_dim]``. The weights load from a diffusers folder with
``sora_jax.models.wan_vae_weights.load_folder`` (which also documents the key mapping).

Two forms, selected by ``WanVAEConfig.is_residual``:
  * Wan 2.1 (``is_residual=False``): RGB in, 4x8x8 compression (``t' = 1 + (t - 1) / 4``,
    ``h' = h / 8``), ``z_dim = 16``. The encoder's ``down_blocks`` are a flat list of residual
    blocks, optional attention blocks and resamplers; upsamplers halve the width.
  * Wan 2.2 (``is_residual=True``, ``patch_size=2``): 2x2 pixels are folded into channels before
    the encoder and unfolded after the decoder, every down/up block adds a parameter-free
    shortcut (channel-group means down, channel copies up); 4x16x16, ``z_dim = 48``.

Time semantics (what diffusers computes; it always runs the causal cache, so this *is* its
whole-video result). Every 3-tap temporal conv is causal with ZERO padding (two zero frames in
front of the video). A temporal downsampler passes frame 0 through untouched and maps frames
``2j-2, 2j-1, 2j`` to output frame ``j`` (a stride-2 conv): ``1 + 2m -> 1 + m`` frames. A
temporal upsampler passes frame 0 through, and runs a causal conv over frames ``1..`` alone
(zero padded, frame 0 unseen) whose ``2c`` output channels become two frames each:
``1 + m -> 1 + 2m``. The Wan 2.2 shortcuts pad one zero frame in front (down) or drop the first
copy (up). Hence encoding needs ``t = 1 + r_t * k`` frames, and decoding gives
``1 + r_t * (t' - 1)`` frames.

Streaming (time chunks, exact). Every module takes ``(x, cache)`` and returns ``(y, cache)``;
``cache=None`` marks the first chunk of a video (the zero padding, the special frame 0), a later
chunk passes the cache the previous one returned: each 3-tap conv carries its last two input
frames, a temporal downsampler its last input frame. The whole video is simply one first chunk.
A first chunk has ``1 + r_t*k`` video (``1 + k`` latent) frames, later ones ``r_t*k`` (``k``).
diffusers encodes frame 0 and then chunks of 4 frames, and decodes one latent frame at a time;
any chunking gives the same result here, up to float rounding. The cache's shapes do not depend
on the chunk length, so ``lax.scan`` carries it (``chunked_encode`` / ``chunked_decode``).

Spatial tiling (approximate): ``tiled_decode`` decodes overlapping latent tiles and blends them
exactly as diffusers' ``enable_tiling()`` decode does (same tiles, same linear fades, same
order), so it matches diffusers' tiled output to float rounding. Tiles do not see their
neighbours (the mid-block attention spans the whole frame, every conv reaches across a seam), so
tiled differs from whole decoding; on the tiny random test models by up to ~1 in [-1, 1] pixels
near seams (random weights are chaotic; trained weights are smooth, which is why diffusers
tiles), see the tests for the measured numbers.

Latent normalisation: the config's per-channel ``latents_mean`` / ``latents_std`` map encoder
means to the diffusion model's latents (``normalize_latents``) and back (``denormalize_latents``),
as diffusers' ``WanPipeline`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import vae as vae_lib
from sora_jax.parallel import axes

__all__ = [
    "WanVAEConfig",
    "WanVAE",
    "CausalConv3d",
    "RMSNorm",
    "ResidualBlock",
    "AttentionBlock",
    "Resample",
    "Encoder",
    "Decoder",
    "patchify",
    "unpatchify",
    "normalize_latents",
    "denormalize_latents",
    "chunked_encode",
    "chunked_decode",
    "tiled_decode",
    "init_params",
    "param_shapes",
]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
CACHE_T = 2  # frames a 3-tap causal conv carries to the next chunk

Cache = dict | jax.Array | None

# LeCun normal drawn flat: XLA:CPU compiles threefry for 5-D shapes far more slowly.
_conv_init = vae_lib._flat_lecun_normal


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """The architecture of an ``AutoencoderKLWan`` (its ``config.json`` fields, renamed where
    diffusers misspells them: ``temperal_downsample`` is ``temporal_downsample`` here)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0  # kept for the export; inference never drops
    latents_mean: tuple[float, ...] = (0.0,) * 16
    latents_std: tuple[float, ...] = (1.0,) * 16
    is_residual: bool = False
    in_channels: int = 3  # after patchify: video channels * patch_size**2
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self):
        p = self.patch or 1
        if self.attn_scales:
            # diffusers builds encoder attention blocks for them but its encoder cannot run
            # them (they take no cache), so no checkpoint uses them.
            raise ValueError(
                f"WanVAEConfig: attn_scales={list(self.attn_scales)} is not supported (diffusers' "
                "AutoencoderKLWan cannot run encoder attention blocks); Wan checkpoints use []"
            )
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig: temporal_downsample has {len(self.temporal_downsample)} entries, "
                f"expected len(dim_mult) - 1 = {len(self.dim_mult) - 1}"
            )
        if self.temporal_compression not in (1, 2, 4):
            raise ValueError(
                f"WanVAEConfig: temporal compression {self.temporal_compression} is not supported "
                "(diffusers encodes chunks of 4 frames: at most two temporal downsamplers)"
            )
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % (p * p):
                raise ValueError(
                    f"WanVAEConfig: {name}={getattr(self, name)} is not a multiple of "
                    f"patch_size**2={p * p}"
                )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(
                    f"WanVAEConfig: {name} has {len(getattr(self, name))} entries, "
                    f"expected z_dim={self.z_dim}"
                )

    @property
    def patch(self) -> int:
        return self.patch_size or 1

    @property
    def spatial_compression(self) -> int:
        return self.patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(bool(d) for d in self.temporal_downsample)

    @property
    def video_channels(self) -> int:
        """Channels of the pixel video (before patchify), 3 for RGB."""
        return self.in_channels // (self.patch * self.patch)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(t', h', w', z_dim)`` of a ``num_frames x height x width`` video (ValueError for
        sizes the VAE cannot take)."""
        r_t, r_s = self.temporal_compression, self.spatial_compression
        if num_frames < 1 or (num_frames - 1) % r_t:
            raise ValueError(f"num_frames={num_frames} must be 1 + k * {r_t}, k >= 0")
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % r_s:
                raise ValueError(f"{name}={size} must be a positive multiple of {r_s}")
        return (1 + (num_frames - 1) // r_t, height // r_s, width // r_s, self.z_dim)


# ---- layers -------------------------------------------------------------------------------------


def _param(module: nn.Module, name: str, init, shape, names, dtype=jnp.float32):
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def _conv_params(module: nn.Module, shape: tuple[int, ...], dtype) -> tuple[jax.Array, jax.Array]:
    """``kernel f32[*spatial ci co]`` and ``bias f32[co]`` of a conv."""
    spatial = (None,) * (len(shape) - 2)
    kernel = _param(
        module, "kernel", _conv_init, shape, (*spatial, axes.CONV_IN, axes.CONV_OUT), dtype
    )
    bias = _param(module, "bias", nn.initializers.zeros, shape[-1:], (axes.CONV_OUT,), dtype)
    return kernel, bias


class CausalConv3d(nn.Module):
    """3D conv, causal in time with zero padding, symmetric zero padding in space.

    ``f32[b t h w ci] -> f32[b t h w co]`` (stride 1): output frame ``t`` sees input frames
    ``t - kt + 1 .. t``; frames before the video are zeros (first chunk, ``cache=None``) or the
    previous chunk's last ``kt - 1`` input frames (``cache f32[b kt-1 h w ci]``). Returns
    ``(y, new_cache)``; ``new_cache`` is ``None`` for ``kt == 1``. With ``causal=False`` there
    is no padding in time (valid, ``time_stride`` apart) and no cache.
    Parameters: ``kernel f32[kt kh kw ci co]``, ``bias f32[co]``.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    causal: bool = True
    time_stride: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        b, t, h, w, ci = x.shape
        kt, kh, kw = self.kernel_size
        kernel, bias = _conv_params(self, (kt, kh, kw, ci, self.features), self.param_dtype)
        x = x.astype(self.dtype)
        new_cache = None
        if kt > 1 and self.causal:
            front = jnp.zeros((b, kt - 1, h, w, ci), self.dtype) if cache is None else cache
            if front.shape != (b, kt - 1, h, w, ci):
                raise ValueError(
                    f"CausalConv3d: cache shape {front.shape} != {(b, kt - 1, h, w, ci)}"
                )
            x = jnp.concatenate([front.astype(self.dtype), x], axis=1)
            new_cache = x[:, -(kt - 1) :]
        y = _conv(x, kernel.astype(self.dtype), self.time_stride) + bias.astype(self.dtype)
        return y, new_cache


def _conv(x: jax.Array, kernel: jax.Array, time_stride: int) -> jax.Array:
    """Valid in time (stride ``time_stride``), symmetric ``(k - 1) // 2`` zero padding in space:
    ``f32[b t h w ci], f32[kt kh kw ci co] -> f32[b (t - kt) // s + 1 h w co]``."""
    kt, kh, kw, _, _ = kernel.shape
    if kh == kw == 1 and kt == 1 and time_stride == 1:
        return jnp.einsum("bthwi,io->bthwo", x, kernel[0, 0, 0])
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(time_stride, 1, 1),
        padding=((0, 0), (ph, ph), (pw, pw)),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )


class Conv2d(nn.Module):
    """Per-frame 2D conv: ``f32[b t h w ci] -> f32[b t h' w' co]`` with explicit ``padding``
    (``((top, bottom), (left, right))``) and ``stride``. ``kernel f32[kh kw ci co]``."""

    features: int
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, ci = x.shape
        kernel, bias = _conv_params(self, (3, 3, ci, self.features), self.param_dtype)
        frames = einops.rearrange(x.astype(self.dtype), "b t h w c -> (b t) h w c")
        y = jax.lax.conv_general_dilated(
            frames,
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + bias.astype(self.dtype)
        return einops.rearrange(y, "(b t) h w c -> b t h w c", b=b)


class RMSNorm(nn.Module):
    """``x / max(|x|_2, 1e-12) * sqrt(c) * gamma`` over the channels of each position
    (statistics in float32). ``f32[... c] -> f32[... c]``; ``gamma f32[c]``."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        gamma = _param(self, "gamma", nn.initializers.ones, (c,), (axes.NORM,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * (c**0.5) * gamma.astype(jnp.float32)
        return y.astype(self.dtype)


class ResidualBlock(nn.Module):
    """``x -> shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`` with 3x3x3 causal
    convs; ``conv_shortcut`` (1x1x1) only where the width changes. ``f32[b t h w ci] ->
    f32[b t h w features]``; the cache is ``{conv1, conv2}``."""

    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        cache = cache or {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skip = x
        if x.shape[-1] != self.features:
            skip, _ = CausalConv3d(self.features, (1, 1, 1), name="conv_shortcut", **kw)(x)
        h = nn.silu(RMSNorm(name="norm1", **kw)(x))
        h, c1 = CausalConv3d(self.features, name="conv1", **kw)(h, cache.get("conv1"))
        h = nn.silu(RMSNorm(name="norm2", **kw)(h))
        h, c2 = CausalConv3d(self.features, name="conv2", **kw)(h, cache.get("conv2"))
        return h + skip.astype(h.dtype), {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
    """Residual single-head self-attention among the ``h * w`` positions of each frame.

    ``f32[b t h w c] -> f32[b t h w c]``: RMS norm, a ``to_qkv`` projection to ``3c`` (q, k, v
    in that order), softmax(q k^T / sqrt(c)) v, a ``proj`` projection. Per frame, so it holds no
    cache. Parameters: ``norm/gamma``, ``to_qkv`` / ``proj`` with ``kernel f32[c n]``, ``bias``.
    """

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = RMSNorm(name="norm", **kw)(x)
        qkv = nn.Dense(
            3 * c,
            name="to_qkv",
            kernel_init=nn.with_logical_partitioning(_conv_init, (axes.CONV_IN, axes.CONV_OUT)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
            **kw,
        )(y)
        q, k, v = jnp.split(einops.rearrange(qkv, "b t h w n -> b t (h w) n"), 3, axis=-1)
        scores = jnp.einsum("btqc,btkc->btqk", q, k) / jnp.sqrt(jnp.asarray(c, self.dtype))
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("btqk,btkc->btqc", probs, v)
        out = einops.rearrange(out, "b t (h w) c -> b t h w c", h=h)
        out = nn.Dense(
            c,
            name="proj",
            kernel_init=nn.with_logical_partitioning(_conv_init, (axes.CONV_IN, axes.CONV_OUT)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
            **kw,
        )(out)
        return out + x.astype(out.dtype)


class Resample(nn.Module):
    """Space x2 down / up, and in time too for the ``*3d`` modes.

    ``downsample2d``: zero pad right/bottom by one, 3x3 conv stride 2 (``resample``).
    ``downsample3d``: the same, then the temporal ``time_conv`` (kernel 3, stride 2): frame 0
    passes, ``1 + 2m -> 1 + m``; the cache is the last input frame (``f32[b 1 h w c]``).
    ``upsample2d``: nearest x2 then a 3x3 conv (``resample``) to ``features`` channels.
    ``upsample3d``: first the temporal ``time_conv`` (causal, ``c -> 2c``, two frames per input
    frame) over frames ``1..``, frame 0 passing, ``1 + m -> 1 + 2m``; then as ``upsample2d``.
    Its cache is the causal conv's. Returns ``(y, cache)``.
    """

    mode: str
    features: int  # output width (downsamplers keep the input width)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, h, w, c = x.shape
        first = cache is None
        new_cache = None
        if self.mode.startswith("down"):
            x = Conv2d(c, stride=2, padding=((0, 1), (0, 1)), name="resample", **kw)(x)
            if self.mode == "downsample3d":
                x, new_cache = self._time_down(x, cache, first)
            return x, new_cache
        if self.mode == "upsample3d":
            x, new_cache = self._time_up(x, cache, first)
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return Conv2d(self.features, name="resample", **kw)(x), new_cache

    def _time_down(self, x, cache, first):
        b, t, h, w, c = x.shape
        conv = CausalConv3d(
            c,
            (3, 1, 1),
            causal=False,
            time_stride=2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="time_conv",
        )
        if (t % 2 == 0) if first else (t % 2):
            raise ValueError(
                f"Resample(downsample3d): {t} frames; the first chunk needs 1 + 2m, later ones 2m"
            )
        # Windows (2j-2, 2j-1, 2j): frame 0 opens the first one, the cached last frame of the
        # previous chunk every later chunk's.
        frames = x if first else jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        if frames.shape[1] >= 3:
            y, _ = conv(frames)
        else:  # frame 0 alone: nothing to convolve, but the params must exist
            conv(jnp.zeros((b, 3, 1, 1, c), x.dtype))
            y = frames[:, :0]
        if first:
            y = jnp.concatenate([x[:, :1], y.astype(x.dtype)], axis=1)
        return y, x[:, -1:]

    def _time_up(self, x, cache, first):
        conv = CausalConv3d(
            2 * x.shape[-1],
            (3, 1, 1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="time_conv",
        )
        rest = x[:, 1:] if first else x
        if rest.shape[1] == 0:
            # Frame 0 alone: nothing to convolve, but the params and the cache must exist.
            b, _, h, w, c = x.shape
            conv(jnp.zeros((b, 1, 1, 1, c), x.dtype))
            return x, jnp.zeros((b, CACHE_T, h, w, c), self.dtype)
        y, new_cache = conv(rest, cache)
        y = einops.rearrange(y, "b t h w (two c) -> b (t two) h w c", two=2)
        if first:
            y = jnp.concatenate([x[:, :1].astype(y.dtype), y], axis=1)
        return y, new_cache


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of a Wan 2.2 down block: fold ``factor_t x factor_s x factor_s``
    neighbours into channels (zero frames in front when the frame count is not a multiple of
    ``factor_t``) and average groups of them down to ``features`` channels.
    ``f32[b t h w c] -> f32[b ceil(t/ft) h/fs w/fs features]``."""

    features: int
    factor_t: int
    factor_s: int

    def __call__(self, x: jax.Array) -> jax.Array:
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[1] % ft) % ft
        x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
        x = einops.rearrange(x, "b (t a) (h p) (w q) c -> b t h w (c a p q)", a=ft, p=fs, q=fs)
        x = einops.rearrange(x, "b t h w (o g) -> b t h w o g", o=self.features)
        return x.mean(axis=-1)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of a Wan 2.2 up block: copy channels and unfold them into
    ``factor_t x factor_s x factor_s`` neighbours; the first chunk drops its first
    ``factor_t - 1`` frames (``1 + m -> 1 + 2m``). ``f32[b t h w c] -> f32[b t' h*fs w*fs f]``."""

    features: int
    factor_t: int
    factor_s: int

    def __call__(self, x: jax.Array, first: bool) -> jax.Array:
        ft, fs = self.factor_t, self.factor_s
        repeats = self.features * ft * fs * fs // x.shape[-1]
        x = jnp.repeat(x, repeats, axis=-1)  # channel c -> c * repeats + r
        x = einops.rearrange(x, "b t h w (o a p q) -> b (t a) (h p) (w q) o", a=ft, p=fs, q=fs)
        return x[:, ft - 1 :] if first else x


class MidBlock(nn.Module):
    """``resnets_0 -> attentions_0 -> resnets_1`` at constant width; cache ``{resnets_i}``."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        cache = cache or {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x, c0 = ResidualBlock(c, name="resnets_0", **kw)(x, cache.get("resnets_0"))
        x = AttentionBlock(name="attentions_0", **kw)(x)
        x, c1 = ResidualBlock(c, name="resnets_1", **kw)(x, cache.get("resnets_1"))
        return x, {"resnets_0": c0, "resnets_1": c1}


class ResidualDownBlock(nn.Module):
    """Wan 2.2 encoder level: residual blocks, a downsampler, plus ``AvgDown3D`` of the input."""

    features: int
    num_res_blocks: int
    temporal: bool
    down: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        cache, new = cache or {}, {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skip = AvgDown3D(self.features, 2 if self.temporal else 1, 2 if self.down else 1)(x)
        for i in range(self.num_res_blocks):
            name = f"resnets_{i}"
            x, new[name] = ResidualBlock(self.features, name=name, **kw)(x, cache.get(name))
        if self.down:
            mode = "downsample3d" if self.temporal else "downsample2d"
            x, new["downsampler"] = Resample(mode, self.features, name="downsampler", **kw)(
                x, cache.get("downsampler")
            )
        return x + skip.astype(x.dtype), new


class UpBlock(nn.Module):
    """A decoder level: ``num_res_blocks + 1`` residual blocks and an optional upsampler.

    Wan 2.1 (``residual=False``): the upsampler is ``upsamplers_0`` and halves the width.
    Wan 2.2 (``residual=True``): it is ``upsampler``, keeps the width, and ``DupUp3D`` of the
    block's input is added. Cache ``{resnets_i, upsampler(s)}``.
    """

    features: int
    num_res_blocks: int
    upsample_mode: str | None
    residual: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        first = cache is None
        cache, new = cache or {}, {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x_in = x
        for i in range(self.num_res_blocks + 1):
            name = f"resnets_{i}"
            x, new[name] = ResidualBlock(self.features, name=name, **kw)(x, cache.get(name))
        if self.upsample_mode is not None:
            name = "upsampler" if self.residual else "upsamplers_0"
            out = self.features if self.residual else self.features // 2
            x, new[name] = Resample(self.upsample_mode, out, name=name, **kw)(x, cache.get(name))
            if self.residual:
                temporal = self.upsample_mode == "upsample3d"
                skip = DupUp3D(self.features, 2 if temporal else 1, 2)(x_in, first)
                x = x + skip.astype(x.dtype)
        return x, new


class Encoder(nn.Module):
    """``f32[b t h w in_channels] -> f32[b t' h' w' 2*z_dim]`` (patchified input, before
    ``quant_conv``). Module names follow diffusers' ``WanEncoder3d``."""

    config: WanVAEConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None):
        cfg = self.config
        cache, new = cache or {}, {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        x, new["conv_in"] = CausalConv3d(dims[0], name="conv_in", **kw)(x, cache.get("conv_in"))
        levels = len(cfg.dim_mult)
        k = 0  # diffusers numbers the 2.1 encoder's blocks flat
        for i, out_dim in enumerate(dims[1:]):
            last = i == levels - 1
            if cfg.is_residual:
                name = f"down_blocks_{i}"
                block = ResidualDownBlock(
                    out_dim,
                    cfg.num_res_blocks,
                    temporal=not last and bool(cfg.temporal_downsample[i]),
                    down=not last,
                    name=name,
                    **kw,
                )
                x, new[name] = block(x, cache.get(name))
                continue
            for _ in range(cfg.num_res_blocks):
                name = f"down_blocks_{k}"
                x, new[name] = ResidualBlock(out_dim, name=name, **kw)(x, cache.get(name))
                k += 1
            if not last:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                name = f"down_blocks_{k}"
                x, new[name] = Resample(mode, out_dim, name=name, **kw)(x, cache.get(name))
                k += 1
        x, new["mid_block"] = MidBlock(name="mid_block", **kw)(x, cache.get("mid_block"))
        x = nn.silu(RMSNorm(name="norm_out", **kw)(x))
        x, new["conv_out"] = CausalConv3d(2 * cfg.z_dim, name="conv_out", **kw)(
            x, cache.get("conv_out")
        )
        return x, new


class Decoder(nn.Module):
    """``f32[b t' h' w' z_dim] -> f32[b t h w out_channels]`` (after ``post_quant_conv``,
    before unpatchify and clamping). Module names follow diffusers' ``WanDecoder3d``."""

    config: WanVAEConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, cache: Cache = None):
        cfg = self.config
        cache, new = cache or {}, {}
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        base = cfg.decoder_base_dim or cfg.base_dim
        mults = tuple(cfg.dim_mult)
        dims = [base * m for m in (mults[-1], *mults[::-1])]
        temporal_up = tuple(cfg.temporal_downsample)[::-1]
        x, new["conv_in"] = CausalConv3d(dims[0], name="conv_in", **kw)(z, cache.get("conv_in"))
        x, new["mid_block"] = MidBlock(name="mid_block", **kw)(x, cache.get("mid_block"))
        for i, out_dim in enumerate(dims[1:]):
            up = i != len(mults) - 1
            mode = None
            if up:
                mode = "upsample3d" if temporal_up[i] else "upsample2d"
            name = f"up_blocks_{i}"
            block = UpBlock(out_dim, cfg.num_res_blocks, mode, cfg.is_residual, name=name, **kw)
            x, new[name] = block(x, cache.get(name))
        x = nn.silu(RMSNorm(name="norm_out", **kw)(x))
        x, new["conv_out"] = CausalConv3d(cfg.out_channels, name="conv_out", **kw)(
            x, cache.get("conv_out")
        )
        return x, new


# ---- the autoencoder ----------------------------------------------------------------------------


def patchify(x: jax.Array, p: int) -> jax.Array:
    """``f32[b t h*p w*p c] -> f32[b t h w c*p*p]`` in diffusers' channel order (c, q, p)."""
    if p == 1:
        return x
    return einops.rearrange(x, "b t (h p) (w q) c -> b t h w (c q p)", p=p, q=p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of ``patchify``: ``f32[b t h w c*p*p] -> f32[b t h*p w*p c]``."""
    if p == 1:
        return x
    return einops.rearrange(x, "b t h w (c q p) -> b t (h p) (w q) c", p=p, q=p)


class WanVAE(nn.Module):
    """``AutoencoderKLWan``: videos ``f32[b t h w video_channels]`` in [-1, 1] with
    ``t = 1 + r_t * k`` <-> latents ``f32[b t' h' w' z_dim]`` (``t' = 1 + k``).

    ``encode`` gives the posterior ``(mean, logvar)`` (logvar clipped to [-30, 20], as
    diffusers' ``DiagonalGaussianDistribution``); ``decode`` the video clamped to [-1, 1].
    ``encode_chunk`` / ``decode_chunk`` stream along time with a carried cache (module
    docstring). Parameters are float32 unless ``param_dtype`` says otherwise; ``dtype`` is the
    compute dtype.
    """

    config: WanVAEConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(cfg, **kw)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, (1, 1, 1), **kw)
        self.decoder = Decoder(cfg, **kw)

    # The geometry the project's VAE exposes (sora_jax.models.vae_inference reads it).
    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return self.config.latent_shape(num_frames, height, width)

    def _check_video(self, what: str, x: jax.Array) -> None:
        c = self.config.video_channels
        if x.ndim != 5 or x.shape[-1] != c:
            raise ValueError(f"{what} expects f32[b t h w {c}], got shape {x.shape}")

    def _check_latents(self, what: str, z: jax.Array) -> None:
        if z.ndim != 5 or z.shape[-1] != self.config.z_dim:
            raise ValueError(f"{what} expects f32[b t' h' w' {self.config.z_dim}], got {z.shape}")

    def _moments(self, x: jax.Array, cache: Cache):
        h, cache = self.encoder(patchify(x, self.config.patch), cache)
        h, _ = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX), cache

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``f32[b t h w c] -> (mean, logvar)``, each ``f32[b t' h' w' z_dim]``."""
        self._check_video("encode", x)
        self.config.latent_shape(*x.shape[1:4])
        mean, logvar, _ = self._moments(x, None)
        return mean, logvar

    def encode_chunk(self, x: jax.Array, cache: Cache = None):
        """One time chunk: ``f32[b t h w c] -> (mean, logvar, cache)``. The first chunk
        (``cache=None``) has ``1 + r_t*k`` frames, later ones ``r_t*k`` (k >= 1); the chunks'
        outputs concatenated along time equal ``encode`` of the whole video."""
        self._check_video("encode_chunk", x)
        r_t = self.config.temporal_compression
        _, t, h, w, _ = x.shape
        self.config.latent_shape(1, h, w)
        ok = (t - 1) % r_t == 0 if cache is None else (t >= r_t and t % r_t == 0)
        if not ok:
            need = f"1 + {r_t}*k" if cache is None else f"{r_t}*k (k >= 1)"
            raise ValueError(f"encode_chunk: got {t} frames, this chunk needs {need}")
        return self._moments(x, cache)

    def _video(self, z: jax.Array, cache: Cache):
        x, _ = self.post_quant_conv(z)
        x, cache = self.decoder(x, cache)
        x = unpatchify(x.astype(jnp.float32), self.config.patch)
        return jnp.clip(x, -1.0, 1.0), cache

    def decode_patches(self, z: jax.Array, cache: Cache = None):
        """``decode_chunk`` before unpatchify and clamping: ``(f32[b t h/p w/p out_channels],
        cache)``, the space in which ``tiled_decode`` blends tiles."""
        self._check_latents("decode_patches", z)
        x, _ = self.post_quant_conv(z)
        x, cache = self.decoder(x, cache)
        return x.astype(jnp.float32), cache

    def decode(self, z: jax.Array) -> jax.Array:
        """``f32[b t' h' w' z_dim] -> f32[b 1+r_t*(t'-1) h'*r_s w'*r_s c]`` in [-1, 1]."""
        self._check_latents("decode", z)
        return self._video(z, None)[0]

    def decode_chunk(self, z: jax.Array, cache: Cache = None):
        """One time chunk of latents: ``(video, cache)``; the first chunk (``cache=None``) of
        ``1 + k`` latent frames gives ``1 + r_t*k`` frames, a later one of ``k`` gives
        ``r_t*k``, continuing ``decode`` of the whole latent video."""
        self._check_latents("decode_chunk", z)
        return self._video(z, cache)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``f32[b t h w c] -> (recon, mean, logvar)``, decoding the posterior mean."""
        mean, logvar = self.encode(x)
        return self.decode(mean), mean, logvar


def normalize_latents(mean: jax.Array, config: WanVAEConfig) -> jax.Array:
    """Encoder means ``f32[... z_dim]`` -> the diffusion model's latents
    ``(mean - latents_mean) / latents_std`` per channel."""
    mu = jnp.asarray(config.latents_mean, jnp.float32)
    std = jnp.asarray(config.latents_std, jnp.float32)
    return ((mean.astype(jnp.float32) - mu) / std).astype(mean.dtype)


def denormalize_latents(latents: jax.Array, config: WanVAEConfig) -> jax.Array:
    """Inverse of ``normalize_latents``: ``latents * latents_std + latents_mean``."""
    mu = jnp.asarray(config.latents_mean, jnp.float32)
    std = jnp.asarray(config.latents_std, jnp.float32)
    return (latents.astype(jnp.float32) * std + mu).astype(latents.dtype)


# ---- long and large inputs ----------------------------------------------------------------------


def _split_time(x: jax.Array, size: int) -> jax.Array:
    """``f32[b t ...] -> f32[n b size ...]`` (``t`` must be a multiple of ``size``)."""
    if x.shape[1] % size:
        raise ValueError(f"{x.shape[1]} frames do not split into chunks of {size}")
    return einops.rearrange(x, "b (n s) ... -> n b s ...", s=size)


def chunked_encode(
    model: WanVAE, params, x: jax.Array, chunk_latent_frames: int = 1
) -> tuple[jax.Array, jax.Array]:
    """``model.encode`` of ``f32[b t h w c]`` run as frame 0 then chunks of
    ``r_t * chunk_latent_frames`` frames in a ``lax.scan`` (diffusers' schedule for 1):
    one chunk's activations at a time. ``(t - 1) / r_t`` must be a multiple of the chunk."""
    model.config.latent_shape(*x.shape[1:4])
    v = {"params": params}
    mean0, logvar0, cache = model.apply(v, x[:, :1], method=WanVAE.encode_chunk)
    if x.shape[1] == 1:
        return mean0, logvar0
    xs = _split_time(x[:, 1:], model.config.temporal_compression * chunk_latent_frames)

    def body(cache, xc):
        mean, logvar, cache = model.apply(v, xc, cache, method=WanVAE.encode_chunk)
        return cache, (mean, logvar)

    _, (means, logvars) = jax.lax.scan(body, cache, xs)
    join = lambda a0, a: jnp.concatenate(  # noqa: E731
        [a0, einops.rearrange(a, "n b s ... -> b (n s) ...")], axis=1
    )
    return join(mean0, means), join(logvar0, logvars)


def chunked_decode(model: WanVAE, params, z: jax.Array, chunk_latent_frames: int = 1) -> jax.Array:
    """``model.decode`` of ``f32[b t' h' w' z_dim]`` run as latent frame 0 then chunks of
    ``chunk_latent_frames`` in a ``lax.scan`` (diffusers decodes one latent frame at a time)."""
    v = {"params": params}
    y0, cache = model.apply(v, z[:, :1], method=WanVAE.decode_chunk)
    if z.shape[1] == 1:
        return y0
    zs = _split_time(z[:, 1:], chunk_latent_frames)

    def body(cache, zc):
        y, cache = model.apply(v, zc, cache, method=WanVAE.decode_chunk)
        return cache, y

    _, ys = jax.lax.scan(body, cache, zs)
    return jnp.concatenate([y0, einops.rearrange(ys, "n b s ... -> b (n s) ...")], axis=1)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """``b`` with its first ``extent`` rows (``axis`` 2) or columns (3) faded in linearly
    from ``a``'s last ones: row ``y`` is ``a[-e + y] * (1 - y / e) + b[y] * y / e``."""
    e = min(a.shape[axis], b.shape[axis], extent)
    if e <= 0:
        return b
    ramp = jnp.arange(e, dtype=b.dtype) / e
    ramp = ramp.reshape((e, 1, 1) if axis == 2 else (e, 1))
    head = jax.lax.slice_in_dim(b, 0, e, axis=axis)
    tail = jax.lax.slice_in_dim(a, a.shape[axis] - e, a.shape[axis], axis=axis)
    mixed = tail * (1 - ramp) + head * ramp
    return jnp.concatenate([mixed, jax.lax.slice_in_dim(b, e, b.shape[axis], axis=axis)], axis)


def _decode_patches(model: WanVAE, params, z: jax.Array, chunk_latent_frames: int | None):
    """``WanVAE.decode_patches`` of a whole latent video, optionally in time chunks."""
    v = {"params": params}
    if not chunk_latent_frames or z.shape[1] == 1:
        return model.apply(v, z, method=WanVAE.decode_patches)[0]
    y0, cache = model.apply(v, z[:, :1], method=WanVAE.decode_patches)
    zs = _split_time(z[:, 1:], chunk_latent_frames)

    def body(cache, zc):
        y, cache = model.apply(v, zc, cache, method=WanVAE.decode_patches)
        return cache, y

    _, ys = jax.lax.scan(body, cache, zs)
    return jnp.concatenate([y0, einops.rearrange(ys, "n b s ... -> b (n s) ...")], axis=1)


def tiled_decode(
    model: WanVAE,
    params,
    z: jax.Array,
    tile_sample_size: int | tuple[int, int] = 256,
    tile_sample_stride: int | tuple[int, int] = 192,
    chunk_latent_frames: int | None = None,
) -> jax.Array:
    """``decode`` in overlapping spatial tiles, as diffusers' ``AutoencoderKLWan.tiled_decode``
    (``enable_tiling(tile_sample_min_*, tile_sample_stride_*)``): ``f32[b t' h' w' z] ->
    f32[b t h w c]``.

    Tiles of ``tile_sample_size / r_s`` latent pixels start every ``tile_sample_stride / r_s``
    (the last ones cut at the border); each is decoded alone (whole, or in time chunks of
    ``chunk_latent_frames``), then, in row-major order, faded into the already blended tile
    above and to the left over ``size - stride`` output pixels (``/ patch_size`` for Wan 2.2,
    whose blending happens before unpatchify), and cut to ``stride``. Frames no larger than a
    tile are decoded whole. Approximate: tiles do not see their neighbours (module docstring).
    """
    if z.ndim != 5 or z.shape[-1] != model.config.z_dim:
        raise ValueError(
            f"tiled_decode expects f32[b t' h' w' {model.config.z_dim}], got {z.shape}"
        )
    cfg = model.config
    r_s, p = cfg.spatial_compression, cfg.patch
    (size_h, size_w), (stride_h, stride_w) = _pair(tile_sample_size), _pair(tile_sample_stride)
    for what, v in (("tile_sample_size", size_h), ("tile_sample_size", size_w)):
        if v % r_s:
            raise ValueError(f"tiled_decode: {what}={v} is not a multiple of {r_s}")
    for what, v, size in (
        ("tile_sample_stride", stride_h, size_h),
        ("tile_sample_stride", stride_w, size_w),
    ):
        if v % r_s or not 0 < v <= size:
            raise ValueError(f"tiled_decode: {what}={v} must be a multiple of {r_s} in (0, {size}]")
    b, t, h, w, _ = z.shape
    tile_h, tile_w = size_h // r_s, size_w // r_s
    if h <= tile_h and w <= tile_w:
        if chunk_latent_frames:
            return chunked_decode(model, params, z, chunk_latent_frames)
        return model.apply({"params": params}, z, method=WanVAE.decode)

    # One compiled program per tile shape (at most four: inner, last row, last column, corner);
    # under an outer jit this is inlined.
    raw = jax.jit(
        functools.partial(_decode_patches, model, chunk_latent_frames=chunk_latent_frames)
    )

    out_stride_h, out_stride_w = stride_h // p, stride_w // p
    blend_h, blend_w = size_h // p - out_stride_h, size_w // p - out_stride_w
    rows = []
    for i in range(0, h, stride_h // r_s):
        row = []
        for j in range(0, w, stride_w // r_s):
            tile = raw(params, z[:, :, i : i + tile_h, j : j + tile_w])
            if rows:
                tile = _blend(rows[-1][len(row)], tile, blend_h, axis=2)
            if row:
                tile = _blend(row[-1], tile, blend_w, axis=3)
            row.append(tile)  # blended: the next tiles fade from it, as in diffusers
        rows.append(row)
    out = jnp.concatenate(
        [
            jnp.concatenate([tile[:, :, :out_stride_h, :out_stride_w] for tile in row], axis=3)
            for row in rows
        ],
        axis=2,
    )
    out = out[:, :, : h * r_s // p, : w * r_s // p]
    return jnp.clip(unpatchify(out.astype(jnp.float32), p), -1.0, 1.0)


def init_params(model: WanVAE, rng: jax.Array, frames: int = 1, size: int | None = None):
    """Random (unboxed) params of ``model``, initialised on a ``frames x size x size`` video."""
    cfg = model.config
    s = size or cfg.spatial_compression
    x = jnp.zeros((1, frames, s, s, cfg.video_channels), jnp.float32)
    return nn.unbox(model.init({"params": rng}, x)["params"])


def param_shapes(model: WanVAE):
    """The model's (boxed) param tree as ``jax.ShapeDtypeStruct`` leaves, nothing computed."""
    cfg = model.config
    s = cfg.spatial_compression
    # 1 + r_t frames so that every temporal layer runs (and creates its params).
    x = jax.ShapeDtypeStruct(
        (1, 1 + cfg.temporal_compression, s, s, cfg.video_channels), jnp.float32
    )
    return jax.eval_shape(lambda k, x: model.init({"params": k}, x)["params"], jax.random.key(0), x)

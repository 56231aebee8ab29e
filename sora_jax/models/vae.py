"""Causal 3D-convolution video VAE (images are 1-frame videos and share the latent space).

Layout is channels-last throughout: videos are ``f32[b t h w c]``.

Causality: every temporal operation only looks at the past.
  * ``CausalConv3d`` pads ``k_t - 1`` frames in front of the clip, filled by REPLICATING the
    first frame (a still image then looks like a static video rather than a fade from black,
    and a 1-frame input sees only copies of itself). Nothing is padded at the end in time.
    Spatial padding is symmetric zero padding ('SAME'-like).
  * Downsampling folds 2x2 pixels (and pairs of frames, after replicating frame 0 once in
    front) into channels, then applies a causal conv: ``1 + 2m -> 1 + m`` frames, output frame
    ``j`` sees input frames ``<= 2j`` (frame 0 is encoded from frame 0 alone).
  * Temporal upsampling repeats every frame twice and drops the first copy
    (``1 + m -> 1 + 2m``; output frame ``i`` is latent frame ``ceil(i / 2)``), then a causal conv.
  * ``PerFrameGroupNorm`` takes statistics per (example, frame), never across time.
Hence with temporal compression ``r`` latent frame ``j`` depends on input frames ``<= r*j`` only
and decoded frame ``i`` on latent frames ``<= ceil(i / r)`` only, and encoding the first frame
as an image gives exactly the video's latent frame 0.

Streaming: because of the above, a long video can be processed chunk by chunk along time
(``CausalVAE.encode_chunk`` / ``decode_chunk``) with the same result as all at once. Every
module takes ``(x, cache, stream=True)`` and returns ``(y, new_cache)``: each causal conv carries
its last ``k_t - 1`` input frames to the next chunk, and ``cache=None`` marks the first chunk
(replicated frame 0; the temporal down/upsampling's special frame 0). Chunks follow the
``1 + r_t*k`` structure: the first chunk has ``1 + r_t*k`` frames, later ones ``r_t*k``.
Without ``stream`` the modules return ``y`` only (the full-video path, same parameters).

Trainability: with ``shortcuts`` (default) every down/upsampling and width change also adds a
parameter-free path (``channel_shortcut``: channel-group averages down, channel copies up, as in
DC-AE), so the untrained model already passes block-averaged pixels to the latent and back.
``patch_size > 1`` folds p x p pixels into channels before the first conv (pixel-unshuffle stem).

Mid-block attention (``mid_attention``): single-head self-attention over the (h, w) positions of
each frame after the encoder's and the decoder's mid residual block. Being per-frame it keeps
causality and streaming exact (it holds no cache); spatial tiles, however, see only their own
part of a frame, so tiled inference with it is approximate (as the per-frame group norm is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.common import config_checks as cc

__all__ = [
    "CausalConv3d",
    "PerFrameGroupNorm",
    "ResBlock3d",
    "Downsample3d",
    "Upsample3d",
    "FrameAttention",
    "Encoder",
    "Decoder",
    "CausalVAE",
    "channel_shortcut",
    "space_to_depth",
    "posterior_sample",
    "kl_divergence",
    "Cache",
]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

# Streaming state of a module: an array (a causal conv's last input frames), a dict of them by
# submodule name, or None (the first chunk: nothing before it).
Cache = jax.Array | dict | None


def _flat_lecun_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """LeCun-normal (truncated, fan_in = all but the last axis) drawn as a 1-D array.

    Same distribution as ``nn.initializers.lecun_normal()``, but XLA:CPU compiles threefry for
    a flat shape ~10x faster than for a 5-D one, which otherwise dominates ``jit(init)`` time.
    """
    fan_in = math.prod(shape[:-1])
    # 0.8796... = std of a unit normal truncated to [-2, 2]
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), jnp.float32)
    return (flat * std).reshape(shape).astype(dtype)


class PerFrameGroupNorm(nn.Module):
    """Group norm whose statistics cover (h, w, channels of a group) of ONE frame.

    Never mixing frames keeps the VAE causal and lets long videos be processed in chunks.
    Statistics are computed in float32. ``f32[b t h w c] -> f32[b t h w c]``.
    """

    num_groups: int = 8
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        if c % self.num_groups:
            raise ValueError(
                f"PerFrameGroupNorm: channels {c} not divisible by num_groups {self.num_groups}"
            )
        # Split channels into groups without transposing (a transpose costs a full copy).
        xg = einops.rearrange(
            x.astype(jnp.float32), "b t h w (g d) -> b t h w g d", g=self.num_groups
        )
        axes = (2, 3, 5)  # h, w and the channels of a group: per example, frame and group
        mean = xg.mean(axis=axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
        xg = (xg - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = einops.rearrange(xg, "b t h w g d -> b t h w (g d)")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return (y * scale + bias).astype(self.dtype)


class CausalConv3d(nn.Module):
    """3D conv, causal in time (front padding by replicating frame 0), symmetric in space.

    ``f32[b t h w ci] -> f32[b t h w co]``: output frame ``t`` sees input frames
    ``t - (k_t - 1) .. t``. Spatial padding is zeros, ``(k - 1) // 2`` before and ``k // 2``
    after (symmetric for odd kernels). Parameters: ``kernel f32[kt kh kw ci co]``, ``bias f32[co]``.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    dtype: jnp.dtype = jnp.float32
    # Below this many inputs per output (ci * kt * kh * kw) an explicit im2col matmul is several
    # times faster on XLA:CPU than its conv kernel (which is poor for very few input channels,
    # e.g. the RGB input layer).
    im2col_max_inputs: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        """``y`` or, with ``stream``, ``(y, new_cache)``.

        ``cache`` (streaming only): ``f32[b kt-1 h w ci]``, the last ``kt - 1`` frames in front
        of ``x`` (the previous chunk's, or the replicated frame 0 for the first chunk, which is
        what ``cache=None`` means). ``new_cache`` is the same for the frames after ``x``.
        ``None`` for ``kt == 1``.
        """
        b, t, h, w, ci = x.shape
        kt, kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", _flat_lecun_normal, (kt, kh, kw, ci, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if cache is not None and not stream:
            raise ValueError("CausalConv3d: a cache is only used with stream=True")
        x = x.astype(self.dtype)
        new_cache = None
        if kt > 1:
            if cache is None:
                front = jnp.repeat(x[:, :1], kt - 1, axis=1)  # replicate the first frame
            else:
                if cache.shape != (b, kt - 1, h, w, ci):
                    raise ValueError(
                        f"CausalConv3d: cache shape {cache.shape} != {(b, kt - 1, h, w, ci)}"
                    )
                front = cache.astype(self.dtype)
            x = jnp.concatenate([front, x], axis=1)
            new_cache = x[:, -(kt - 1) :]
        x = jnp.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
        kernel = kernel.astype(self.dtype)
        if kt * kh * kw * ci <= self.im2col_max_inputs:
            cols = jnp.concatenate(
                [
                    x[:, i : i + t, j : j + h, k : k + w]
                    for i in range(kt)
                    for j in range(kh)
                    for k in range(kw)
                ],
                axis=-1,
            )
            y = cols @ einops.rearrange(kernel, "kt kh kw ci co -> (kt kh kw ci) co")
        else:
            # A sum of 2D convs over the temporal taps: XLA:CPU runs 2D convs (and their
            # gradients) several times faster than its native 3D conv.
            hp, wp = x.shape[2:4]
            y = 0.0
            for i in range(kt):
                frames = einops.rearrange(x[:, i : i + t], "b t h w c -> (b t) h w c")
                y = y + jax.lax.conv_general_dilated(
                    frames,
                    kernel[i],
                    window_strides=(1, 1),
                    padding="VALID",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
            y = einops.rearrange(y, "(b t) h w c -> b t h w c", b=b)
        y = y + bias.astype(self.dtype)
        return (y, new_cache) if stream else y


class ResBlock3d(nn.Module):
    """norm -> silu -> conv -> norm -> silu -> conv, plus a 1x1x1 skip when channels change."""

    features: int
    norm_groups: int = 8
    dtype: jnp.dtype = jnp.float32
    shortcut: bool = False  # add channel_shortcut to the learned skip when the width changes

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        """``y`` or, with ``stream``, ``(y, new_cache)``; the cache is ``{conv1, conv2}``."""
        cache = cache or {}
        h = nn.silu(PerFrameGroupNorm(self.norm_groups, dtype=self.dtype, name="norm1")(x))
        h, c1 = CausalConv3d(self.features, dtype=self.dtype, name="conv1")(
            h, cache.get("conv1"), stream=True
        )
        h = nn.silu(PerFrameGroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h))
        h, c2 = CausalConv3d(self.features, dtype=self.dtype, name="conv2")(
            h, cache.get("conv2"), stream=True
        )
        if x.shape[-1] != self.features:
            skip = CausalConv3d(self.features, kernel_size=(1, 1, 1), dtype=self.dtype, name="skip")
            x = skip(x) + channel_shortcut(x, self.features) if self.shortcut else skip(x)
        y = x + h
        return (y, {"conv1": c1, "conv2": c2}) if stream else y


class Downsample3d(nn.Module):
    """Space / 2 when ``spatial`` and time ``1 + 2m -> 1 + m`` when ``temporal``: space-to-depth
    + causal conv.

    ``f32[b t h w c] -> f32[b t' h' w' features]``. Each 2x2 pixel block (1x1 without
    ``spatial``; and, in time, each pair of frames after replicating frame 0 once in front, so
    pair ``j`` holds frames ``2j-1, 2j`` and pair 0 holds frame 0 twice) is folded into
    channels, then a causal conv with kernel (2, 3, 3) ((3, 3, 3) without temporal folding)
    mixes neighbours: output frame ``j`` sees input frames ``<= 2j`` only.
    This is a strided conv with a (4, 6, 6) receptive field written without strides, because
    XLA:CPU computes the input gradient of a strided 3D conv ~10x slower than a plain conv.
    With ``shortcut`` the folded input, group-averaged to ``features`` channels, is added.
    """

    features: int
    temporal: bool
    shortcut: bool = False
    dtype: jnp.dtype = jnp.float32
    spatial: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        """``y`` or, with ``stream``, ``(y, new_cache)``; the cache is ``{conv}``.

        Streaming: the first chunk (``cache=None``) has ``1 + 2m`` frames, later ones ``2m``;
        a later chunk starts at an odd global frame, so its consecutive pairs are exactly the
        full video's pairs ``(2j - 1, 2j)`` and frame 0 is not replicated again.
        """
        first = cache is None
        p = 2 if self.spatial else 1
        if self.temporal:
            if first:
                x = jnp.concatenate([x[:, :1], x], axis=1)  # 1 + 2m -> 2 + 2m frames
            if x.shape[1] % 2:
                raise ValueError(
                    f"Downsample3d: {x.shape[1]} frames cannot be paired (a first chunk needs "
                    "1 + 2m frames, a later one 2m)"
                )
            x = einops.rearrange(x, "b (t a) (h p) (w q) c -> b t h w (a p q c)", a=2, p=p, q=p)
            kernel = (2, 3, 3)
        else:
            x = space_to_depth(x, p)
            kernel = (3, 3, 3)
        conv = CausalConv3d(self.features, kernel_size=kernel, dtype=self.dtype, name="conv")
        y, c = conv(x, None if first else cache["conv"], stream=True)
        y = y + channel_shortcut(x, self.features) if self.shortcut else y
        return (y, {"conv": c}) if stream else y


class Upsample3d(nn.Module):
    """Nearest upsampling (space x2 when ``spatial``; time ``1 + m -> 1 + 2m`` when
    ``temporal``) + causal conv (+ the upsampled input mapped to ``features`` channels when
    ``shortcut``)."""

    features: int
    temporal: bool
    shortcut: bool = False
    dtype: jnp.dtype = jnp.float32
    spatial: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        """``y`` or, with ``stream``, ``(y, new_cache)``; the cache is ``{conv}``.

        Streaming: only the first chunk (``cache=None``) drops the first copy, so a later chunk
        of ``m`` frames gives ``2m`` frames, continuing the full video's sequence.
        """
        first = cache is None
        if self.temporal:
            # [z0 z0 z1 z1 ...] minus the first copy: output frame i is input frame ceil(i/2),
            # so nothing ever depends on a later latent frame.
            x = jnp.repeat(x, 2, axis=1)
            x = x[:, 1:] if first else x
        if self.spatial:
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        conv = CausalConv3d(self.features, dtype=self.dtype, name="conv")
        y, c = conv(x, None if first else cache["conv"], stream=True)
        y = y + channel_shortcut(x, self.features) if self.shortcut else y
        return (y, {"conv": c}) if stream else y


class FrameAttention(nn.Module):
    """Residual single-head self-attention among the (h, w) positions of each frame.

    ``f32[b t h w c] -> f32[b t h w c]``: group norm, q/k/v projections, softmax attention over
    the ``h * w`` positions of the same (example, frame), output projection, added to ``x``.
    Frames never see each other, so causality holds and streaming needs no cache (with
    ``stream`` the new cache is ``None``). The output projection starts at zero: a new block
    is the identity and leaves the shortcut paths' reconstruction untouched at step 0.
    Parameters: ``norm``; ``to_q``, ``to_k``, ``to_v``, ``to_out`` with ``kernel f32[c c]``.
    """

    norm_groups: int = 8
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        if cache is not None:
            raise ValueError("FrameAttention holds no cache; got one")
        b, t, h, w, c = x.shape
        y = PerFrameGroupNorm(self.norm_groups, dtype=self.dtype, name="norm")(x)

        def proj(name, init=nn.initializers.lecun_normal()):
            return nn.Dense(
                c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=name
            )

        q, k, v = (
            einops.rearrange(proj(n)(y), "b t h w c -> (b t) (h w) 1 c")  # BTNH, one head
            for n in ("to_q", "to_k", "to_v")
        )
        o = jax.nn.dot_product_attention(q, k, v, implementation="xla")  # f32[(b t) (h w) 1 c]
        o = einops.rearrange(o, "(b t) (h w) 1 c -> b t h w c", b=b, h=h)
        out = x.astype(self.dtype) + proj("to_out", nn.initializers.zeros)(o)
        return (out, None) if stream else out


def channel_shortcut(x: jax.Array, features: int) -> jax.Array:
    """Parameter-free ``f32[... c] -> f32[... features]``: averages groups of channels
    (c > features) or repeats channels (c < features).

    Added around every resolution or width change (a residual autoencoder, as in DC-AE), it gives
    the network a path that already carries block-averaged pixels from the input to the latent
    and back, so training refines an approximate reconstruction instead of discovering one:
    colours and positions come through from the first steps.
    """
    c = x.shape[-1]
    i = np.arange(max(c, features))
    m = np.zeros((c, features), np.float32)
    m[i % c, i % features] = 1.0
    m /= m.sum(axis=0, keepdims=True)
    return x @ jnp.asarray(m, x.dtype)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """``f32[b t h w c] -> f32[b t h/p w/p (p p c)]``: the pixel-unshuffle stem.

    Folding p x p pixels into channels lets every conv run at 1/p of the resolution with p^2
    times the channels: far fewer, wider matmuls (what CPUs and accelerators are good at).
    """
    return einops.rearrange(x, "b t (h p) (w q) c -> b t h w (p q c)", p=p, q=p)


def spatial_levels(spatial_downsample: Sequence[bool], num_levels: int) -> tuple[bool, ...]:
    """Per downsampling level, whether it halves height and width (``()``: every level does)."""
    if not spatial_downsample:
        return (True,) * (num_levels - 1)
    return tuple(bool(d) for d in spatial_downsample)


class Encoder(nn.Module):
    """``f32[b t h w 3] -> f32[b t' h' w' 2*latent_channels]`` (mean and logvar stacked).

    With ``stream`` returns ``(moments, new_cache)``: the cache is a dict by submodule name of
    each causal conv's last input frames (see ``CausalConv3d``); ``cache=None`` is the first
    chunk (``1 + r_t*k`` frames), later chunks have ``r_t*k`` frames.
    """

    base_channels: int
    channel_mults: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    temporal_downsample: Sequence[bool]
    norm_groups: int
    patch_size: int = 1
    shortcuts: bool = True
    mid_attention: bool = False
    dtype: jnp.dtype = jnp.float32
    spatial_downsample: Sequence[bool] = ()  # per level; () = every level

    @nn.compact
    def __call__(self, x: jax.Array, cache: Cache = None, *, stream: bool = False):
        cache, new = cache or {}, {}

        def run(module, h):
            y, new[module.name] = module(h, cache.get(module.name), stream=True)
            return y

        ch = [self.base_channels * m for m in self.channel_mults]
        halves_space = spatial_levels(self.spatial_downsample, len(ch))
        x = space_to_depth(x, self.patch_size)
        h = run(CausalConv3d(ch[0], dtype=self.dtype, name="conv_in"), x)
        if self.shortcuts:
            h = h + channel_shortcut(x, ch[0])
        for level, c in enumerate(ch):
            for i in range(self.num_res_blocks):
                block = ResBlock3d(
                    c, self.norm_groups, self.dtype, self.shortcuts, name=f"down{level}_res{i}"
                )
                h = run(block, h)
            if level < len(ch) - 1:
                down = Downsample3d(
                    c,
                    bool(self.temporal_downsample[level]),
                    self.shortcuts,
                    self.dtype,
                    halves_space[level],
                    name=f"down{level}_sample",
                )
                h = run(down, h)
        h = run(ResBlock3d(ch[-1], self.norm_groups, self.dtype, name="mid_res"), h)
        if self.mid_attention:
            h = run(FrameAttention(self.norm_groups, self.dtype, name="mid_attn"), h)
        out = nn.silu(PerFrameGroupNorm(self.norm_groups, dtype=self.dtype, name="norm_out")(h))
        out = run(CausalConv3d(2 * self.latent_channels, dtype=self.dtype, name="conv_out"), out)
        if self.shortcuts:  # into the mean only, not the log-variance
            mean = channel_shortcut(h, self.latent_channels)
            out = out + jnp.concatenate([mean, jnp.zeros_like(mean)], axis=-1)
        return (out, new) if stream else out


class Decoder(nn.Module):
    """``f32[b t' h' w' latent_channels] -> f32[b t h w 3]``, mirroring the encoder.

    With ``stream`` returns ``(video, new_cache)`` (as ``Encoder``): the first chunk
    (``cache=None``) of ``1 + k`` latent frames gives ``1 + r_t*k`` frames, later chunks of
    ``k`` latent frames give ``r_t*k``.
    """

    base_channels: int
    channel_mults: Sequence[int]
    num_res_blocks: int
    temporal_downsample: Sequence[bool]
    norm_groups: int
    patch_size: int = 1
    shortcuts: bool = True
    mid_attention: bool = False
    out_channels: int = 3
    dtype: jnp.dtype = jnp.float32
    spatial_downsample: Sequence[bool] = ()  # per level; () = every level

    @nn.compact
    def __call__(self, z: jax.Array, cache: Cache = None, *, stream: bool = False):
        cache, new = cache or {}, {}

        def run(module, h):
            y, new[module.name] = module(h, cache.get(module.name), stream=True)
            return y

        ch = [self.base_channels * m for m in self.channel_mults]
        halves_space = spatial_levels(self.spatial_downsample, len(ch))
        h = run(CausalConv3d(ch[-1], dtype=self.dtype, name="conv_in"), z)
        if self.shortcuts:
            h = h + channel_shortcut(z, ch[-1])
        h = run(ResBlock3d(ch[-1], self.norm_groups, self.dtype, name="mid_res"), h)
        if self.mid_attention:
            h = run(FrameAttention(self.norm_groups, self.dtype, name="mid_attn"), h)
        for level in reversed(range(len(ch))):
            for i in range(self.num_res_blocks):
                block = ResBlock3d(
                    ch[level], self.norm_groups, self.dtype, name=f"up{level}_res{i}"
                )
                h = run(block, h)
            if level > 0:
                # Upsample straight to the finer level's width: the conv then runs at the
                # higher resolution with fewer channels (the dominant cost on CPU).
                up = Upsample3d(
                    ch[level - 1],
                    bool(self.temporal_downsample[level - 1]),
                    self.shortcuts,
                    self.dtype,
                    halves_space[level - 1],
                    name=f"up{level}_sample",
                )
                h = run(up, h)
        p = self.patch_size
        out = nn.silu(PerFrameGroupNorm(self.norm_groups, dtype=self.dtype, name="norm_out")(h))
        conv_out = CausalConv3d(self.out_channels * p * p, dtype=self.dtype, name="conv_out")
        out = run(conv_out, out)
        if self.shortcuts:
            out = out + channel_shortcut(h, self.out_channels * p * p)
        out = einops.rearrange(out, "b t h w (p q c) -> b t (h p) (w q) c", p=p, q=p)
        return (out, new) if stream else out


class CausalVAE(nn.Module):
    """Causal video VAE. Videos ``f32[b t h w 3]`` in [-1, 1] with ``t = 1 + k * r_t``.

    Latents are ``f32[b t' h' w' latent_channels]`` with ``t' = 1 + (t - 1) / r_t``,
    ``h' = h / r_s``, ``w' = w / r_s`` (``r_t = temporal_compression``,
    ``r_s = spatial_compression``). Images are ``t = 1`` videos and map to ``t' = 1``.

    ``__call__`` samples the posterior with ``self.make_rng('posterior')``, so ``init`` and
    ``apply`` with ``sample_posterior=True`` need a ``'posterior'`` rng.
    """

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    temporal_downsample: tuple[bool, ...] = (True, True)
    norm_groups: int = 8
    patch_size: int = 1  # pixel-unshuffle stem: spatial compression is patch * 2^(levels-1)
    shortcuts: bool = True  # parameter-free residual paths around every reshaping layer
    mid_attention: bool = False  # per-frame self-attention after the mid residual blocks
    dtype: jnp.dtype = jnp.float32
    # Per level, whether it halves height and width (() = every level): a level that halves
    # only time keeps a finer latent grid (spatial compression patch * 2^(halving levels)).
    spatial_downsample: tuple[bool, ...] = ()

    # ---- static geometry (usable on the unbound module) ---------------------------------
    @property
    def spatial_compression(self) -> int:
        halvings = spatial_levels(self.spatial_downsample, len(self.channel_mults))
        return self.patch_size * 2 ** sum(halvings)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(bool(d) for d in self.temporal_downsample)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(t', h', w', latent_channels)`` for a ``num_frames x height x width`` video."""
        self._check_config()
        r_t, r_s = self.temporal_compression, self.spatial_compression
        if num_frames < 1 or (num_frames - 1) % r_t:
            raise ValueError(
                f"num_frames={num_frames} must be 1 + k * temporal_compression ({r_t}), k >= 0"
            )
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % r_s:
                raise ValueError(
                    f"{name}={size} must be a positive multiple of spatial_compression ({r_s})"
                )
        return (1 + (num_frames - 1) // r_t, height // r_s, width // r_s, self.latent_channels)

    def _check_config(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if len(self.channel_mults) < 1:
            raise ValueError("channel_mults must have at least one entry")
        if len(self.temporal_downsample) != len(self.channel_mults) - 1:
            raise ValueError(
                f"temporal_downsample has {len(self.temporal_downsample)} entries, expected "
                f"len(channel_mults) - 1 = {len(self.channel_mults) - 1}"
            )
        if self.spatial_downsample and len(self.spatial_downsample) != len(self.channel_mults) - 1:
            raise ValueError(
                f"spatial_downsample has {len(self.spatial_downsample)} entries, expected "
                f"len(channel_mults) - 1 = {len(self.channel_mults) - 1} (or none: every level)"
            )
        for m in self.channel_mults:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(
                    f"channels base_channels*mult = {self.base_channels * m} not divisible by "
                    f"norm_groups={self.norm_groups}"
                )

    # ---- modules -------------------------------------------------------------------------
    def setup(self):
        self._check_config()
        self.encoder = Encoder(
            base_channels=self.base_channels,
            channel_mults=tuple(self.channel_mults),
            num_res_blocks=self.num_res_blocks,
            latent_channels=self.latent_channels,
            temporal_downsample=tuple(self.temporal_downsample),
            norm_groups=self.norm_groups,
            patch_size=self.patch_size,
            shortcuts=self.shortcuts,
            mid_attention=self.mid_attention,
            dtype=self.dtype,
            spatial_downsample=tuple(self.spatial_downsample),
        )
        self.decoder = Decoder(
            base_channels=self.base_channels,
            channel_mults=tuple(self.channel_mults),
            num_res_blocks=self.num_res_blocks,
            temporal_downsample=tuple(self.temporal_downsample),
            norm_groups=self.norm_groups,
            patch_size=self.patch_size,
            shortcuts=self.shortcuts,
            mid_attention=self.mid_attention,
            dtype=self.dtype,
            spatial_downsample=tuple(self.spatial_downsample),
        )

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``f32[b t h w 3] -> (mean, logvar)``, each ``f32[b t' h' w' latent_channels]``."""
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"encode expects f32[b t h w 3], got shape {x.shape}")
        _, t, h, w, _ = x.shape
        self.latent_shape(t, h, w)  # validates the geometry
        moments = self.encoder(x).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """``f32[b t' h' w' latent_channels] -> f32[b 1+(t'-1)*r_t h'*r_s w'*r_s 3]``."""
        if z.ndim != 5 or z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"decode expects f32[b t' h' w' {self.latent_channels}], got shape {z.shape}"
            )
        return self.decoder(z).astype(jnp.float32)

    # ---- streaming (chunk by chunk along time; see sora_jax.models.vae_inference) ---------
    def _check_chunk(self, what: str, frames: int, first: bool, step: int) -> None:
        ok = (
            frames >= 1 and (frames - 1) % step == 0
            if first
            else frames >= step and not frames % step
        )
        if not ok:
            need = f"1 + {step}*k frames" if first else f"{step}*k frames, k >= 1"
            which = "the first chunk (cache=None)" if first else "a later chunk"
            raise ValueError(f"{what}: {which} needs {need}, got {frames}")

    def encode_chunk(self, x: jax.Array, cache: Cache = None):
        """One time chunk of a video: ``f32[b t h w 3] -> (mean, logvar, new_cache)``.

        ``cache=None`` starts a video: ``t = 1 + r_t*k``; later chunks pass the returned cache
        and have ``t = r_t*k`` (k >= 1). Concatenating the chunks' means along time gives exactly
        ``encode`` of the whole video (every layer is causal and per-frame). The cache is a
        pytree of arrays whose shapes do not depend on ``t`` (a ``lax.scan`` carry).
        """
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"encode_chunk expects f32[b t h w 3], got shape {x.shape}")
        _, t, h, w, _ = x.shape
        self.latent_shape(1, h, w)  # validates the spatial geometry
        self._check_chunk("encode_chunk", t, cache is None, self.temporal_compression)
        moments, cache = self.encoder(x, cache, stream=True)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX), cache

    def decode_chunk(self, z: jax.Array, cache: Cache = None):
        """One time chunk of latents: ``f32[b t' h' w' c] -> (video, new_cache)``.

        ``cache=None`` starts a video (``1 + r_t*(t' - 1)`` frames out); later chunks give
        ``r_t*t'`` frames each, continuing ``decode`` of the whole latent video exactly.
        """
        if z.ndim != 5 or z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"decode_chunk expects f32[b t' h' w' {self.latent_channels}], got shape {z.shape}"
            )
        video, cache = self.decoder(z, cache, stream=True)
        return video.astype(jnp.float32), cache

    def __call__(
        self, x: jax.Array, sample_posterior: bool = True
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``f32[b t h w 3] -> (recon f32[b t h w 3], mean, logvar f32[b t' h' w' c])``."""
        mean, logvar = self.encode(x)
        z = posterior_sample(mean, logvar, self.make_rng("posterior")) if sample_posterior else mean
        return self.decode(z), mean, logvar


def posterior_sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian N(mean, exp(logvar)), same shape as ``mean``."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis: ``f32[b]``."""
    mean = mean.astype(jnp.float32)
    logvar = logvar.astype(jnp.float32)
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(axis=-1)


def validate_geometry(config):
    """config.vae.model's compression is computable (the size checks of other sections use it)."""
    m = config.vae.model
    cc.positive(config, "vae.model.patch_size")
    cc.check(
        len(m.spatial_downsample) in (0, len(m.channel_mults) - 1),
        "vae.model.spatial_downsample",
        m.spatial_downsample,
        f"needs len(channel_mults)-1={len(m.channel_mults) - 1} entries (or none: every level)",
    )


def validate_config(config):
    """Checks config.vae.* (its `train` section is checked with the other stages' trainers)."""
    m = config.vae.model
    cc.check(
        len(m.temporal_downsample) == len(m.channel_mults) - 1,
        "vae.model.temporal_downsample",
        m.temporal_downsample,
        f"needs len(channel_mults)-1={len(m.channel_mults) - 1} entries",
    )
    cc.positive(
        config,
        "vae.model.base_channels",
        "vae.model.latent_channels",
        "vae.model.norm_groups",
        "vae.model.num_res_blocks",
    )
    for mult in m.channel_mults:
        cc.check(
            (m.base_channels * mult) % m.norm_groups == 0,
            "vae.model.norm_groups",
            m.norm_groups,
            f"must divide every level's channels ({m.base_channels * mult})",
        )
    inf = config.vae.inference
    cc.positive(config, "vae.inference.chunk_latent_frames", "vae.inference.tile_latent_size")
    cc.check(
        0 <= inf.tile_latent_overlap <= inf.tile_latent_size // 2,
        "vae.inference.tile_latent_overlap",
        inf.tile_latent_overlap,
        f"must be in [0, tile_latent_size // 2 = {inf.tile_latent_size // 2}]",
    )
    cc.check(
        inf.tiled or not inf.shard_tiles,
        "vae.inference.shard_tiles",
        inf.shard_tiles,
        "spreads tiles over devices: it needs vae.inference.tiled = True",
    )
    for key in ("mse_weight", "kl_weight", "latent_noise"):
        cc.check(config.vae[key] >= 0, f"vae.{key}", config.vae[key], "must be >= 0")
    _validate_losses(config)


def _validate_losses(config):
    v = config.vae
    p, g = v.perceptual, v.gan
    cc.check(p.weight >= 0, "vae.perceptual.weight", p.weight, "must be >= 0")
    cc.check(
        p.weight == 0 or bool(p.path),
        "vae.perceptual.path",
        p.path,
        "vae.perceptual.weight > 0 needs the path of a local LPIPS weights file "
        "(.safetensors or .npz; layout in sora_jax/models/lpips.py)",
    )
    cc.check(g.weight >= 0, "vae.gan.weight", g.weight, "must be >= 0")
    cc.check(g.start_step >= 0, "vae.gan.start_step", g.start_step, "must be >= 0")
    cc.check(len(g.channels) >= 1, "vae.gan.channels", g.channels, "must not be empty")
    cc.check(
        len(g.temporal_downsample) == len(g.channels) - 1,
        "vae.gan.temporal_downsample",
        g.temporal_downsample,
        f"needs len(vae.gan.channels)-1={len(g.channels) - 1} entries",
    )
    cc.positive(
        config,
        "vae.gan.norm_groups",
        "vae.gan.learning_rate",
        "vae.gan.max_adaptive_weight",
        "vae.latent_stats_batches",
    )
    for c in g.channels[1:]:
        cc.check(
            c % g.norm_groups == 0,
            "vae.gan.norm_groups",
            g.norm_groups,
            f"must divide every downsampling level's channels ({c})",
        )

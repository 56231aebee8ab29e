"""Memory-bounded VAE inference: time chunks with a causal cache, and overlapping spatial tiles.

Time chunks (exact). The VAE is causal and per-frame (``sora_jax.models.vae``), so a video can
go through it chunk by chunk along time, each causal conv carrying its last ``k_t - 1`` input
frames across chunk boundaries. Chunks follow the ``1 + r_t*k`` frame structure:

    latent frames:  [0] [1 .. m] [m+1 .. 2m] ...          (m = chunk_latent_frames)
    video frames:   [0] [1 .. r_t*m] [r_t*m+1 .. 2*r_t*m] ...

The first chunk is one frame (an image), later chunks ``m`` latent frames (``r_t*m`` video
frames); a ``lax.scan`` runs them, so one program holds one chunk's activations whatever the
length. The last chunk is padded at the END (repeating the last frame): causality means padding
after a frame never changes it, and the surplus output is cut off. The result equals the
full-video result up to float rounding (tests: 1e-5 in float32).

Spatial tiles (approximate). Frames larger than a tile are cut into overlapping tiles (sizes in
latent units), each tile goes through the VAE alone and the outputs are blended with weights
that ramp linearly across the overlaps and are normalised to sum to 1 at every pixel. Tiles see
zero padding instead of their neighbours at their borders, so tiling is close to, not equal to,
the untiled result: the overlap should cover the VAE's receptive field near the tile edges.

Sizes the VAE cannot take (``t != 1 + r_t*k``, ``h, w`` not multiples of ``r_s``) raise
ValueError in ``encode``/``decode``; ``reconstruct`` instead pads (repeating the last frame,
row and column) and crops the result back.
"""

from __future__ import annotations

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import vae as vae_lib

__all__ = [
    "InferenceConfig",
    "from_config",
    "chunked_encode",
    "chunked_decode",
    "tile_starts",
    "blend_weights",
    "tiled",
    "encode",
    "decode",
    "reconstruct",
]


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How to run the VAE on large inputs (``config.vae.inference``); hashable, so static.

    chunked: time chunks with a causal cache (exact), for inputs longer than one chunk
        (``1 + chunk_latent_frames`` latent frames); shorter ones run whole (one program).
    chunk_latent_frames: latent frames per chunk after the first (``r_t`` x video frames).
    tiled: overlapping spatial tiles (approximate) for frames larger than one tile.
    tile_latent_size, tile_latent_overlap: tile side and overlap in latent pixels.
    """

    chunked: bool = False
    chunk_latent_frames: int = 4
    tiled: bool = False
    tile_latent_size: int = 32
    tile_latent_overlap: int = 8

    def __post_init__(self):
        if self.chunk_latent_frames < 1:
            raise ValueError(f"chunk_latent_frames={self.chunk_latent_frames}: must be >= 1")
        if self.tile_latent_size < 1:
            raise ValueError(f"tile_latent_size={self.tile_latent_size}: must be >= 1")
        if not 0 <= self.tile_latent_overlap <= self.tile_latent_size // 2:
            raise ValueError(
                f"tile_latent_overlap={self.tile_latent_overlap}: must be in "
                f"[0, tile_latent_size // 2 = {self.tile_latent_size // 2}] (at most two tiles "
                "overlap anywhere)"
            )


def from_config(config) -> InferenceConfig:
    """The ``InferenceConfig`` of ``config.vae.inference``."""
    i = config.vae.inference
    return InferenceConfig(
        chunked=bool(i.chunked),
        chunk_latent_frames=int(i.chunk_latent_frames),
        tiled=bool(i.tiled),
        tile_latent_size=int(i.tile_latent_size),
        tile_latent_overlap=int(i.tile_latent_overlap),
    )


def _pad_time_end(x: jax.Array, frames: int) -> jax.Array:
    """``x`` with ``frames`` copies of its last frame appended (causal: earlier outputs keep)."""
    if not frames:
        return x
    return jnp.concatenate([x, jnp.repeat(x[:, -1:], frames, axis=1)], axis=1)


def _chunks(x: jax.Array, size: int) -> tuple[jax.Array, int]:
    """``f32[b t ...] -> (f32[n b size ...], t)``: end-padded to ``n*size`` frames."""
    t = x.shape[1]
    n = -(-t // size)
    x = _pad_time_end(x, n * size - t)
    return einops.rearrange(x, "b (n s) ... -> n b s ...", s=size), t


def _unchunk(ys: jax.Array, frames: int) -> jax.Array:
    """``f32[n b s ...] -> f32[b frames ...]`` (the padding cut off)."""
    return einops.rearrange(ys, "n b s ... -> b (n s) ...")[:, :frames]


def chunked_encode(
    model: vae_lib.CausalVAE, params, x: jax.Array, chunk_latent_frames: int
) -> tuple[jax.Array, jax.Array]:
    """``f32[b t h w 3] -> (mean, logvar)`` each ``f32[b t' h' w' c]``, chunk by chunk.

    Same result as ``model.encode``; holds one chunk of ``r_t * chunk_latent_frames`` frames'
    activations at a time.
    """
    model.latent_shape(*x.shape[1:4])  # validates the geometry
    variables = {"params": params}
    r_t = model.temporal_compression
    mean0, logvar0, cache = model.apply(variables, x[:, :1], method=model.encode_chunk)
    if x.shape[1] == 1:
        return mean0, logvar0
    xs, t = _chunks(x[:, 1:], r_t * chunk_latent_frames)

    def body(cache, xc):
        mean, logvar, cache = model.apply(variables, xc, cache, method=model.encode_chunk)
        return cache, (mean, logvar)

    _, (means, logvars) = jax.lax.scan(body, cache, xs)
    mean = jnp.concatenate([mean0, _unchunk(means, t // r_t)], axis=1)
    logvar = jnp.concatenate([logvar0, _unchunk(logvars, t // r_t)], axis=1)
    return mean, logvar


def chunked_decode(
    model: vae_lib.CausalVAE, params, z: jax.Array, chunk_latent_frames: int
) -> jax.Array:
    """``f32[b t' h' w' c] -> f32[b 1+(t'-1)*r_t h w 3]``, chunk by chunk; equals ``decode``."""
    variables = {"params": params}
    r_t = model.temporal_compression
    y0, cache = model.apply(variables, z[:, :1], method=model.decode_chunk)
    if z.shape[1] == 1:
        return y0
    zs, t = _chunks(z[:, 1:], chunk_latent_frames)

    def body(cache, zc):
        y, cache = model.apply(variables, zc, cache, method=model.decode_chunk)
        return cache, y

    _, ys = jax.lax.scan(body, cache, zs)
    return jnp.concatenate([y0, _unchunk(ys, t * r_t)], axis=1)


# ---- spatial tiles --------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``[0, length)``, spread
    evenly so that neighbours overlap by at least ``overlap`` (all tiles have the same size:
    one compiled program decodes them all)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def blend_weights(length: int, tile: int, overlap: int, scale: int = 1) -> np.ndarray:
    """``f32[n tile'*scale]``: per-tile weights along one axis of ``length*scale`` pixels for the
    tiles of ``tile_starts(length, tile, overlap)`` (``tile' = min(tile, length)``; positions in
    units of ``scale`` pixels). They ramp linearly over ``overlap*scale`` pixels at inner tile
    edges and are normalised so that the tiles' weights sum to exactly 1 at every pixel."""
    starts = [s * scale for s in tile_starts(length, tile, overlap)]
    size, total_len, ov = min(tile, length) * scale, length * scale, overlap * scale
    i = np.arange(size, dtype=np.float64) + 0.5
    ramp = np.minimum(1.0, i / max(ov, 1e-9))
    raw = []
    for s in starts:
        w = np.ones(size)
        if s > 0:
            w = np.minimum(w, ramp)  # fade in where the previous tile is
        if s + size < total_len:
            w = np.minimum(w, ramp[::-1])  # fade out where the next tile is
        raw.append(w)
    total = np.zeros(total_len)
    for s, w in zip(starts, raw):
        total[s : s + size] += w
    return np.stack([w / total[s : s + size] for s, w in zip(starts, raw)]).astype(np.float32)


def tiled(fn, x: jax.Array, tile: int, overlap: int, in_scale: int, out_scale: int) -> jax.Array:
    """Applies ``fn: f32[b t h w c] -> f32[b t' h*s w*s c']`` (``s = out_scale / in_scale``)
    tile by tile and blends the tiles.

    ``x`` is ``f32[b t H*in_scale W*in_scale c]``; tile sizes, overlaps and offsets are in
    units of ``in_scale`` input pixels (= ``out_scale`` output pixels): latent pixels for the
    VAE. All tiles go through one ``lax.map`` (one program, one tile's activations at a time).
    """
    b, t, h_in, w_in, c = x.shape
    if h_in % in_scale or w_in % in_scale:
        raise ValueError(f"tiled: input {h_in}x{w_in} is not a multiple of {in_scale}")
    h, w = h_in // in_scale, w_in // in_scale
    if h <= tile and w <= tile:
        return fn(x)
    hs, ws = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    tiles = jnp.stack(
        [
            x[:, :, i * in_scale : (i + th) * in_scale, j * in_scale : (j + tw) * in_scale]
            for i in hs
            for j in ws
        ]
    )
    outs = jax.lax.map(fn, tiles)  # f32[n b t' th*out tw*out c']
    wh = blend_weights(h, tile, overlap, out_scale)
    ww = blend_weights(w, tile, overlap, out_scale)
    _, _, t_out, _, _, c_out = outs.shape
    out = jnp.zeros((b, t_out, h * out_scale, w * out_scale, c_out), outs.dtype)
    k = 0
    for a, i in enumerate(hs):
        for bb, j in enumerate(ws):
            weight = jnp.asarray(np.outer(wh[a], ww[bb]))[None, None, :, :, None]
            rows = slice(i * out_scale, (i + th) * out_scale)
            cols = slice(j * out_scale, (j + tw) * out_scale)
            out = out.at[:, :, rows, cols].add(weight * outs[k])
            k += 1
    return out


# ---- the VAE with an InferenceConfig ----------------------------------------------------------


def encode(
    model: vae_lib.CausalVAE, params, x: jax.Array, cfg: InferenceConfig
) -> tuple[jax.Array, jax.Array]:
    """``f32[b t h w 3] -> (mean, logvar)``, chunked and/or tiled as ``cfg`` says (jit-able)."""
    model.latent_shape(*x.shape[1:4])

    def one(v):
        if cfg.chunked and v.shape[1] > 1 + model.temporal_compression * cfg.chunk_latent_frames:
            return chunked_encode(model, params, v, cfg.chunk_latent_frames)
        return model.apply({"params": params}, v, method=model.encode)

    if not cfg.tiled:
        return one(x)
    # Tile the stacked moments: logvar blends like the mean (both are smooth per-pixel maps).
    stacked = tiled(
        lambda v: jnp.concatenate(one(v), axis=-1),
        x,
        cfg.tile_latent_size,
        cfg.tile_latent_overlap,
        model.spatial_compression,
        1,
    )
    mean, logvar = jnp.split(stacked, 2, axis=-1)
    return mean, logvar


def decode(model: vae_lib.CausalVAE, params, z: jax.Array, cfg: InferenceConfig) -> jax.Array:
    """``f32[b t' h' w' c] -> f32[b t h w 3]``, chunked and/or tiled as ``cfg`` says."""
    if z.ndim != 5 or z.shape[-1] != model.latent_channels:
        raise ValueError(
            f"decode expects f32[b t' h' w' {model.latent_channels}], got shape {z.shape}"
        )

    def one(v):
        if cfg.chunked and v.shape[1] > 1 + cfg.chunk_latent_frames:
            return chunked_decode(model, params, v, cfg.chunk_latent_frames)
        return model.apply({"params": params}, v, method=model.decode)

    if not cfg.tiled:
        return one(z)
    return tiled(
        one, z, cfg.tile_latent_size, cfg.tile_latent_overlap, 1, model.spatial_compression
    )


def padded_size(model: vae_lib.CausalVAE, t: int, h: int, w: int) -> tuple[int, int, int]:
    """The smallest ``(t, h, w)`` the VAE takes that holds a ``t x h x w`` video."""
    r_t, r_s = model.temporal_compression, model.spatial_compression
    if min(t, h, w) < 1:
        raise ValueError(f"video size {t}x{h}x{w}: every dimension must be >= 1")
    return 1 + -(-(t - 1) // r_t) * r_t, -(-h // r_s) * r_s, -(-w // r_s) * r_s


def reconstruct(model: vae_lib.CausalVAE, params, x: jax.Array, cfg: InferenceConfig) -> jax.Array:
    """``f32[b t h w 3] -> f32[b t h w 3]``: encode (posterior mean) + decode, any size.

    Sizes the VAE cannot take are padded by repeating the last frame / row / column (at the
    end, so the causal frames before it are unaffected) and the result is cropped back.
    """
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"reconstruct expects f32[b t h w 3], got shape {x.shape}")
    _, t, h, w, _ = x.shape
    tp, hp, wp = padded_size(model, t, h, w)
    xp = jnp.pad(x, ((0, 0), (0, tp - t), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    mean, _ = encode(model, params, xp, cfg)
    return decode(model, params, mean, cfg)[:, :t, :h, :w]

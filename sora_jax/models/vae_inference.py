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

Tiles over devices (``sharded_decode``). Decoding a large video spreads the rows of tiles over
a mesh's devices: each device decodes its rows' tiles (all columns, every tile chunked along
time as above), blends them into a canvas around its own band of output rows, and swaps the
overlaps with its neighbours (``ppermute``), so the video comes out split along its height and
no device ever holds all of it. Same tiles and weights as the one-device ``tiled`` decode, so
the same result up to float summation order (tests: 1e-5 in float32).

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
from jax.sharding import PartitionSpec as P

from sora_jax.models import vae as vae_lib

__all__ = [
    "InferenceConfig",
    "TilePlan",
    "blend_weights",
    "chunked_decode",
    "chunked_encode",
    "decode",
    "encode",
    "from_config",
    "reconstruct",
    "sharded_decode",
    "tile_plan",
    "tile_starts",
    "tiled",
]


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How to run the VAE on large inputs (``config.vae.inference``); hashable, so static.

    chunked: time chunks with a causal cache (exact), for inputs longer than one chunk
        (``1 + chunk_latent_frames`` latent frames); shorter ones run whole (one program).
    chunk_latent_frames: latent frames per chunk after the first (``r_t`` x video frames).
    tiled: overlapping spatial tiles (approximate) for frames larger than one tile.
    tile_latent_size, tile_latent_overlap: tile side and overlap in latent pixels.
    shard_tiles: decode (tiled) with the rows of tiles spread over a mesh's devices, the
        output split along its height (``sharded_decode``), when a mesh is given.
    """

    chunked: bool = False
    chunk_latent_frames: int = 4
    tiled: bool = False
    tile_latent_size: int = 32
    tile_latent_overlap: int = 8
    shard_tiles: bool = False

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
        shard_tiles=bool(i.shard_tiles),
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


def _decode_fn(model: vae_lib.CausalVAE, params, cfg: InferenceConfig):
    """``f32[b t' h' w' c] -> f32[b t h w 3]`` of one (untiled) input, chunked as ``cfg`` says."""

    def one(v):
        if cfg.chunked and v.shape[1] > 1 + cfg.chunk_latent_frames:
            return chunked_decode(model, params, v, cfg.chunk_latent_frames)
        return model.apply({"params": params}, v, method=model.decode)

    return one


def _check_latents(model: vae_lib.CausalVAE, z) -> None:
    if z.ndim != 5 or z.shape[-1] != model.latent_channels:
        raise ValueError(
            f"decode expects f32[b t' h' w' {model.latent_channels}], got shape {z.shape}"
        )


def decode(
    model: vae_lib.CausalVAE, params, z: jax.Array, cfg: InferenceConfig, mesh=None
) -> jax.Array:
    """``f32[b t' h' w' c] -> f32[b t h w 3]``, chunked and/or tiled as ``cfg`` says; with
    ``cfg.shard_tiles`` and a ``mesh`` the tile rows are spread over its devices."""
    _check_latents(model, z)
    if cfg.shard_tiles and mesh is not None:
        return sharded_decode(model, params, z, cfg, mesh)
    one = _decode_fn(model, params, cfg)
    if not cfg.tiled:
        return one(z)
    return tiled(
        one, z, cfg.tile_latent_size, cfg.tile_latent_overlap, 1, model.spatial_compression
    )


# ---- tiles over devices -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Static geometry of a sharded tiled decode (latent units unless said).

    hs, ws: tile starts along height and width (``tile_starts``); th, tw: tile size;
    devices: the devices the tile rows are spread over (``len(hs) / devices`` rows each);
    scale: output pixels per latent pixel; band: output rows each device keeps; reach: output
    rows beyond its band that a device's tiles cover on either side (at most one band, so
    only next neighbours overlap).
    """

    hs: tuple[int, ...]
    ws: tuple[int, ...]
    th: int
    tw: int
    devices: int
    scale: int
    band: int
    reach: int

    @property
    def rows_per_device(self) -> int:
        return len(self.hs) // self.devices

    def strip(self, k: int) -> tuple[int, int]:
        """Output rows [lo, hi) the tiles of device ``k`` cover."""
        q = self.rows_per_device
        return self.hs[k * q] * self.scale, (self.hs[(k + 1) * q - 1] + self.th) * self.scale


def tile_plan(h: int, w: int, tile: int, overlap: int, scale: int, devices: int) -> TilePlan:
    """The ``TilePlan`` of an ``h x w`` latent frame on ``devices`` devices; ValueError when
    the tile rows or the output height do not split evenly over them, or a device's tiles
    reach past its neighbours' bands."""
    hs, ws = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    where = f"sharded tiled decode over {devices} devices (latent height {h}, tile {tile}, "
    where += f"overlap {overlap})"
    if len(hs) % devices:
        raise ValueError(
            f"{where}: its {len(hs)} tile rows do not split over the devices; choose "
            f"vae.inference.tile_latent_size / tile_latent_overlap giving a multiple of "
            f"{devices} rows, or a mesh of fewer devices"
        )
    if (h * scale) % devices:
        raise ValueError(f"{where}: output height {h * scale} does not split over the devices")
    band = h * scale // devices
    plan = TilePlan(tuple(hs), tuple(ws), min(tile, h), min(tile, w), devices, scale, band, 0)
    strips = [plan.strip(k) for k in range(devices)]
    reach = max(max(k * band - lo, hi - (k + 1) * band, 0) for k, (lo, hi) in enumerate(strips))
    if reach > band:
        raise ValueError(
            f"{where}: a device's tiles reach {reach} rows past its band of {band}; use "
            "smaller tiles or fewer devices"
        )
    return dataclasses.replace(plan, reach=reach)


def sharded_decode(
    model: vae_lib.CausalVAE, params, z: jax.Array, cfg: InferenceConfig, mesh
) -> jax.Array:
    """``f32[b t' h' w' c] -> f32[b t h w 3]`` split along h over all of ``mesh``'s devices
    (``NamedSharding(mesh, P(None, None, mesh.axis_names))``): each device decodes its rows of
    ``cfg``'s tiles and keeps its band of ``h / devices`` output rows. Jit-able; the latents
    and params are replicated (both are small next to the video)."""
    _check_latents(model, z)
    if not cfg.tiled:
        raise ValueError("vae.inference.shard_tiles needs vae.inference.tiled = True")
    b, _, h, w, _ = z.shape
    s = model.spatial_compression
    axes = tuple(mesh.axis_names)
    plan = tile_plan(h, w, cfg.tile_latent_size, cfg.tile_latent_overlap, s, mesh.size)
    one = _decode_fn(model, params, cfg)
    y_tile = jax.eval_shape(
        one, jax.ShapeDtypeStruct((b, z.shape[1], plan.th, plan.tw, z.shape[4]), z.dtype)
    )

    def per_device(params, z):
        k = jax.lax.axis_index(axes)
        canvas = _device_canvas(model, params, cfg, z, plan, k, y_tile)
        return _own_band(canvas, plan, axes)

    fn = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P()),
        out_specs=P(None, None, axes, None, None),
        check_vma=False,
    )
    return fn(params, z)


def _device_canvas(model, params, cfg, z, plan: TilePlan, k, y_tile) -> jax.Array:
    """``f32[b t band+2*reach W 3]``: device ``k``'s tiles, weighted and summed over its band
    and ``reach`` rows on either side (one tile decoded at a time, into place)."""
    one = _decode_fn(model, params, cfg)
    s, q, cols = plan.scale, plan.rows_per_device, len(plan.ws)
    b, t, _, _, c = y_tile.shape
    hs, ws = jnp.asarray(plan.hs), jnp.asarray(plan.ws)
    wh = jnp.asarray(blend_weights(z.shape[2], cfg.tile_latent_size, cfg.tile_latent_overlap, s))
    ww = jnp.asarray(blend_weights(z.shape[3], cfg.tile_latent_size, cfg.tile_latent_overlap, s))
    origin = k * plan.band - plan.reach  # the canvas's first output row
    canvas = jnp.zeros((b, t, plan.band + 2 * plan.reach, z.shape[3] * s, c), y_tile.dtype)

    def add_tile(canvas, j):
        r, col = k * q + j // cols, j % cols
        zt = jax.lax.dynamic_slice(
            z, (0, 0, hs[r], ws[col], 0), (b, z.shape[1], plan.th, plan.tw, z.shape[4])
        )
        y = one(zt) * (wh[r][:, None] * ww[col][None, :])[None, None, :, :, None]
        at = (0, 0, hs[r] * s - origin, ws[col] * s, 0)
        return jax.lax.dynamic_update_slice(
            canvas, jax.lax.dynamic_slice(canvas, at, y.shape) + y, at
        ), None

    canvas, _ = jax.lax.scan(add_tile, canvas, jnp.arange(q * cols))
    return canvas


def _own_band(canvas: jax.Array, plan: TilePlan, axes) -> jax.Array:
    """``f32[b t band W 3]``: a device's own band, its canvas's middle plus the rows its
    neighbours' canvases put there (``ppermute`` of ``reach`` rows each way)."""
    r, band, n = plan.reach, plan.band, plan.devices
    out = canvas[:, :, r : r + band]
    if r == 0 or n == 1:
        return out
    # Device i's canvas ends with the first r rows of band i + 1 and starts with the last r
    # rows of band i - 1.
    from_above = jax.lax.ppermute(
        canvas[:, :, band + r :], axes, [(i, i + 1) for i in range(n - 1)]
    )
    from_below = jax.lax.ppermute(canvas[:, :, :r], axes, [(i, i - 1) for i in range(1, n)])
    out = out.at[:, :, :r].add(from_above)
    return out.at[:, :, band - r :].add(from_below)


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

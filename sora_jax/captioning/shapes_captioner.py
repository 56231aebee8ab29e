"""Built-in captioner of moving-shapes videos: every attribute measured from the pixels.

Colour, direction and speed come from `sora_jax.evaluation.prompt_following`; this module adds
what a dense caption needs beyond prompt-following, measured on a soft foreground coverage map
(saturation scaled between the background's and the shape's), which keeps the shape's outline
through the 2x2 chroma subsampling of mp4 (yuv420p) where a thresholded mask turns blocky:
  shape       rotational harmonics of the coverage about its centroid, normalised by the area:
              r^3 sin(3 theta) is strongly negative only for the apex-up triangle, r^4 cos(4 theta)
              only for the axis-aligned square, both about zero for a circle (median over frames);
  size        the shape's extent from its area (median over frames, through the unit-area
              extent of the measured shape), nearest named size in log space;
  background  the mean of the pixels away from the foreground, nearest named background colour
              (texture patterns average to about zero);
  texture     the static background pattern (the per-pixel median over time of background
              pixels, minus its mean): 'plain' when it is flat, else the best-correlated of the
              grammar's checkered / striped patterns, 'noisy' when neither matches;
  path        the centroid's first and last position as words (e.g. 'from the top left to the
              centre'), for the 'detailed' caption style.

Style 'grammar' writes the training grammar's caption (`shapes.caption`), so recaptioned data
trains the closed-vocabulary text encoder; 'detailed' appends the path clause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sora_jax.data import shapes, video_io
from sora_jax.evaluation import prompt_following

STYLES = ("grammar", "detailed")

# The background pattern's std (grey levels) below which it counts as plain; textures have
# amplitude 14 (std 14 checkered / striped, ~8 noisy), codec noise about 1-2.
_FLAT_STD = 3.5
# Correlation with the checkered / striped template above which the texture is that pattern.
_PATTERN_CORRELATION = 0.5
# Coverage below this is treated as background (codec ringing).
_MIN_COVERAGE = 0.15
# Harmonic thresholds, halfway between the shapes' measured ranges after an mp4 round trip
# (triangle m3 <= -0.036, others >= -0.005; square m4 <= -0.014, circle >= -0.007).
_TRIANGLE_M3 = -0.02
_SQUARE_M4 = -0.01
# Foreground pixels are grown by this many pixels before reading the background (codec bleed).
_DILATE = 2

_SIZE_NAMES = tuple(shapes.SIZES)
_LOG_SIZES = np.log(np.asarray([shapes.SIZES[s] for s in _SIZE_NAMES]))
_BG_NAMES = tuple(shapes.BACKGROUNDS)
_BG_RGB = np.asarray([shapes.BACKGROUNDS[b] for b in _BG_NAMES], np.float32)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """bool[t h w] grown by r pixels (square neighbourhood) in h and w."""
    out = mask.copy()
    _, h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = np.zeros_like(mask)
            shifted[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
                :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            out |= shifted
    return out


def coverage(video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """f32[t h w] in [0, 1]: how much of each pixel the shape covers, from its saturation."""
    v = video.astype(np.int16)
    sat = (v.max(-1) - v.min(-1)).astype(np.float32)
    fg, bg = float(np.median(sat[mask])), float(np.median(sat[~mask]))
    cov = np.clip((sat - bg) / max(fg - bg, 1.0), 0.0, 1.0)
    return np.where(cov > _MIN_COVERAGE, cov, 0.0)


def _shape_and_size(cov: np.ndarray) -> tuple[str | None, str | None]:
    """(shape, size) of the coverage f32[t h w] (None, None without a usable frame)."""
    t, h, w = cov.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    areas, m3s, m4s = [], [], []
    for f in cov:
        area = float(f.sum())
        if area < prompt_following.MIN_PIXELS:
            continue
        dy, dx = yy - (f * yy).sum() / area, xx - (f * xx).sum() / area
        r, theta = np.hypot(dy, dx), np.arctan2(-dy, dx)  # theta counter-clockwise, up = +pi/2
        areas.append(area)
        m3s.append((f * r**3 * np.sin(3 * theta)).sum() / area**2.5)
        m4s.append((f * r**4 * np.cos(4 * theta)).sum() / area**3)
    if not areas:
        return None, None
    if np.median(m3s) < _TRIANGLE_M3:
        shape = "triangle"
    elif np.median(m4s) < _SQUARE_M4:
        shape = "square"
    else:
        shape = "circle"
    extent = prompt_following._UNIT_AREA_RADIUS[shape] * math.sqrt(float(np.median(areas)))
    size = _SIZE_NAMES[int(np.argmin(np.abs(_LOG_SIZES - math.log(extent / min(h, w)))))]
    return shape, size


def _texture_templates(height: int, width: int) -> dict[str, np.ndarray]:
    """f32[h w] zero-mean patterns of the grammar's periodic textures at this size."""
    out = {}
    for name in ("checkered", "striped"):
        attrs = dict(background="black", texture=name)
        pattern = shapes._background(attrs, height, width, np.random.default_rng(0))[..., 0]
        out[name] = pattern - pattern.mean()
    return out


def _background(video: np.ndarray, mask: np.ndarray) -> tuple[str | None, str | None]:
    """(background colour, texture) read from the pixels of uint8[t h w 3] outside mask."""
    t, h, w, _ = video.shape
    away = ~_dilate(mask, _DILATE)
    if away.sum() < 16:
        return None, None
    grey = video.astype(np.float32)
    colour = grey[away].mean(0)
    background = _BG_NAMES[int(np.argmin(((_BG_RGB - colour) ** 2).sum(-1)))]
    # Static pattern: per-pixel median over the frames where that pixel is background.
    luma = np.where(away, grey.mean(-1), np.nan)
    seen = away.any(0)
    pattern = np.nanmedian(np.where(seen[None], luma, 0.0), axis=0)
    values = pattern[seen] - pattern[seen].mean()
    if values.std() < _FLAT_STD:
        return background, "plain"
    best, best_corr = "noisy", _PATTERN_CORRELATION
    for name, template in _texture_templates(h, w).items():
        tv = template[seen] - template[seen].mean()
        corr = abs(float((tv * values).sum()) / (np.linalg.norm(tv) * np.linalg.norm(values)))
        if corr > best_corr:
            best, best_corr = name, corr
    return background, best


def _place(y: float, x: float, h: int, w: int) -> str:
    """Words for a position in thirds of the frame, e.g. 'the top left', 'the centre'."""
    row = ("top", "", "bottom")[min(2, int(3 * (y + 0.5) / h))]
    col = ("left", "", "right")[min(2, int(3 * (x + 0.5) / w))]
    return "the " + (f"{row} {col}".strip() or "centre")


def _path(video: np.ndarray, mask: np.ndarray) -> str | None:
    """'from the X to the Y' of the centroid's first and last usable frame (None if static)."""
    counts = mask.sum((1, 2))
    frames = np.nonzero(counts >= prompt_following.MIN_PIXELS)[0]
    if len(frames) < 2:
        return None
    _, h, w, _ = video.shape
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    ends = []
    for f in (frames[0], frames[-1]):
        m = mask[f]
        ends.append(((m * ys).sum() / m.sum(), (m * xs).sum() / m.sum()))
    start, end = (_place(y, x, h, w) for y, x in ends)
    return f"from {start} to {end}" if start != end else f"within {start}"


def measure(video: np.ndarray) -> dict:
    """Attributes of a moving-shapes video uint8[t h w 3] measured from its pixels.

    Returns dict(shape, colour, size, direction, speed, background, texture, path); a value is
    None when it cannot be measured (direction / speed / path also for 1-frame videos)."""
    video = video_io.check_video(video)
    found = prompt_following.analyze_video(video)
    mask = prompt_following.foreground_mask(video)
    shape, size = _shape_and_size(coverage(video, mask)) if mask.any() else (None, None)
    background, texture = _background(video, mask)
    direction = found["direction"] if video.shape[0] > 1 else None
    return dict(
        shape=shape,
        colour=found["colour"],
        size=size,
        direction=direction,
        speed=found["speed"] if direction else None,
        background=background,
        texture=texture,
        path=_path(video, mask) if direction else None,
    )


class ShapesCaptioner:
    """Captions moving-shapes videos from their pixels (no model; deterministic).

    `caption(videos)` takes uint8[t h w 3] videos (every frame: motion is measured) and returns
    one caption per video; ValueError (naming what is missing) for a video in which the
    foreground or background cannot be measured.
    """

    name = "builtin-shapes"

    def __init__(self, style: str = "grammar"):
        if style not in STYLES:
            raise ValueError(f"unknown caption style {style!r}; expected one of {STYLES}")
        self.style = style

    def caption(self, videos: Sequence[np.ndarray]) -> list[str]:
        return [self._one(v) for v in videos]

    def _one(self, video: np.ndarray) -> str:
        a = measure(video)
        missing = [k for k in ("shape", "colour", "size", "background", "texture") if a[k] is None]
        if missing:
            raise ValueError(f"cannot measure {', '.join(missing)}: no moving shape found")
        text = shapes.caption(a)
        if self.style == "detailed" and a["path"]:
            text = text.replace(" on a ", f" {a['path']} on a ", 1)
        return text


ATTRIBUTES = ("shape", "colour", "size", "direction", "speed", "background", "texture")


def accuracy(videos: Sequence[np.ndarray], attributes: Sequence[dict]) -> dict:
    """Per-attribute accuracy of `measure` against the true attributes (direction / speed over
    the videos of more than one frame), `attribute_accuracy` over every comparison, and
    `caption_accuracy` (whole grammar caption right)."""
    if len(videos) != len(attributes) or not videos:
        raise ValueError(
            f"need as many videos as attribute dicts, got {len(videos)}, {len(attributes)}"
        )
    hits = {k: [] for k in ATTRIBUTES}
    exact = []
    for video, truth in zip(videos, attributes):
        found = measure(video)
        keys = ATTRIBUTES if video.shape[0] > 1 else ATTRIBUTES[:3] + ATTRIBUTES[5:]
        for k in keys:
            hits[k].append(found[k] == truth.get(k, "plain" if k == "texture" else None))
        exact.append(all(hits[k][-1] for k in keys))
    out = {f"{k}_accuracy": float(np.mean(v)) for k, v in hits.items() if v}
    out["attribute_accuracy"] = float(np.mean([h for v in hits.values() for h in v]))
    out["caption_accuracy"] = float(np.mean(exact))
    out["num_videos"] = len(videos)
    return out

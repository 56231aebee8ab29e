"""Scene (shot) detection on decoded frames and the clip windows cut from the shots.

A cut is a frame whose colour histogram differs from the previous frame's far more than its
neighbourhood's differences do: the distance is compared with a rolling median + k * MAD of the
distances around it, so slow motion or camera noise (a steady level of small distances) raises
the bar, while a hard cut (one isolated spike) passes it. Frame indices are decode order; a
shot or clip is a half-open window [start, end) of frames.
"""

from __future__ import annotations

import math

import numpy as np

# MAD * 1.4826 estimates the standard deviation of Gaussian noise.
_MAD_TO_STD = 1.4826


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """f32[... 3] hue, saturation and value in [0, 1] of uint8[... 3] RGB."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(c, 1e-12)
    h = np.where(
        v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = np.where(c > 0, h / 6.0, 0.0)
    return np.stack([h, s, v], -1)


def hsv_histogram(rgb: np.ndarray, bins: tuple[int, int, int]) -> np.ndarray:
    """f32[sum(bins)]: the hue, saturation and value histograms of uint8[h w 3], each
    normalised to sum 1 (so that the distance does not depend on the frame size)."""
    hsv = rgb_to_hsv(rgb).reshape(-1, 3)
    parts = []
    for channel, n in enumerate(bins):
        idx = np.minimum((hsv[:, channel] * n).astype(np.int64), n - 1)
        counts = np.bincount(idx, minlength=n).astype(np.float32)
        parts.append(counts / max(counts.sum(), 1.0))
    return np.concatenate(parts)


def histogram_distances(hists: np.ndarray) -> np.ndarray:
    """f32[t]: d[i] = total-variation distance between the histograms of frames i-1 and i,
    averaged over the channels (0..1); d[0] = 0. `hists` is f32[t B] of `hsv_histogram`."""
    t = len(hists)
    d = np.zeros(t, np.float32)
    if t > 1:
        d[1:] = 0.5 * np.abs(np.diff(hists, axis=0)).sum(-1) / 3.0
    return d


def detect_cuts(
    distances: np.ndarray,
    window: int = 15,
    mad_factor: float = 6.0,
    min_distance: float = 0.15,
    min_gap: int = 3,
) -> list[int]:
    """Sorted frame indices where a new shot starts (never 0).

    Frame i is a cut when d[i] > max(min_distance, median + mad_factor * 1.4826 * MAD) of the
    distances d[j], 0 < |j - i| <= window (the rolling statistics exclude i itself, so a cut
    does not raise its own bar). Of cuts closer than `min_gap` frames the strongest is kept
    (a flash or a two-frame dissolve is one cut)."""
    d = np.asarray(distances, np.float32)
    t = len(d)
    candidates = []
    for i in range(1, t):
        lo, hi = max(1, i - window), min(t, i + window + 1)
        around = np.concatenate([d[lo:i], d[i + 1 : hi]])
        if len(around):
            med = float(np.median(around))
            mad = float(np.median(np.abs(around - med)))
            bar = max(min_distance, med + mad_factor * _MAD_TO_STD * mad)
        else:
            bar = min_distance
        if d[i] > bar:
            candidates.append(i)
    kept: list[int] = []
    for i in sorted(candidates, key=lambda i: (-d[i], i)):
        if all(abs(i - j) >= min_gap for j in kept):
            kept.append(i)
    return sorted(kept)


def shots(num_frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[(start, end)] frame windows between the cuts, covering 0..num_frames."""
    bounds = [0, *[c for c in cuts if 0 < c < num_frames], num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def clip_windows(
    shot_windows: list[tuple[int, int]], fps: float, min_duration: float, max_duration: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(clips, too_short): shots longer than max_duration split into the fewest equal pieces
    no longer than it; shots shorter than min_duration returned apart."""
    if max_duration < min_duration:
        raise ValueError(f"max_duration {max_duration} < min_duration {min_duration}")
    min_frames = max(1, math.ceil(min_duration * fps - 1e-6))
    max_frames = max(min_frames, math.floor(max_duration * fps + 1e-6))
    clips, too_short = [], []
    for a, b in shot_windows:
        n = b - a
        if n < min_frames:
            too_short.append((a, b))
            continue
        pieces = math.ceil(n / max_frames)
        edges = [a + round(k * n / pieces) for k in range(pieces + 1)]
        clips += list(zip(edges[:-1], edges[1:]))
    return clips, too_short

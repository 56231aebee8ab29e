"""Automatic prompt-following measurement for moving-shapes videos, from pixels alone.

The moving-shapes grammar (`sora_jax.data.shapes`) puts one saturated shape over a desaturated
background, so the foreground is found by a saturation threshold (max - min channel). From the
foreground we read:
  colour     nearest named colour to the median foreground RGB;
  shape      per frame, the best IoU among circle / square / triangle templates of the same area
             centred on the foreground centroid (for all three shapes the centroid is the
             circumcentre), majority vote over frames;
  direction  least-squares velocity of the per-frame centroid, nearest of the 8 named directions
             (None for 1-frame videos, or when the motion is below a fraction of the slowest
             named speed, or when there is too little foreground);
  speed      nearest named speed (in log space) of |velocity| / min(h, w).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from sora_jax.data import shapes, video_io

# Backgrounds have saturation <= 30 and named colours >= 150; halfway leaves room for codec
# chroma bleeding and generation noise.
SATURATION_THRESHOLD = 75
# Floor of the refined (adaptive) threshold.
MIN_THRESHOLD = 45
# Frames with fewer foreground pixels than this have no usable centroid / shape.
MIN_PIXELS = 4
# Motion slower than this fraction of the slowest named speed counts as "not moving".
MIN_MOTION_FRACTION = 0.4

_COLOUR_NAMES = tuple(shapes.COLOURS)
_COLOUR_RGB = np.asarray([shapes.COLOURS[c] for c in _COLOUR_NAMES], np.float32)
_SPEED_NAMES = tuple(shapes.SPEEDS)
_LOG_SPEEDS = np.log(np.asarray([shapes.SPEEDS[s] for s in _SPEED_NAMES]))
_DIR_NAMES = tuple(shapes.DIRECTIONS)
_DIR_VECS = np.asarray([shapes.DIRECTIONS[d] for d in _DIR_NAMES], np.float64)
# Extent r giving unit area, per shape: circle pi r^2, square 4 r^2, triangle 3 sqrt(3)/4 r^2.
_UNIT_AREA_RADIUS = {
    "circle": 1 / math.sqrt(math.pi),
    "square": 0.5,
    "triangle": math.sqrt(4 / (3 * math.sqrt(3))),
}


def foreground_mask(video: np.ndarray) -> np.ndarray:
    """bool[t h w]: saturated pixels of uint8[t h w 3].

    A fixed threshold finds the foreground; it is then refined to halfway between the typical
    foreground and background saturation, so that edge pixels blurred by a codec or a generator
    (saturation roughly proportional to coverage) count when they are at least half covered and
    the measured area and centroid stay unbiased whatever the colour's own saturation.
    """
    v = video_io.check_video(video).astype(np.int16)
    saturation = v.max(-1) - v.min(-1)
    mask = saturation > SATURATION_THRESHOLD
    if mask.sum() < MIN_PIXELS or mask.all():
        return mask
    threshold = (np.median(saturation[mask]) + np.median(saturation[~mask])) / 2
    return saturation > max(threshold, MIN_THRESHOLD)


def _classify_shape(mask: np.ndarray) -> str | None:
    """Best-IoU template for one frame's bool[h w] foreground."""
    n = int(mask.sum())
    if n < MIN_PIXELS:
        return None
    ys, xs = np.nonzero(mask)
    cy, cx = np.array([ys.mean()]), np.array([xs.mean()])
    h, w = mask.shape
    best, best_iou = None, -1.0
    for name in shapes.SHAPES:
        template = shapes.shape_masks(name, cy, cx, _UNIT_AREA_RADIUS[name] * math.sqrt(n), h, w)[0]
        iou = (template & mask).sum() / max(1, (template | mask).sum())
        if iou > best_iou:
            best, best_iou = name, iou
    return best


def analyze_video(video: np.ndarray) -> dict:
    """Measure the attributes of uint8[t h w 3].

    Returns dict(colour, shape, direction, speed) (each a vocabulary word or None) and the
    diagnostics foreground_fraction (float), velocity ((dy, dx) pixels per frame or None) and
    relative_speed (|velocity| / min(h, w) or None).
    """
    video = video_io.check_video(video)
    t, h, w, _ = video.shape
    mask = foreground_mask(video)
    result = dict(
        colour=None,
        shape=None,
        direction=None,
        speed=None,
        foreground_fraction=float(mask.mean()),
        velocity=None,
        relative_speed=None,
    )
    if mask.sum() < MIN_PIXELS:
        return result

    median_rgb = np.median(video[mask].astype(np.float32), axis=0)
    result["colour"] = _COLOUR_NAMES[int(np.argmin(((_COLOUR_RGB - median_rgb) ** 2).sum(-1)))]

    votes = Counter(s for s in (_classify_shape(m) for m in mask) if s is not None)
    if votes:
        # Ties go to the earliest shape in SHAPES order, for determinism.
        result["shape"] = max(shapes.SHAPES, key=lambda s: votes[s])

    counts = mask.sum((1, 2))
    frames = np.nonzero(counts >= MIN_PIXELS)[0]
    if t < 2 or len(frames) < 2:
        return result
    ys = np.arange(h)[None, :, None]
    xs = np.arange(w)[None, None, :]
    m = mask[frames]
    cy = (m * ys).sum((1, 2)) / counts[frames]
    cx = (m * xs).sum((1, 2)) / counts[frames]
    k = frames - frames.mean()
    vy = float((k * (cy - cy.mean())).sum() / (k * k).sum())
    vx = float((k * (cx - cx.mean())).sum() / (k * k).sum())
    rel = math.hypot(vy, vx) / min(h, w)
    result["velocity"], result["relative_speed"] = (vy, vx), rel
    if rel < MIN_MOTION_FRACTION * min(shapes.SPEEDS.values()):
        return result
    unit = np.array([vy, vx]) / math.hypot(vy, vx)
    result["direction"] = _DIR_NAMES[int(np.argmax(_DIR_VECS @ unit))]
    result["speed"] = _SPEED_NAMES[int(np.argmin(np.abs(_LOG_SPEEDS - math.log(rel))))]
    return result


def score(videos: Sequence[np.ndarray], attributes: Sequence[dict]) -> dict:
    """Prompt-following accuracies of videos against the attributes they were prompted with.

    Each accuracy is over the videos whose attributes name it (a user's prompt may name no
    shape or speed); direction and speed only over videos with more than one frame (NaN when
    there are none). Returns dict(colour_accuracy, shape_accuracy, direction_accuracy,
    speed_accuracy, num_videos, num_motion_videos), the last the videos scored on direction.
    """
    if len(videos) != len(attributes):
        raise ValueError(f"got {len(videos)} videos but {len(attributes)} attribute dicts")
    if not videos:
        raise ValueError("score needs at least one video")
    hits = {k: [] for k in ("colour", "shape", "direction", "speed")}
    for video, attrs in zip(videos, attributes):
        found = analyze_video(video)
        moving = np.asarray(video).shape[0] > 1
        for key in hits:
            if attrs.get(key) is not None and (moving or key in ("colour", "shape")):
                hits[key].append(found[key] == attrs[key])
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return dict(
        colour_accuracy=mean(hits["colour"]),
        shape_accuracy=mean(hits["shape"]),
        direction_accuracy=mean(hits["direction"]),
        speed_accuracy=mean(hits["speed"]),
        num_videos=len(videos),
        num_motion_videos=len(hits["direction"]),
    )

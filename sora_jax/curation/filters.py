"""Threshold filters on a clip's measurements: which reasons (if any) reject it.

Reasons: too_short (shorter than clips.min_duration, decided at splitting), low_resolution,
low_fps, static, too_much_motion, blurry, too_dark, too_bright, low_aesthetic, too_much_text,
and duplicate (decided by de-duplication). Model scores that were not measured (no model
given) never reject.
"""

from __future__ import annotations

import dataclasses

REASONS = (
    "too_short",
    "low_resolution",
    "low_fps",
    "static",
    "too_much_motion",
    "blurry",
    "too_dark",
    "too_bright",
    "low_aesthetic",
    "too_much_text",
    "duplicate",
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The `filters` section of configs/curate.py."""

    min_short_side: int = 0
    min_fps: float = 0.0
    min_motion: float = 0.004
    max_motion: float = 1.0
    min_sharpness: float = 0.0
    min_brightness: float = 0.03
    max_brightness: float = 0.97
    min_aesthetic: float = 0.0
    max_text_area: float = 1.0

    @classmethod
    def from_config(cls, section) -> "Thresholds":
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(section)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown filters keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def reasons(clip: dict, t: Thresholds) -> list[str]:
    """The reasons (in REASONS order) `clip` fails; [] when it passes."""
    out = []
    if min(int(clip["height"]), int(clip["width"])) < t.min_short_side:
        out.append("low_resolution")
    if float(clip["fps"]) < t.min_fps:
        out.append("low_fps")
    if clip["motion"] < t.min_motion:
        out.append("static")
    if clip["motion"] > t.max_motion:
        out.append("too_much_motion")
    if clip["sharpness"] < t.min_sharpness:
        out.append("blurry")
    if clip["brightness"] < t.min_brightness:
        out.append("too_dark")
    if clip["brightness"] > t.max_brightness:
        out.append("too_bright")
    if clip.get("aesthetic") is not None and clip["aesthetic"] < t.min_aesthetic:
        out.append("low_aesthetic")
    if clip.get("text_area") is not None and clip["text_area"] > t.max_text_area:
        out.append("too_much_text")
    return out

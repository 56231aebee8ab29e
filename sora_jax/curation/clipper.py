"""One raw video -> its candidate clips: decode once, detect cuts, split into clip windows,
measure each window (the per-video work of the curation job, without Beam).

A clip row keeps every field of the video's manifest row and adds: `id` (`<video id>#<start
frame>-<end frame>`), `video_id`, the window as `start` / `end` (seconds, what build_dataset and
recaption read) and `start_frame` / `end_frame`, `clip_frames`, `video_frames`, `fps`,
`height`, `width`, `duration` (of the clip), `motion`, `sharpness`, `brightness`, `phash`.
A row that already has a window (`start` / `end` seconds) is curated inside it only.
"""

from __future__ import annotations

import dataclasses
import math

from sora_jax.curation import decode, measurements, scenes


@dataclasses.dataclass(frozen=True)
class ClipperSpec:
    """The decode, scene and clips sections of configs/curate.py (plus the keyframe count)."""

    analysis_size: int = 96
    detail_size: int = 480
    interpolation: str = "AREA"
    hue_bins: int = 16
    sat_bins: int = 8
    val_bins: int = 8
    window: int = 15
    mad_factor: float = 6.0
    min_distance: float = 0.15
    min_gap: int = 3
    min_duration: float = 1.0
    max_duration: float = 10.0
    keyframes: int = 3
    motion_seconds: float = 0.1  # time step of the motion difference (at least one frame)
    still_seconds: float = 0.25  # a still (thumbnail / model input) kept this often

    def __post_init__(self):
        if self.max_duration < self.min_duration or self.min_duration <= 0:
            raise ValueError(
                f"need 0 < clips.min_duration <= clips.max_duration, got "
                f"{self.min_duration}, {self.max_duration}"
            )
        if self.keyframes < 1:
            raise ValueError(f"dedup.keyframes must be >= 1, got {self.keyframes}")

    @classmethod
    def from_config(cls, c) -> "ClipperSpec":
        return cls(
            analysis_size=c.decode.analysis_size,
            detail_size=c.decode.detail_size,
            interpolation=c.decode.interpolation,
            hue_bins=c.scene.hue_bins,
            sat_bins=c.scene.sat_bins,
            val_bins=c.scene.val_bins,
            window=c.scene.window,
            mad_factor=c.scene.mad_factor,
            min_distance=c.scene.min_distance,
            min_gap=c.scene.min_gap,
            min_duration=c.clips.min_duration,
            max_duration=c.clips.max_duration,
            keyframes=c.dedup.keyframes,
            motion_seconds=c.measure.motion_seconds,
        )


def _fps(row: dict, info: decode.VideoInfo, path: str) -> float:
    fps = row.get("fps")
    fps = float(fps) if fps not in (None, "") else info.fps
    if not fps or fps <= 0:
        raise ValueError(f"unknown frame rate of {path} (give fps in the manifest)")
    return fps


def track_video(path: str, spec: ClipperSpec, fps_hint: float | None = None):
    """(info, FrameTrack of every frame) of the video at `path` (`fps_hint` overrides the
    container's frame rate)."""
    info, frames = decode.frames(path, spec.analysis_size, spec.detail_size, spec.interpolation)
    fps = fps_hint or info.fps or 0.0
    still_every = max(1, int(round(fps * spec.still_seconds))) if fps else 1
    lag = max(1, int(round(fps * spec.motion_seconds))) if fps else 1
    bins = (spec.hue_bins, spec.sat_bins, spec.val_bins)
    track = measurements.FrameTrack(bins, still_every, lag)
    for small, grey in frames:
        track.add(small, grey)
    if not len(track):
        raise ValueError(f"no decodable frames in {path}")
    return info, track


def _window(row: dict, fps: float, n: int) -> tuple[int, int]:
    """Frame window [first, last) of a row's own `start` / `end` (the whole video without)."""
    start, end = row.get("start"), row.get("end")
    first = 0 if start in (None, "") else min(n, max(0, math.ceil(float(start) * fps - 1e-6)))
    last = n if end in (None, "") else min(n, math.floor(float(end) * fps + 1e-6))
    return first, max(first, last)


def clips(row: dict, key: str, spec: ClipperSpec):
    """(candidate clip rows, too-short clip rows (`reasons` ['too_short']), their stills
    (uint8[h w 3] each, the analysis frame nearest each clip's middle), number of frames
    decoded) of the video of `row` (its `path` resolved), keyed `key`."""
    path = row["path"]
    given = row.get("fps")
    info, track = track_video(path, spec, float(given) if given not in (None, "") else None)
    fps = _fps(row, info, path)
    n = len(track)
    first, last = _window(row, fps, n)
    cuts = scenes.detect_cuts(
        track.distances(), spec.window, spec.mad_factor, spec.min_distance, spec.min_gap
    )
    shots = [
        (max(a, first), min(b, last))
        for a, b in scenes.shots(n, cuts)
        if min(b, last) > max(a, first)
    ]
    windows, short = scenes.clip_windows(shots, fps, spec.min_duration, spec.max_duration)
    base = {k: v for k, v in row.items() if k not in ("start", "end")}

    def clip_row(a: int, b: int) -> dict:
        return dict(
            base,
            id=f"{key}#{a}-{b}",
            video_id=key,
            start=a / fps,
            end=b / fps,
            start_frame=a,
            end_frame=b,
            clip_frames=b - a,
            video_frames=n,
            fps=fps,
            height=info.height,
            width=info.width,
            duration=(b - a) / fps,
            **measurements.measure(track, a, b, spec.keyframes),
        )

    kept = [clip_row(a, b) for a, b in windows]
    too_short = [dict(clip_row(a, b), reasons=["too_short"]) for a, b in short]
    stills = [track.still(a, b) for a, b in windows]
    short_stills = [track.still(a, b) for a, b in short]
    return kept, too_short, stills, short_stills, n


def cut_frames(row: dict, spec: ClipperSpec) -> list[int]:
    """The detected cut frames of a video (for inspection and tests)."""
    _, track = track_video(row["path"], spec)
    return scenes.detect_cuts(
        track.distances(), spec.window, spec.mad_factor, spec.min_distance, spec.min_gap
    )

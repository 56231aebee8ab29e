"""Per-frame signals of a video and the per-clip measurements made from them.

`FrameTrack.add` takes each decoded frame once (analysis RGB, detail luma; see decode.py) and
keeps only small per-frame values: the colour histogram (scene detection), the mean absolute
luma change from the frame `motion_lag` frames before (motion: a fixed time step, so the score
does not halve when the frame rate doubles), the Laplacian variance (sharpness), the mean luma
(brightness), a 64-bit pHash (de-duplication) and, every `still_every` frames, the analysis
frame itself (thumbnails, model scores). `measure` then reduces a clip window of the track.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sora_jax.curation import dedup, scenes

# ITU-R BT.601 luma weights (what swscale's 'gray' uses too).
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """f32[h w] luma (0..255) of uint8[h w 3] RGB."""
    return rgb.astype(np.float32) @ _LUMA


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of f32/uint8[h w] (0..255 scale), over the
    interior pixels: high for sharp edges and texture, low for blur. 0 for frames under 3x3."""
    g = np.asarray(grey, np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


@dataclasses.dataclass
class FrameTrack:
    """Per-frame signals of one video, appended frame by frame (`add`)."""

    bins: tuple[int, int, int] = (16, 8, 8)
    still_every: int = 1
    motion_lag: int = 1  # frames between the two frames of a motion difference
    hists: list = dataclasses.field(default_factory=list)  # f32[B] each
    motion: list = dataclasses.field(default_factory=list)  # 0..1 (None: no frame lag before)
    motion1: list = dataclasses.field(default_factory=list)  # the same at lag 1 (short clips)
    sharpness: list = dataclasses.field(default_factory=list)
    brightness: list = dataclasses.field(default_factory=list)  # 0..1
    hashes: list = dataclasses.field(default_factory=list)  # int (64-bit pHash)
    stills: dict = dataclasses.field(default_factory=dict)  # frame index -> uint8[h w 3]
    _recent: list = dataclasses.field(default_factory=list, init=False, repr=False)

    def add(self, small_rgb: np.ndarray, detail_luma: np.ndarray) -> None:
        i = len(self.hists)
        y = luma(small_rgb)
        self.hists.append(scenes.hsv_histogram(small_rgb, self.bins))
        diff = lambda a: float(np.abs(y - a).mean()) / 255.0  # noqa: E731
        recent = self._recent
        self.motion.append(diff(recent[0]) if len(recent) == self.motion_lag else None)
        self.motion1.append(diff(recent[-1]) if recent else None)
        recent.append(y)
        if len(recent) > self.motion_lag:
            recent.pop(0)
        self.sharpness.append(laplacian_variance(detail_luma))
        self.brightness.append(float(y.mean()) / 255.0)
        self.hashes.append(dedup.phash(y))
        if i % self.still_every == 0:
            self.stills[i] = small_rgb

    def __len__(self) -> int:
        return len(self.hists)

    def distances(self) -> np.ndarray:
        """f32[t]: scene-change distances (scenes.histogram_distances)."""
        if not self.hists:
            return np.zeros(0, np.float32)
        return scenes.histogram_distances(np.stack(self.hists))

    def still(self, start: int, end: int) -> np.ndarray:
        """uint8[h w 3]: the kept frame nearest the middle of [start, end)."""
        mid = (start + end - 1) / 2
        inside = [i for i in self.stills if start <= i < end] or list(self.stills)
        return self.stills[min(inside, key=lambda i: (abs(i - mid), i))]


def keyframes(start: int, end: int, k: int) -> list[int]:
    """k frame indices spread inside [start, end) at (j + 1) / (k + 1) of the window."""
    n = end - start
    return [start + min(n - 1, int((j + 1) * n / (k + 1))) for j in range(k)]


def measure(track: FrameTrack, start: int, end: int, keyframe_count: int = 3) -> dict:
    """The measurements of clip window [start, end) of `track`: motion (mean absolute luma
    change over `track.motion_lag` frames, 0..1, both frames inside the clip: a change across
    the cut is not the clip's; at lag 1 for clips too short for the lag), sharpness (median
    Laplacian variance), brightness (mean luma, 0..1) and the keyframes' pHashes."""
    motion = track.motion[start + track.motion_lag : end]
    if not motion:
        motion = track.motion1[start + 1 : end]
    return dict(
        motion=float(np.mean(motion)) if motion else 0.0,
        sharpness=float(np.median(track.sharpness[start:end])),
        brightness=float(np.mean(track.brightness[start:end])),
        phash=[dedup.to_hex(track.hashes[i]) for i in keyframes(start, end, keyframe_count)],
    )

"""Streaming decode of a raw video into small frames (PyAV / swscale), one pass, bounded memory.

Curation never holds a video's full-resolution frames: each decoded frame is scaled (area
averaging, aspect kept) to an RGB `analysis` frame and a grey `detail` frame, handed to the
caller and dropped. Local paths are decoded in place; others (gs://...) are copied through
Beam's FileSystems to a temporary file first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator

import av
import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """The container's frame size and rate (fps None when the container does not say)."""

    height: int
    width: int
    fps: float | None


def scaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most `long_side`, aspect kept (never upscaled)."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


@contextlib.contextmanager
def local_file(path: str):
    """A local path holding the file at `path` (copied from a remote file system if needed)."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video file not found: {path}")
        yield path
        return
    from apache_beam.io.filesystems import FileSystems

    with tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1]) as tmp:
        with FileSystems.open(path) as f:
            tmp.write(f.read())
        tmp.flush()
        yield tmp.name


def frames(
    path: str, analysis_size: int, detail_size: int, interpolation: str = "AREA"
) -> tuple[VideoInfo, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(info, iterator of (uint8[ha wa 3] analysis RGB, uint8[hd wd] detail luma)) per frame.

    `interpolation` is swscale's (AREA, BILINEAR, FAST_BILINEAR, ...). The iterator owns the
    open file (it closes when exhausted or garbage collected).
    ValueError naming the path for a file that is not a decodable video."""
    stack = contextlib.ExitStack()
    local = stack.enter_context(local_file(path))
    try:
        container = stack.enter_context(av.open(local, mode="r"))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        stack.close()
        raise ValueError(f"cannot open video {path}: {type(e).__name__}: {e}") from None
    if not container.streams.video:
        stack.close()
        raise ValueError(f"no video stream in {path}")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: decode keeps pace with the numpy work
    h, w = stream.codec_context.height, stream.codec_context.width
    if not h or not w:
        stack.close()
        raise ValueError(f"video stream of {path} has no frame size")
    rate = float(stream.average_rate) if stream.average_rate else None
    info = VideoInfo(int(h), int(w), rate)
    ah, aw = scaled_size(h, w, analysis_size)
    dh, dw = scaled_size(h, w, detail_size)

    def gen():
        with stack:
            try:
                for frame in container.decode(stream):
                    small = frame.reformat(
                        width=aw, height=ah, format="rgb24", interpolation=interpolation
                    )
                    grey = frame.reformat(
                        width=dw, height=dh, format="gray", interpolation=interpolation
                    )
                    yield small.to_ndarray(), grey.to_ndarray()
            except (av.FFmpegError, OSError) as e:
                raise ValueError(f"cannot decode video {path}: {type(e).__name__}: {e}") from None

    return info, gen()

"""Reading and writing videos (uint8[t h w 3] RGB) with PyAV.

Formats by suffix:
  .mp4  H.264 (libx264, yuv420p, crf 15, `X264_OPTIONS`). yuv420p subsamples chroma 2x2, so height and width
        must be even; odd sizes raise ValueError rather than silently padding/scaling, so a
        file always round-trips to exactly the shape that was written.
  .gif  GIF with pix_fmt rgb8 (fixed 3-3-2 bit palette: coarse colours, any size). GIF has no
        key-value metadata: the 'comment' entry is written as a GIF Comment Extension, which
        FFmpeg (and so `read_metadata`) reads back as 'comment'; other keys are not kept.

Writing is deterministic: the same frames and metadata give the same bytes (one encoder
thread, fixed options, bitexact muxing without version strings or timestamps).

Still images (.png, .jpg, .jpeg, .bmp, .webp) are read as 1-frame videos (`read_frames`), and
`resize` scales frames with swscale; both through PyAV, so no image library is needed.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Fixed encoder settings: quality (crf), speed/size trade-off (preset) and one thread.
X264_OPTIONS = {"crf": "15", "preset": "medium", "threads": "1"}


def check_video(video) -> np.ndarray:
    """The video as uint8[t h w 3]; ValueError naming the shape or dtype otherwise."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape[:3]) <= 0:
        raise ValueError(f"video must be uint8[t h w 3] with t, h, w > 0, got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"video must have dtype uint8, got {video.dtype}")
    return video


def write_video(
    path: str | os.PathLike, video: np.ndarray, fps: int = 8, metadata: dict | None = None
) -> None:
    """Write uint8[t h w 3] to `path` (.mp4 or .gif, see module docstring).

    `metadata` (str -> str, e.g. {'title': ..., 'comment': caption}) goes into the container
    metadata; the mp4 muxer keeps standard keys such as title and comment, a gif only 'comment'.
    """
    path = Path(path)
    video = check_video(video)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"unsupported video suffix {suffix!r} for {path}; use one of {_SUFFIXES}")
    if not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    _, height, width, _ = video.shape
    if suffix == ".mp4" and (height % 2 or width % 2):
        raise ValueError(f"mp4 (yuv420p) needs even height and width, got {height}x{width}")
    # Deterministic bytes (the same frames give the same file on any machine): one encoder
    # thread (x264's decisions depend on its thread count), a fixed preset, and bitexact
    # muxing (no library version strings, no creation time).
    with av.open(str(path), mode="w", container_options={"fflags": "+bitexact"}) as container:
        for key, value in (metadata or {}).items():
            container.metadata[str(key)] = str(value)
        if suffix == ".mp4":
            stream = container.add_stream("libx264", rate=int(fps))
            stream.pix_fmt = "yuv420p"
            stream.options = {**X264_OPTIONS, "flags": "+bitexact"}
        else:
            stream = container.add_stream("gif", rate=int(fps))
            stream.pix_fmt = "rgb8"
            stream.options = {"flags": "+bitexact"}
        stream.width, stream.height = width, height
        stream.time_base = Fraction(1, int(fps))
        for i, frame in enumerate(video):
            av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            av_frame.pts = i
            container.mux(stream.encode(av_frame))
        container.mux(stream.encode(None))  # flush delayed frames
    if suffix == ".gif" and metadata and "comment" in metadata:
        _add_gif_comment(path, str(metadata["comment"]))


def _add_gif_comment(path: Path, text: str) -> None:
    """Inserts a Comment Extension (GIF89a) right after the header and global colour table:
    FFmpeg's gif muxer writes none, its demuxer reads one into metadata['comment']."""
    data = path.read_bytes()
    if data[:6] != b"GIF89a":
        raise ValueError(f"{path} is not a GIF89a file")
    flags = data[10]  # logical screen descriptor: bit 7 = global colour table, bits 0-2 size
    start = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    raw = text.encode("utf-8")
    blocks = b"".join(
        bytes([len(c)]) + c for c in (raw[i : i + 255] for i in range(0, len(raw), 255))
    )
    path.write_bytes(data[:start] + b"\x21\xfe" + blocks + b"\x00" + data[start:])


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise ValueError(f"cannot open video {path}: {e}") from e


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode all frames of the first video stream as uint8[t h w 3] RGB.

    Raises FileNotFoundError for a missing file and ValueError (naming the path) for a file
    that is not a decodable video."""
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise ValueError(f"no video stream in {path}")
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode video {path}: {e}") from e
    finally:
        container.close()
    if not frames:
        raise ValueError(f"no decodable frames in {path}")
    return np.stack(frames)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Container metadata of a video file (keys as stored by the muxer, e.g. 'title', 'comment')."""
    path = Path(path)
    container = _open(path)
    try:
        return dict(container.metadata)
    finally:
        container.close()


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """uint8[t h w 3] frames of a video, or uint8[1 h w 3] of a still image (by suffix).

    FileNotFoundError for a missing file, ValueError (naming the path) for an unreadable one."""
    frames = read_video(path)
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        frames = frames[:1]
    return frames


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8[h w 3] as a PNG."""
    image = check_video(np.asarray(image)[None])[0]
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8[t h w 3] scaled to uint8[t height width 3] (area averaging when shrinking,
    bicubic when growing); returned unchanged when the size already matches."""
    video = check_video(video)
    if video.shape[1:3] == (height, width):
        return video
    shrink = height <= video.shape[1] and width <= video.shape[2]
    out = [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        .reformat(
            width=width,
            height=height,
            format="rgb24",
            interpolation="AREA" if shrink else "BICUBIC",
        )
        .to_ndarray()
        for f in video
    ]
    return np.stack(out)

"""From a clip's encoded bytes to a training video: temporal sampling, decoding, area resize.

Pure functions of (record, rng), run in the input pipeline's worker processes:
  * `frame_indices`: 1 + ct*k frames (what the causal VAE takes) at a target fps inside the clip
    window, from a random start; images (1 frame) for joint image/video training;
  * `target_size`: the (h, w) of about `area` pixels with the clip's aspect ratio, each a
    multiple of `multiple` (VAE compression x patch): no crop to a square;
  * `decode_frames`: PyAV decode of just the frames needed.
"""

from __future__ import annotations

import io
import math

import av
import numpy as np

from sora_jax.data import video_io


def frame_indices(
    num_frames: int,
    fps: float,
    start: float,
    end: float,
    target_fps: float,
    max_frames: int,
    temporal_compression: int,
    rng: np.random.Generator,
    image: bool = False,
) -> np.ndarray:
    """i64[n] source frame indices, n = 1 + ct*k <= max_frames, spaced 1/target_fps seconds.

    The longest such n the window [start, end) holds; a random start inside the window.
    `image`: one random frame of the window.
    """
    first = min(int(math.ceil(start * fps - 1e-6)), num_frames - 1)
    last = max(min(num_frames, int(math.floor(end * fps + 1e-6))), first + 1)  # exclusive
    if image:
        return np.asarray([rng.integers(first, last)], np.int64)
    step = fps / target_fps  # source frames per sampled frame
    available = int(math.floor((last - 1 - first) / step + 1e-6)) + 1
    ct = temporal_compression
    n = 1 + ct * ((min(available, max_frames) - 1) // ct)
    span = (n - 1) * step
    offset = first + rng.uniform(0.0, max(last - 1 - first - span, 0.0))
    return np.minimum(np.rint(offset + step * np.arange(n)).astype(np.int64), last - 1)


def target_size(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """(h, w) with h * w close to `area`, h / w close to height / width, multiples of `multiple`."""
    scale = math.sqrt(area / (height * width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def decode_frames(data: bytes | np.ndarray, indices: np.ndarray) -> np.ndarray:
    """uint8[n h w 3]: frames `indices` (decode order, may repeat) of an encoded video."""
    wanted = set(int(i) for i in indices)
    frames = {}
    with av.open(io.BytesIO(bytes(data))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    missing = wanted - set(frames)
    if missing:
        raise ValueError(f"video ended before frame {min(missing)} (truncated?)")
    return np.stack([frames[int(i)] for i in indices])


def training_clip(
    record: dict,
    rng: np.random.Generator,
    *,
    target_fps: float,
    max_frames: int,
    area: int,
    multiple: int,
    temporal_compression: int,
    image_fraction: float,
) -> np.ndarray:
    """uint8[n h w 3]: a record of the video_clips dataset sampled and resized for training."""
    image = bool(rng.random() < image_fraction)
    idx = frame_indices(
        int(record["num_frames"]),
        float(record["fps"]),
        float(record["start"]),
        float(record["end"]),
        target_fps,
        max_frames,
        temporal_compression,
        rng,
        image=image,
    )
    video = decode_frames(record["video"], idx)
    h, w = target_size(int(record["height"]), int(record["width"]), area, multiple)
    return video_io.resize(video, h, w)

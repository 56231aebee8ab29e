"""Recaption input from a built TFDS `video_clips` dataset (the array_record shards that
`python -m sora_jax.build_dataset` writes; sora_jax/data/tfds_builder.py).

Example `i` of a split is keyed `<name>/<split>/<i>`, so the job can skip the examples done
before without reading them. A record holds the clip's encoded file bytes and its window
[start, end) in seconds; the captioner gets frames of that window, evenly spaced as for a
manifest's videos (`manifest.evenly_spaced`). Read with `tfds.data_source` (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sora_jax.captioning import manifest
from sora_jax.data import clips

# Record fields copied into the output row (besides `path` and `caption`).
_META = ("num_frames", "fps", "height", "width", "duration", "start", "end")


@dataclasses.dataclass(frozen=True)
class TfdsInput:
    """A split of a TFDS dataset built under `data_dir` (local or any path tfds reads)."""

    data_dir: str
    name: str = "video_clips"
    split: str = "train"

    def __post_init__(self):
        if not self.data_dir:
            raise ValueError("TFDS input needs a data_dir (the --data_dir of build_dataset)")

    def open(self):
        """Random-access source of the split's records; ValueError naming what is missing."""
        import tensorflow_datasets as tfds  # the 'data' extra; only needed for this input

        try:
            return tfds.data_source(
                self.name, split=self.split, data_dir=self.data_dir, try_gcs=False
            )
        except Exception as e:  # noqa: BLE001 (tfds raises several types for a missing dataset)
            raise ValueError(
                f"cannot open TFDS dataset {self.name!r} split {self.split!r} in "
                f"{self.data_dir}: {type(e).__name__}: {e}"
            ) from e

    def key(self, index: int) -> str:
        return f"{self.name}/{self.split}/{int(index)}"


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_row(record: dict, key: str, index: int) -> dict:
    """The output row of a record: id, tfds_index, path, caption and the clip's metadata."""
    row = dict(id=key, tfds_index=int(index))
    row["path"] = _text(record["path"])
    row["caption"] = _text(record["caption"])
    for name in _META:
        row[name] = np.asarray(record[name]).item()
    return row


def window_indices(record: dict) -> np.ndarray:
    """i64[k]: the frames of the record's clip window [start, end) (at least one)."""
    n, fps = int(record["num_frames"]), float(record["fps"])
    first = min(int(math.ceil(float(record["start"]) * fps - 1e-6)), n - 1)
    last = max(min(n, int(math.floor(float(record["end"]) * fps + 1e-6))), first + 1)
    return np.arange(first, last, dtype=np.int64)


def read_frames(record: dict, num_frames: int = 0) -> np.ndarray:
    """uint8[k h w 3]: `num_frames` evenly spaced frames of the clip window (0 = all)."""
    idx = window_indices(record)
    return clips.decode_frames(record["video"], idx[manifest.evenly_spaced(len(idx), num_frames)])

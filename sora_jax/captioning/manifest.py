"""Manifests of videos to caption: JSONL or CSV rows with a `path` (and an optional `caption`,
`id` or any other fields, kept as they are).

A row's key is its `id` when it has one, else its `path` as written; relative paths are read
relative to the manifest's folder. Files go through Beam's `FileSystems`, so manifests, videos
and outputs may also live on gs:// (or any file system Beam knows).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile

import av
import numpy as np

from sora_jax.data import video_io

FORMATS = ("jsonl", "csv")


def manifest_format(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"jsonl": "jsonl", "json": "jsonl", "csv": "csv"}.get(suffix)
    if fmt is None:
        raise ValueError(f"manifest {path}: unknown suffix {suffix!r}; use .jsonl or .csv")
    return fmt


def csv_header(path: str) -> list[str]:
    """Column names of a CSV manifest (its first line); must include `path`."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        first = io.TextIOWrapper(f, encoding="utf-8").readline()
    header = next(csv.reader([first]), [])
    if "path" not in header:
        raise ValueError(f"manifest {path}: the CSV header {header} has no 'path' column")
    return header


def parse_line(line: str, fmt: str, header: list[str] | None = None) -> dict:
    """One manifest row; ValueError naming the problem for a malformed line."""
    if fmt == "jsonl":
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"manifest line is not a JSON object: {line[:200]!r}")
    else:
        values = next(csv.reader([line]))
        if len(values) != len(header):
            raise ValueError(f"CSV line has {len(values)} fields, header has {len(header)}")
        row = {k: v for k, v in zip(header, values) if v != "" or k == "path"}
    if not isinstance(row.get("path"), str) or not row["path"]:
        raise ValueError(f"manifest row without a 'path': {line[:200]!r}")
    return row


def key(row: dict) -> str:
    return str(row.get("id", row["path"]))


def resolve(path: str, manifest_path: str) -> str:
    """`path` relative to the manifest's folder unless absolute or a URL (gs://...)."""
    if os.path.isabs(path) or "://" in path:
        return path
    return os.path.join(os.path.dirname(manifest_path), path)


def read_frames(
    path: str, num_frames: int = 0, window: tuple[float | None, float | None, float] | None = None
) -> np.ndarray:
    """uint8[k h w 3]: `num_frames` evenly spaced frames of the video at `path` (0 = all),
    taken inside `window` = (start, end, fps) when given: the clip [start, end) in seconds
    (None: the video's start / end) of a video at `fps` frames per second.

    Local files are decoded in place; others are copied through Beam's FileSystems first.
    FileNotFoundError / ValueError (naming the path) for missing or undecodable files."""
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        suffix = os.path.splitext(path)[1]
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            with FileSystems.open(path) as f:
                tmp.write(f.read())
            tmp.flush()
            frames = video_io.read_frames(tmp.name)
    else:
        frames = video_io.read_frames(path)
    if window is not None:
        frames = frames[window_indices(len(frames), *window)]
    return frames[evenly_spaced(len(frames), num_frames)]


def window_indices(n: int, start: float | None, end: float | None, fps: float) -> np.ndarray:
    """i64[k]: the frames of a video of n frames at `fps` inside [start, end) seconds (at
    least one; the same frames build_dataset's records and the input pipeline use)."""
    first = 0 if start is None else min(int(math.ceil(float(start) * fps - 1e-6)), n - 1)
    last = n if end is None else min(n, int(math.floor(float(end) * fps + 1e-6)))
    return np.arange(first, max(last, first + 1), dtype=np.int64)


def row_window(row: dict, path: str) -> tuple[float | None, float | None, float] | None:
    """(start, end, fps) of a manifest row with a clip window (`start` and / or `end`
    seconds; `fps` from the row, else the container's), None for a row without."""
    start, end = row.get("start"), row.get("end")
    start = None if start in (None, "") else float(start)
    end = None if end in (None, "") else float(end)
    if start is None and end is None:
        return None
    fps = row.get("fps")
    fps = float(fps) if fps not in (None, "") else video_fps(path)
    return start, end, fps


def video_fps(path: str) -> float:
    """The container's average frame rate of a local video; ValueError when it has none."""
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate if container.streams.video else None
    if not rate:
        raise ValueError(f"unknown frame rate of {path}: give fps in the manifest row")
    return float(rate)


def evenly_spaced(n: int, num_frames: int) -> np.ndarray:
    """i64[k]: indices of `num_frames` evenly spaced items of n, first and last included
    (all n when num_frames is 0 or >= n)."""
    if not num_frames or n <= num_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, num_frames).round().astype(np.int64)


def read_jsonl(pattern: str) -> list[dict]:
    """Every row of the JSONL files matching `pattern` (a glob; none matching: []), files in
    name order."""
    from apache_beam.io.filesystems import FileSystems

    rows = []
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        with FileSystems.open(path) as f:
            rows += [json.loads(line) for line in io.TextIOWrapper(f, "utf-8") if line.strip()]
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        for row in rows:
            f.write((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))


def shapes_example_id(seed: int, index: int) -> str:
    """The manifest id of example `index` of the moving-shapes set of `seed`."""
    return f"moving_shapes/{seed}/{index}"


def dense_captions(path: str) -> dict[str, str]:
    """{id: dense_caption} of a recaptioned manifest (a local JSONL file such as the
    `manifest.jsonl` of `python -m sora_jax.recaption`); no Beam needed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions manifest not found: {path}")
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "id" not in row or "dense_caption" not in row:
                raise ValueError(f"{path}:{n}: a recaptioned row needs 'id' and 'dense_caption'")
            out[str(row["id"])] = row["dense_caption"]
    return out

"""The user's own videos: find them (a folder or a CSV / JSONL manifest), probe them, log bad ones.

A folder holds video files with a caption file beside each (`clip.mp4` + `clip.txt`). A manifest
has one row per clip: `path` (relative to the manifest's folder or absolute), `caption` (or,
when it has none, `dense_caption`, as recaption writes), and optional `fps` (overrides the
container's), `start` and `end` (seconds; the clip window).

`probe` decodes every frame once (so truncated files are caught here, not in training) and
returns the metadata the loader plans with. Bad files (unreadable, truncated, zero-length, no
video stream / unknown codec, missing caption) never stop a build: `BadFiles` counts them, writes
`bad_files.jsonl` (one {"path", "reason"} per line) and only raises once their fraction exceeds
the configured maximum.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import av
from absl import logging

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v")


@dataclasses.dataclass
class Entry:
    """One clip to build: its file, caption (None: missing) and optional window / fps."""

    path: str
    caption: str | None
    fps: float | None = None  # overrides the container's frame rate
    start: float | None = None  # seconds
    end: float | None = None  # seconds


def scan_folder(folder: str | os.PathLike) -> list[Entry]:
    """Every video under `folder` (recursively, sorted), caption from `<stem>.txt` beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        txt = path.with_suffix(".txt")
        caption = txt.read_text().strip() if txt.is_file() else None
        entries.append(Entry(str(path), caption or None))
    return entries


def _optional_float(row: dict, key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key}={value!r} is not a number") from None


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """Entries of a .csv (header row) or .jsonl manifest; relative paths are from its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"manifest {path}: use a .csv or .jsonl file")
    entries = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        if not row.get("path"):
            raise ValueError(f"{where}: has no 'path'")
        clip = Path(row["path"])
        clip = clip if clip.is_absolute() else path.parent / clip
        # A recaptioned manifest (python -m sora_jax.recaption) of uncaptioned videos has
        # only the dense caption.
        caption = (row.get("caption") or row.get("dense_caption") or "").strip() or None
        entries.append(
            Entry(
                str(clip),
                caption,
                fps=_optional_float(row, "fps", where),
                start=_optional_float(row, "start", where),
                end=_optional_float(row, "end", where),
            )
        )
    return entries


def read_source(source: str | os.PathLike) -> list[Entry]:
    """A folder (scanned) or a manifest file."""
    return scan_folder(source) if Path(source).is_dir() else read_manifest(source)


def probe(entry: Entry) -> dict:
    """{num_frames, fps, height, width, duration, start, end} of a clip, decoding every frame.

    Raises ValueError with the reason for a clip that cannot be used.
    """
    path = Path(entry.path)
    if entry.caption is None:
        raise ValueError("missing caption")
    if not path.is_file():
        raise ValueError("file not found")
    if path.stat().st_size == 0:
        raise ValueError("zero-length file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = entry.fps or (float(stream.average_rate) if stream.average_rate else None)
            num_frames, size = 0, None
            for frame in container.decode(video=0):
                num_frames += 1
                size = (frame.height, frame.width)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot decode: {type(e).__name__}: {e}") from None
    if num_frames == 0:
        raise ValueError("no decodable frames")
    if not rate or rate <= 0:
        raise ValueError("unknown frame rate (give fps in the manifest)")
    duration = num_frames / rate
    start = max(entry.start or 0.0, 0.0)
    end = min(entry.end if entry.end is not None else duration, duration)
    if end <= start:
        raise ValueError(f"empty clip window [{start}, {end}) of a {duration:.3f} s video")
    return dict(
        num_frames=num_frames,
        fps=float(rate),
        height=size[0],
        width=size[1],
        duration=float(duration),
        start=float(start),
        end=float(end),
    )


class TooManyBadFiles(RuntimeError):
    pass


class BadFiles:
    """Counts and logs bad files; raises `TooManyBadFiles` past `max_fraction` of those seen.

    The check runs at `finish()` (and early, once the bad count alone exceeds the fraction of
    `expected` files), so a few bad files at the start of a large set do not stop it.
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        max_fraction: float,
        expected: int,
        limit_name: str = "config.data.max_bad_fraction",
    ):
        # `limit_name`: where the limit was set (a config key or a CLI flag), for the errors.
        self.limit_name = limit_name
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"{limit_name}={max_fraction}: must be in [0, 1]")
        self.log_path = Path(log_path)
        self.max_fraction, self.expected = max_fraction, expected
        self.seen, self.bad = 0, []
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")

    def ok(self):
        self.seen += 1

    def add(self, path: str, reason: str):
        self.seen += 1
        self.bad.append(dict(path=str(path), reason=reason))
        logging.warning("skipping bad file %s: %s", path, reason)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(self.bad[-1]) + "\n")
        if len(self.bad) > self.max_fraction * self.expected:
            self._raise(self.expected)

    def finish(self):
        if self.seen and len(self.bad) > self.max_fraction * self.seen:
            self._raise(self.seen)

    def _raise(self, total: int):
        raise TooManyBadFiles(
            f"{len(self.bad)} of {total} files are bad, more than the allowed fraction "
            f"{self.max_fraction} ({self.limit_name}); see {self.log_path}"
        )

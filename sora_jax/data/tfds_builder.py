"""TFDS builder for the user's own video clips, written as array_record shards (no TensorFlow).

  build("/videos", data_dir="/data/tfds")          # a folder: clip.mp4 + clip.txt
  build("/videos/manifest.jsonl", data_dir=...)    # or a CSV / JSONL manifest
  export_moving_shapes("/tmp/shapes", ...)         # the built-in set as such a folder

Each record keeps the clip's encoded file bytes (decoded later, by the input pipeline's workers)
and the metadata the loader plans with without opening files: num_frames, fps, height, width,
duration and the clip window [start, end) in seconds. Bad files are skipped, logged to
`<data_dir>/bad_files.jsonl` and counted (`info.metadata['num_bad']`); past
`max_bad_fraction` the build stops with `manifest.TooManyBadFiles`. Read back with
`tfds.data_source('video_clips', data_dir=..., try_gcs=False)` or `input_pipeline.open_source`.
Only `Tensor` / `Text` features: `tfds.features.Video` would need TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from sora_jax.data import manifest, shapes, video_io

NAME = "video_clips"
BAD_FILES = "bad_files.jsonl"
BUILD_RECORD = "video_clips_build.json"  # what the dataset in a data_dir was built from


class VideoClips(tfds.core.GeneratorBasedBuilder):
    """Clips from a folder or manifest (`source`); one 'train' split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded clip bytes, caption and decoded metadata."}

    def __init__(
        self,
        *,
        source: str = "",
        max_bad_fraction: float = 0.05,
        limit_name: str = "max_bad_fraction",
        **kwargs,
    ):
        self._source = str(source)
        self._max_bad_fraction = max_bad_fraction
        self._limit_name = limit_name
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(shape=(None,), dtype=np.uint8),  # file bytes
                    "caption": tfds.features.Text(),
                    "path": tfds.features.Text(),
                    "num_frames": scalar(np.int32),
                    "fps": scalar(np.float32),
                    "height": scalar(np.int32),
                    "width": scalar(np.int32),
                    "duration": scalar(np.float32),
                    "start": scalar(np.float32),
                    "end": scalar(np.float32),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only: nothing is downloaded
        if not self._source:
            raise ValueError("VideoClips needs source= (a video folder or a manifest file)")
        entries = manifest.read_source(self._source)
        if not entries:
            raise ValueError(f"no videos found in {self._source}")
        bad = manifest.BadFiles(
            Path(self._data_dir_root) / BAD_FILES,
            self._max_bad_fraction,
            len(entries),
            limit_name=self._limit_name,
        )
        good = []
        for entry in entries:
            try:
                good.append((entry, manifest.probe(entry)))
                bad.ok()
            except ValueError as e:
                bad.add(entry.path, str(e))
        bad.finish()
        self.info.metadata["num_bad"] = len(bad.bad)
        self.info.metadata["num_seen"] = bad.seen
        logging.info("%s: %d clips, %d bad (%s)", NAME, len(good), len(bad.bad), bad.log_path)
        return {"train": self._generate_examples(good)}

    def _generate_examples(self, good):
        for i, (entry, meta) in enumerate(good):
            data = np.frombuffer(Path(entry.path).read_bytes(), np.uint8)
            yield i, dict(video=data, caption=entry.caption, path=entry.path, **meta)


class ForeignDataDir(ValueError):
    """The data_dir already holds a dataset built from another source or options."""


def _recipe(source: str, max_bad_fraction: float) -> dict:
    """What a build is made of: the source, its entries (path, caption, window, file size: a
    cheap stand-in for the bytes, stable when the same files are written again) and options."""
    entries = [
        (e.path, e.caption, e.fps, e.start, e.end, os.path.getsize(e.path))
        if os.path.isfile(e.path)
        else (e.path, e.caption, e.fps, e.start, e.end, None)
        for e in manifest.read_source(source)
    ]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return dict(
        source=os.path.abspath(source),
        entries=len(entries),
        entries_sha256=digest,
        max_bad_fraction=max_bad_fraction,
    )


def _check_data_dir(data_dir: Path, recipe: dict, overwrite: bool, flag_names: dict) -> None:
    """Refuses (ForeignDataDir) to reuse a dataset built from something else; with `overwrite`
    deletes it so that it is built again."""
    built = data_dir / NAME
    if not (built / str(VideoClips.VERSION) / "dataset_info.json").exists():
        return  # nothing finished there (a failed build leaves only temporary folders)
    record = data_dir / BUILD_RECORD
    old = json.loads(record.read_text()) if record.exists() else None
    if old == recipe:
        return  # the same build: reused as it is
    if overwrite:
        logging.warning("--overwrite: deleting %s (built from %s)", built, old)
        shutil.rmtree(built)
        record.unlink(missing_ok=True)
        return
    if old is None:
        what = "a dataset of unknown origin (no build record)"
    elif old["source"] != recipe["source"]:
        what = f"a dataset built from {old['source']}"
    elif old["entries_sha256"] != recipe["entries_sha256"]:
        what = f"a dataset built from other files of {old['source']} ({old['entries']} entries)"
    else:
        what = f"a dataset built with {flag_names['max_bad_fraction']}={old['max_bad_fraction']}"
    raise ForeignDataDir(
        f"{flag_names['data_dir']}={data_dir} already holds {what}, not this "
        f"{flag_names['source']}={recipe['source']}; use another {flag_names['data_dir']} or "
        f"{flag_names['overwrite']} to rebuild it"
    )


_API_NAMES = dict(
    data_dir="data_dir",
    source="source",
    max_bad_fraction="max_bad_fraction",
    overwrite="overwrite=True",
)


def build(
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    max_bad_fraction: float = 0.05,
    overwrite: bool = False,
    flag_names: dict | None = None,
) -> VideoClips:
    """Builds (once; later calls with the same source and options reuse it) the dataset of
    `source` under `data_dir`. A data_dir holding one built from another source or options
    raises `ForeignDataDir`, or with `overwrite` is rebuilt. `flag_names` (the CLI's flags)
    name the parameters in errors."""
    names = {**_API_NAMES, **(flag_names or {})}
    data_dir = Path(data_dir)
    recipe = _recipe(str(source), max_bad_fraction)
    _check_data_dir(data_dir, recipe, overwrite, names)
    builder = VideoClips(
        source=str(source),
        max_bad_fraction=max_bad_fraction,
        limit_name=names["max_bad_fraction"],
        data_dir=str(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    (data_dir / BUILD_RECORD).write_text(json.dumps(recipe, indent=2))
    return builder


def export_moving_shapes(
    folder: str | os.PathLike,
    num_examples: int,
    seed: int = 0,
    frame_choices=(1, 9, 17),
    resolutions=((32, 32), (32, 48), (48, 32)),
    image_fraction: float = 0.2,
    fps: int = 8,
) -> Path:
    """Writes examples 0..n-1 of the built-in set as `{i:06d}.mp4` + `.txt` (a video folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = shapes.MovingShapes(seed, num_examples, frame_choices, resolutions, image_fraction)
    for i in range(num_examples):
        ex = source[i]
        video_io.write_video(folder / f"{i:06d}.mp4", ex["video"], fps=fps)
        (folder / f"{i:06d}.txt").write_text(ex["caption"])
    return folder

"""Builds the TFDS dataset of your own videos (array_record shards), offline.

  python -m sora_jax.build_dataset --source=/videos --data_dir=/data/tfds
  python -m sora_jax.build_dataset --source=/videos/manifest.jsonl --data_dir=/data/tfds
  python -m sora_jax.build_dataset --moving_shapes=1000 --source=/tmp/shapes --data_dir=...

--source is a folder of videos with `<name>.txt` captions beside them, or a CSV / JSONL manifest
(path, caption, optional fps, start, end). Bad files are skipped and listed in
<data_dir>/bad_files.jsonl; more than --max_bad_fraction of them stops the build. With
--moving_shapes=N the built-in set's first N examples are first written to --source as such a
folder. Train on it with --config.data.source=tfds --config.data.tfds_data_dir=<data_dir>.

Re-running the same command reuses the dataset already built. A --data_dir holding one built
from another --source (or other files, or another --max_bad_fraction) is refused; --overwrite
deletes it and builds again.
"""

from __future__ import annotations

from absl import app, flags

from sora_jax.common import cli
from sora_jax.data import tfds_builder

_SOURCE = flags.DEFINE_string("source", None, "Video folder or manifest (.csv / .jsonl).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the dataset to.")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.05, "Stop past this fraction of bad files.")
_SHAPES = flags.DEFINE_integer("moving_shapes", 0, "Export this many built-in examples first.")
_FPS = flags.DEFINE_integer("fps", 8, "Frame rate of the exported moving-shapes videos.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Rebuild a --data_dir that holds a dataset of another source/options."
)
_FLAG_NAMES = dict(
    data_dir="--data_dir",
    source="--source",
    max_bad_fraction="--max_bad_fraction",
    overwrite="--overwrite",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not 0.0 <= _MAX_BAD.value <= 1.0:
        raise app.UsageError(f"--max_bad_fraction={_MAX_BAD.value}: must be in [0, 1]")
    if _SHAPES.value < 0 or _FPS.value <= 0:
        raise app.UsageError(
            f"--moving_shapes={_SHAPES.value} must be >= 0 and --fps={_FPS.value} > 0"
        )
    if _SHAPES.value > 0:
        tfds_builder.export_moving_shapes(_SOURCE.value, _SHAPES.value, fps=_FPS.value)
    builder = tfds_builder.build(
        _SOURCE.value,
        _DATA_DIR.value,
        _MAX_BAD.value,
        overwrite=_OVERWRITE.value,
        flag_names=_FLAG_NAMES,
    )
    meta = builder.info.metadata
    print(
        f"{tfds_builder.NAME}: {builder.info.splits['train'].num_examples} clips, "
        f"{meta['num_bad']} bad (listed in {_DATA_DIR.value}/{tfds_builder.BAD_FILES})"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["source", "data_dir"])
    cli.run(main)

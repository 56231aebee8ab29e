"""Builds the TFDS dataset of your own videos (array_record shards), offline.

  python -m sora_jax.build_dataset --source=/videos --data_dir=/data/tfds
  python -m sora_jax.build_dataset --source=/videos/manifest.jsonl --data_dir=/data/tfds
  python -m sora_jax.build_dataset --moving_shapes=1000 --source=/tmp/shapes --data_dir=...

--source is a folder of videos with `<name>.txt` captions beside them, or a CSV / JSONL manifest
(path, caption, optional fps, start, end). Bad files are skipped and listed in
<data_dir>/bad_files.jsonl; more than --max_bad_fraction of them stops the build. With
--moving_shapes=N the built-in set's first N examples are first written to --source as such a
folder. Train on it with --config.data.source=tfds --config.data.tfds_data_dir=<data_dir>.
"""

from __future__ import annotations

from absl import app, flags

from sora_jax.data import tfds_builder

_SOURCE = flags.DEFINE_string("source", None, "Video folder or manifest (.csv / .jsonl).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the dataset to.")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.05, "Stop past this fraction of bad files.")
_SHAPES = flags.DEFINE_integer("moving_shapes", 0, "Export this many built-in examples first.")
_FPS = flags.DEFINE_integer("fps", 8, "Frame rate of the exported moving-shapes videos.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _SHAPES.value > 0:
        tfds_builder.export_moving_shapes(_SOURCE.value, _SHAPES.value, fps=_FPS.value)
    builder = tfds_builder.build(_SOURCE.value, _DATA_DIR.value, _MAX_BAD.value)
    meta = builder.info.metadata
    print(
        f"{tfds_builder.NAME}: {builder.info.splits['train'].num_examples} clips, "
        f"{meta['num_bad']} bad (listed in {_DATA_DIR.value}/{tfds_builder.BAD_FILES})"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["source", "data_dir"])
    app.run(main)

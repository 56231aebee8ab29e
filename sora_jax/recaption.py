"""Recaptioning CLI: dense captions for every video of a manifest or TFDS dataset, on Beam.

  python -m sora_jax.recaption --input videos.jsonl --output_dir recaptioned/ \
      [--tfds_data_dir /data/tfds --tfds_name video_clips --split train instead of --input]
      [--captioner builtin --style grammar|detailed]
      [--captioner hf --model_path /models/blip --prompt "Describe the video." --batch_size 16]
      [--num_frames N] [--retry_failed] [any Beam pipeline option, e.g. --runner=DataflowRunner]

The manifest is JSONL or CSV with a `path` column (relative paths are relative to the manifest)
and optional `caption` / `id` / other columns, all kept. A TFDS dataset (the array_record
shards of `python -m sora_jax.build_dataset`) is read instead with --tfds_data_dir: example i is
keyed `<name>/<split>/<i>`, its frames come from the stored clip's window, and its path, caption
and clip metadata are kept. Writes output_dir/captions-<run>-*.jsonl
(each row + `id`, `dense_caption`, `captioner`), output_dir/dead_letter-<run>-*.jsonl (rows that
failed, with the error) and output_dir/manifest.jsonl (every captioned row). Re-running the same
command processes only rows not captioned (or failed, without --retry_failed) before.

Arguments this CLI does not know are Beam pipeline options (DirectRunner by default); see README
"Recaptioning" for Dataflow, Flink and Spark.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app, flags
from apache_beam.options.pipeline_options import PipelineOptions

from sora_jax.captioning import beam_pipeline, shapes_captioner, tfds_input
from sora_jax.common import cli
from sora_jax.captioning.captioner_spec import KINDS, CaptionerSpec

_INPUT = flags.DEFINE_string("input", "", "Manifest (.jsonl or .csv).")
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", "", "Or a TFDS data_dir (python -m sora_jax.build_dataset)."
)
_TFDS_NAME = flags.DEFINE_string("tfds_name", "video_clips", "TFDS dataset name.")
_SPLIT = flags.DEFINE_string("split", "train", "TFDS split.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder of the outputs (required).")
_CAPTIONER = flags.DEFINE_enum("captioner", "builtin", KINDS, "Captioner kind.")
_STYLE = flags.DEFINE_enum(
    "style", "grammar", shapes_captioner.STYLES, "Caption style of the builtin captioner."
)
_MODEL_PATH = flags.DEFINE_string("model_path", "", "Local transformers model folder (hf).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prompt for prompted hf models.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 60, "Most tokens an hf captioner generates per caption."
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames sampled per video (0 = all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Videos per captioner call.")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", False, "Retry earlier failures.")
_FLAGS = (
    _INPUT,
    _TFDS_DATA_DIR,
    _TFDS_NAME,
    _SPLIT,
    _OUTPUT_DIR,
    _CAPTIONER,
    _STYLE,
    _MODEL_PATH,
    _PROMPT,
    _MAX_NEW_TOKENS,
    _NUM_FRAMES,
    _BATCH_SIZE,
    _RETRY_FAILED,
)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """The flags parser of `app.run`: sets this CLI's flags from `argv` (the program name
    first) and returns the program name and the arguments no flag takes, in order: the Beam
    pipeline options. Every parse starts from the defaults (a process may run the CLI twice)."""
    for holder in _FLAGS:
        flags.FLAGS[holder.name].unparse()
    try:
        return flags.FLAGS(list(argv), known_only=True)
    except flags.Error as e:
        # One line naming the flag, as every sora_jax CLI reports a bad flag.
        sys.stderr.write(f"error: {cli.one_line(e)}\n")
        sys.exit(2)


def recaption_config() -> beam_pipeline.RecaptionConfig:
    """The job the parsed flags describe; ValueError for a bad combination."""
    if not _OUTPUT_DIR.value:
        raise ValueError("--output_dir is required")
    spec = CaptionerSpec(
        kind=_CAPTIONER.value,
        path=_MODEL_PATH.value,
        style=_STYLE.value,
        prompt=_PROMPT.value,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        num_frames=_NUM_FRAMES.value,
    )
    tfds = None
    if _TFDS_DATA_DIR.value:
        tfds = tfds_input.TfdsInput(_TFDS_DATA_DIR.value, _TFDS_NAME.value, _SPLIT.value)
    return beam_pipeline.RecaptionConfig(
        _INPUT.value, _OUTPUT_DIR.value, spec, _BATCH_SIZE.value, _RETRY_FAILED.value, tfds
    )


def main(argv: Sequence[str]) -> dict:
    """Runs the job of the parsed flags with `argv[1:]` (what `parse_flags` left) as Beam
    pipeline options; prints its counts as one JSON line and returns them."""
    try:
        cfg = recaption_config()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    counts = beam_pipeline.run(cfg, PipelineOptions(list(argv[1:])))
    print(json.dumps(counts))
    return counts


def _app_main(argv):
    main(argv)  # app.run exits with main's return value: the counts are printed instead


if __name__ == "__main__":
    cli.run(_app_main, flags_parser=parse_flags)

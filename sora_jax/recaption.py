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

import argparse
import json
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from sora_jax.captioning import beam_pipeline, shapes_captioner, tfds_input
from sora_jax.captioning.captioner_spec import KINDS, CaptionerSpec


def parse_args(argv: list[str]) -> tuple[beam_pipeline.RecaptionConfig, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m sora_jax.recaption", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--input", default="", help="Manifest (.jsonl or .csv).")
    parser.add_argument(
        "--tfds_data_dir", default="", help="Or a TFDS data_dir (python -m sora_jax.build_dataset)."
    )
    parser.add_argument("--tfds_name", default="video_clips", help="TFDS dataset name.")
    parser.add_argument("--split", default="train", help="TFDS split.")
    parser.add_argument("--output_dir", required=True, help="Folder of the outputs.")
    parser.add_argument("--captioner", choices=KINDS, default="builtin")
    parser.add_argument("--style", choices=shapes_captioner.STYLES, default="grammar")
    parser.add_argument("--model_path", default="", help="Local transformers model folder (hf).")
    parser.add_argument("--prompt", default=None, help="Text prompt for prompted hf models.")
    parser.add_argument("--max_new_tokens", type=int, default=60)
    parser.add_argument(
        "--num_frames", type=int, default=None, help="Frames sampled per video (0 = all)."
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Videos per captioner call.")
    parser.add_argument("--retry_failed", action="store_true", help="Retry earlier failures.")
    known, beam_args = parser.parse_known_args(argv)
    try:
        spec = CaptionerSpec(
            kind=known.captioner,
            path=known.model_path,
            style=known.style,
            prompt=known.prompt,
            max_new_tokens=known.max_new_tokens,
            num_frames=known.num_frames,
        )
        tfds = None
        if known.tfds_data_dir:
            tfds = tfds_input.TfdsInput(known.tfds_data_dir, known.tfds_name, known.split)
        cfg = beam_pipeline.RecaptionConfig(
            known.input, known.output_dir, spec, known.batch_size, known.retry_failed, tfds
        )
    except ValueError as e:
        parser.error(str(e))
    return cfg, beam_args


def main(argv: list[str] | None = None) -> dict:
    cfg, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    counts = beam_pipeline.run(cfg, PipelineOptions(beam_args))
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()

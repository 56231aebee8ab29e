"""Curation CLI: raw videos -> scene-cut clips, measured, filtered and de-duplicated, on Beam.

  python -m sora_jax.curate --input /videos --output_dir curated/ [--report]
      [--input videos.jsonl]  (a manifest: `path` and any other columns, kept in every clip)
      [--config configs/curate.py] [--config.filters.min_motion=0.01 ...] [--retry_failed]
      [any Beam pipeline option, e.g. --runner=DataflowRunner]

Writes output_dir/manifest.jsonl (one row per kept clip: the video's row + `id`, the window
`start` / `end` in seconds and the measurements; `python -m sora_jax.recaption --input` and
`python -m sora_jax.build_dataset --source` take it as it is), rejected.jsonl (dropped clips
with their `reasons`), the per-run shards clips-*, rejected-*, videos-*, dead_letter-*
(unreadable videos, with the error) and, with --report, report.html. Re-running the same command
processes only videos not done (or failed, without --retry_failed) before. Prints the job's Beam
counters as one JSON line. Every knob is in configs/curate.py.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from apache_beam.options.pipeline_options import PipelineOptions
from ml_collections import config_flags

from sora_jax.common import cli
from sora_jax.curation import beam_pipeline

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "curate.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "The curation config.")
_INPUT = flags.DEFINE_string("input", None, "Manifest (.jsonl / .csv) or folder of videos.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder of the outputs.")
_REPORT = flags.DEFINE_bool("report", None, "Write report.html (overrides config.report).")
_RETRY = flags.DEFINE_bool("retry_failed", None, "Retry earlier failures (config.retry_failed).")
_FLAGS = (_CONFIG, _INPUT, _OUTPUT_DIR, _REPORT, _RETRY)
_OVERRIDES: list[str] = []  # `--config.<key>=<value>` arguments of the last parse
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def apply_overrides(c, overrides: Sequence[str]):
    """Sets `key=value` overrides on config `c`, each value typed as the key's default;
    ValueError naming an unknown key or a bad value."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--config.{key}: give the value as --config.{key}=VALUE")
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"--config.{key}: no such key in the curation config")
        old = node[leaf]
        try:
            if isinstance(old, bool):
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError(text)
                value = text.lower() in _TRUE
            elif isinstance(old, int):
                value = int(text)
            elif isinstance(old, float):
                value = float(text)
            else:
                value = text
        except ValueError:
            raise ValueError(f"--config.{key}={text}: not a {type(old).__name__}") from None
        node[leaf] = value
    return c


def parse_flags(argv: Sequence[str]) -> list[str]:
    """The flags parser of `app.run`: sets this CLI's flags (and `--config.*` overrides) from
    `argv` and returns the program name and what no flag takes (the Beam pipeline options).
    Every parse starts from the defaults."""
    for holder in _FLAGS:
        flags.FLAGS[holder.name].unparse()
    # config_flags only registers `--config.*` flags when --config itself is parsed, which
    # known-only parsing (the rest goes to Beam) skips: they are applied here instead.
    argv = list(argv)
    _OVERRIDES[:] = [a[len("--config.") :] for a in argv[1:] if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    try:
        return flags.FLAGS(argv, known_only=True)
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)


def curate_config() -> beam_pipeline.CurateConfig:
    """The job the parsed flags describe; ValueError for a missing or bad setting."""
    if not _INPUT.value:
        raise ValueError("--input is required (a manifest or a folder of videos)")
    if not _OUTPUT_DIR.value:
        raise ValueError("--output_dir is required")
    c = apply_overrides(copy.deepcopy(_CONFIG.value), _OVERRIDES)
    if _REPORT.value is not None:
        c.report = _REPORT.value
    if _RETRY.value is not None:
        c.retry_failed = _RETRY.value
    return beam_pipeline.CurateConfig.from_config(_INPUT.value, _OUTPUT_DIR.value, c)


def main(argv: Sequence[str]) -> dict:
    """Runs the job of the parsed flags with `argv[1:]` as Beam pipeline options; prints its
    counters as one JSON line and returns them."""
    try:
        cfg = curate_config()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    counts = beam_pipeline.run(cfg, PipelineOptions(list(argv[1:])))
    print(json.dumps(counts))
    return counts


def _app_main(argv):
    main(argv)  # app.run would exit with main's return value: the counts are printed instead


if __name__ == "__main__":
    cli.run(_app_main, flags_parser=parse_flags)

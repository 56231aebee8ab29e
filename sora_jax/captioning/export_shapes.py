"""Writes the first N examples of a config's moving-shapes training set as mp4 files and a
manifest (id, path, caption), the input of `python -m sora_jax.recaption`; the recaptioned
manifest then trains the DiT through `config.data.captions_manifest`.

  python -m sora_jax.captioning.export_shapes --config=configs/tiny.py --out_dir=shapes_mp4 \
      [--num_examples=2048]   # default: config.dit.latent_cache_size (what the DiT trains on)
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from sora_jax import config as config_lib
from sora_jax.captioning.manifest import shapes_example_id
from sora_jax.data import shapes, video_io


def export(config, out_dir: str, num_examples: int) -> str:
    """Writes the examples and out_dir/manifest.jsonl; returns the manifest's path."""
    d = config.data
    source = shapes.MovingShapes(
        d.seed,
        d.num_examples,
        tuple(d.frame_choices),
        tuple(tuple(r) for r in d.resolutions),
        d.image_fraction,
        tuple(d.exclude_words),
    )
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    path = os.path.join(out_dir, "manifest.jsonl")
    with open(path, "w") as f:
        for i in range(min(num_examples, len(source))):
            example = source[i]
            rel = os.path.join("videos", f"{i:06d}.mp4")
            video_io.write_video(os.path.join(out_dir, rel), example["video"], fps=d.fps)
            row = dict(id=shapes_example_id(d.seed, i), path=rel, caption=example["caption"])
            f.write(json.dumps(row) + "\n")
    return path


def main(_):
    f = flags.FLAGS
    if not f.config or not f.out_dir:
        raise app.UsageError("--config and --out_dir are required")
    config = config_lib.validate(config_lib.load(f.config))
    print(export(config, f.out_dir, f.num_examples or config.dit.latent_cache_size))


if __name__ == "__main__":
    # Defined only when run as a program: training imports `export` next to its own --config.
    flags.DEFINE_string("config", None, "Config file whose data section to export.")
    flags.DEFINE_string("out_dir", None, "Folder for the mp4 files and manifest.jsonl.")
    flags.DEFINE_integer("num_examples", None, "Examples (default: dit.latent_cache_size).")
    app.run(main)

r"""Prepares own videos for DiT training in one command: the TFDS dataset, then the latent cache.

  python -m sora_jax.prepare --config=configs/tiny.py --workdir=runs/own --source=/videos \
      [--data_dir=runs/own/data] [--cache_dir=runs/own/latent_cache] [--max_bad_fraction=0.05]

1. builds the dataset of --source (a folder of videos with <name>.txt captions, or a CSV /
   JSONL manifest) into --data_dir, as `python -m sora_jax.build_dataset` does;
2. encodes every clip once with the workdir's trained VAE (train it first on the same videos:
   `python -m sora_jax.train ... --config.stages=vae --config.data.source=tfds
   --config.data.tfds_data_dir=<data_dir>`), and each caption to token ids (a frozen text
   encoder: to its embeddings), into the latent cache at --cache_dir, as
   `python -m sora_jax.cache_latents` does.
Then it prints the command that trains the DiT from the cache.

Re-running the same command after a kill, or after it finished, redoes only what is missing:
the dataset is reused when built from the same source, the cache when it is complete and was
written from that dataset with the same VAE checkpoint and text encoder (`prepare.json`).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.common import cli
from sora_jax.data import dit_input, latent_cache, tfds_builder
from sora_jax.inference import loader
from sora_jax.models import builders
from sora_jax.parallel import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding the trained VAE.")
_SOURCE = flags.DEFINE_string("source", None, "Video folder or manifest (.csv / .jsonl).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir (default <workdir>/data).")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "", "Latent cache (default config.data.cache_dir, else <workdir>/latent_cache)."
)
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.05, "Stop past this fraction of bad files.")
_FLAG_NAMES = dict(data_dir="--data_dir", source="--source", max_bad_fraction="--max_bad_fraction")
RECORD = "prepare.json"  # in the cache: what it was written from


def _record(data_dir: str, vae_step: int, num_examples: int, text_encoder) -> dict:
    return dict(
        data_dir=os.path.abspath(data_dir),
        num_examples=num_examples,
        vae_step=vae_step,
        text=text_encoder.identity,
    )


def _complete(cache_dir: str, record: dict) -> bool:
    path = os.path.join(cache_dir, RECORD)
    if not os.path.exists(os.path.join(cache_dir, latent_cache.INFO)):
        return False
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f) == record


def prepare(config, workdir: str, source: str, data_dir: str, cache_dir: str, max_bad: float):
    """Builds the dataset and writes the latent cache (each unless already done); returns the
    cache directory."""
    builder = tfds_builder.build(source, data_dir, max_bad, flag_names=_FLAG_NAMES)
    num = builder.info.splits["train"].num_examples
    print(f"dataset: {num} clips in {data_dir} ({builder.info.metadata['num_bad']} bad files)")
    config = config.copy_and_resolve_references()
    config.data.source, config.data.tfds_data_dir = "tfds", data_dir
    config.data.tfds_name, config.data.tfds_split = tfds_builder.NAME, "train"
    mesh = mesh_lib.create_mesh(config.mesh.num_devices)
    vae_model, vae_params, vae_step = loader.load_vae_with_step(config, workdir, mesh)
    text_encoder = builders.build_text_encoder(config)  # a frozen one loads its weights once
    record = _record(data_dir, vae_step, num, text_encoder)
    if _complete(cache_dir, record):
        print(f"latent cache: {cache_dir} is complete (VAE step {vae_step}); reusing it")
        return cache_dir
    if os.path.exists(os.path.join(cache_dir, RECORD)):
        os.remove(os.path.join(cache_dir, RECORD))  # written again once the cache is whole
    info = dit_input.write_latent_cache(
        config, (vae_model, vae_params), cache_dir, text_encoder=text_encoder
    )
    with open(os.path.join(cache_dir, RECORD), "w") as f:
        json.dump(record, f, indent=2)
    logging.info("latent cache info: %s", {k: info[k] for k in ("num_examples", "num_bad")})
    print(f"latent cache: {info['num_examples']} clips encoded with VAE step {vae_step}")
    return cache_dir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not 0.0 <= _MAX_BAD.value <= 1.0:
        raise app.UsageError(f"--max_bad_fraction={_MAX_BAD.value}: must be in [0, 1]")
    config = config_lib.validate(cli.config_value(_CONFIG))
    workdir = _WORKDIR.value
    data_dir = _DATA_DIR.value or os.path.join(workdir, "data")
    cache_dir = _CACHE_DIR.value or config.data.cache_dir or os.path.join(workdir, "latent_cache")
    if jax.process_index() != 0:
        return
    prepare(config, workdir, _SOURCE.value, data_dir, cache_dir, _MAX_BAD.value)
    print(
        "train the DiT on it: python -m sora_jax.train --config=<this config> "
        f"--workdir={workdir} --config.stages=dit --config.data.source=latent_cache "
        f"--config.data.cache_dir={cache_dir}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir", "source"])
    cli.run(main)

"""Offline latent cache: encode a TFDS video dataset with the trained VAE once.

  python -m sora_jax.cache_latents --config=configs/x.py --workdir=runs/x \
      [--output=runs/x/latent_cache] [--config.data.tfds_data_dir=...]

Reads the dataset named by config.data.tfds_* (every example, in source order, sampled and
resized as training does), encodes videos to VAE latents (the workdir's trained VAE) and
captions to token ids (and, for a frozen text encoder, to its embeddings in text.dtype), and
writes array_record shards plus `cache_info.json` (latent mean / std, text encoder identity)
to --output (default config.data.cache_dir, else <workdir>/latent_cache). Train from it with
--config.data.source=latent_cache --config.data.cache_dir=<output>.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.common import cli
from sora_jax.data import dit_input
from sora_jax.inference import loader
from sora_jax.parallel import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding the trained VAE.")
_OUTPUT = flags.DEFINE_string("output", "", "Cache directory (default: see module docstring).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required (the run whose VAE encodes the videos)")
    config = config_lib.validate(_CONFIG.value)
    if jax.process_index() == 0:
        mesh = mesh_lib.create_mesh(config.mesh.num_devices)
        vae = loader.load_vae(config, _WORKDIR.value, mesh)
        output = _OUTPUT.value or config.data.cache_dir
        output = output or os.path.join(_WORKDIR.value, "latent_cache")
        dit_input.write_latent_cache(config, vae, output)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)

"""Offline latent cache: encode a TFDS video dataset with the trained VAE once.

  python -m sora_jax.cache_latents --config=configs/x.py --workdir=runs/x \
      [--output=runs/x/latent_cache] [--config.data.tfds_data_dir=...]

Reads the dataset named by config.data.tfds_* (every example, in source order, sampled and
resized as training does), encodes videos to VAE latents (the workdir's trained VAE) and
captions to token ids, and writes array_record shards plus `cache_info.json` (latent mean / std)
to --output (default config.data.cache_dir, else <workdir>/latent_cache). Train from it with
--config.data.source=latent_cache --config.data.cache_dir=<output>.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.data import input_pipeline, latent_cache
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_input, dit_trainer, vae_trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding the trained VAE.")
_OUTPUT = flags.DEFINE_string("output", "", "Cache directory (default: see module docstring).")


def cache_latents(config, workdir: str, output: str = "", chunk: int = 64) -> dict:
    """Writes the cache; returns its info (num_examples, num_bad, latent_mean/std, ...)."""
    d = config.data
    output = output or d.cache_dir or os.path.join(workdir, "latent_cache")
    mesh = mesh_lib.create_mesh(config.mesh.num_devices)
    vae_model, vae_params = vae_trainer.load(config, workdir, mesh)
    text_encoder = dit_trainer.build_text_encoder(config)
    source = input_pipeline.open_tfds(d.tfds_name, d.tfds_data_dir, d.tfds_split)
    opts = input_pipeline.clip_options(config)
    writer = latent_cache.Writer(output)
    stats, num_bad = [], 0
    for start in range(0, len(source), chunk):
        indices = range(start, min(start + chunk, len(source)))
        examples = [input_pipeline.decode_example(opts, i, source[i]) for i in indices]
        good = [e for e in examples if e is not None]
        encoded = iter(dit_input.encode_examples(config, vae_model, vae_params, text_encoder, good))
        for i, example in zip(indices, examples):
            if example is None:
                num_bad += 1
                writer.add(latent_cache.BAD_RECORD)
                continue
            latent, ids, mask = next(encoded)
            if i < d.stats_examples:
                stats.append(latent)
            writer.add(latent_cache.encode_record(latent, ids, mask, i))
        logging.info("cached %d / %d examples", indices[-1] + 1, len(source))
    mean, std = dit_input.latent_stats(stats)
    info = writer.close(
        dict(
            num_bad=num_bad,
            latent_mean=mean.tolist(),
            latent_std=std.tolist(),
            tfds=dict(name=d.tfds_name, data_dir=d.tfds_data_dir, split=d.tfds_split),
            vae_model=config.vae.model.to_dict(),
            text_kind=config.text.kind,
        )
    )
    logging.info("latent cache: %s (%d examples, %d bad)", output, info["num_examples"], num_bad)
    return info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required (the run whose VAE encodes the videos)")
    config = config_lib.validate(_CONFIG.value)
    if jax.process_index() == 0:
        cache_latents(config, _WORKDIR.value, _OUTPUT.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)

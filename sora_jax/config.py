"""Configs: loading a config file, overrides, saved configs, and validation.

ml_collections already rejects unknown keys and wrong types on command-line overrides;
`validate` checks the values themselves and how they fit together (sizes divisible by the
compression, sequences long enough, ...) by running each component's own check of its section
(`validate_config` beside the code that reads it, written with sora_jax.common.config_checks).
Components never import this module.
"""

from __future__ import annotations

import json
import os
import runpy

import ml_collections

from sora_jax.common import training_config
from sora_jax.data import input_pipeline
from sora_jax.diffusion import objectives, samplers
from sora_jax.inference import prompts
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import wan_folder, wan_presets
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.text import encoders

CONFIG_FILE = "config.json"  # a workdir's (or an export's) config, as `save` writes it

# Backward compatibility of saved configs.
#
# A workdir (and an export) keeps the config it was trained with in config.json; sampling,
# evaluation, export and resuming read it back with `load_saved`, which fills the keys it lacks
# from this table. An entry is a dotted key -> the value that reproduces what the code did
# before the key existed (not necessarily the key's default in configs/default.py), so an old
# run loads, samples and resumes exactly as it trained.
#
# Policy:
# - every key added to configs/default.py after configs were first saved to workdirs needs an
#   entry here, in the same change that adds the key;
# - entries are never removed (nor their values changed) while old workdirs may exist;
# - tests/test_train.py checks that every key of the default config is either in the config
#   as first saved (tests/data/config_first_saved.json) or in this table.
ADDED_KEYS = {
    "vae.model.patch_size": 1,
    "vae.model.shortcuts": False,
    "vae.model.mid_attention": False,
    "vae.model.spatial_downsample": (),
    "vae.latent_noise": 0.0,
    "dit.model.abs_positions": False,
    "dit.model.cond_embedding": False,
    "dit.condition.rate": 0.0,
    "dit.model.mlp": "gelu",
    "dit.model.text_attention": "cross",
    "dit.model.attention_layout": "full",
    "dit.model.dtype": "float32",
    "dit.model.remat_policy": "none",
    "dit.model.attention_impl": "xla",
    "dit.model.attention_block_q": 512,
    "dit.model.attention_block_kv": 512,
    "dit.model.modulation": "segment",
    "dit.model.scan_blocks": False,
    "dit.finetune.mode": "full",
    "dit.finetune.init_from": "",
    "dit.finetune.freeze": "",
    "dit.finetune.lora_rank": 16,
    "dit.finetune.lora_alpha": 16.0,
    "dit.finetune.lora_dropout": 0.0,
    "dit.finetune.lora_targets": "qkv|attn_out|cross_q|cross_kv|cross_out|mlp_in|mlp_out",
    "dit.finetune.adapters_from": "",
    "dit.pack_lengths": (),
    "dit.text_tokens": 0,
    "sample.factorized": False,
    "sample.image_prompt": "same",
    "dit.first_frames": 0.0,
    "dit.token_drop.rate": 0.0,
    "data.exclude_words": (),
    "data.val_fraction": 0.0,
    "data.val_split_seed": 0,
    "dit.train.val_every": 0,
    "vae.train.val_every": 0,
    "vae.train.data": "moving_shapes",
    "vae.train.val_examples": 4,
    "dit.train.val_examples": 16,
    "dit.train.val_seed": 0,
    "dit.train.sample_every": 0,
    "dit.token_drop.schedule": "constant",
    "dit.token_drop.start_rate": 0.0,
    "dit.token_drop.schedule_steps": 10_000,
    "dit.token_drop.per_example": "fixed",
    "dit.token_drop.max_rate": 0.9,
    "dit.condition.mask_types.first": 0.4,
    "dit.condition.mask_types.first_k": 0.2,
    "dit.condition.mask_types.last_k": 0.15,
    "dit.condition.mask_types.both_ends": 0.15,
    "dit.condition.mask_types.random": 0.1,
    "dit.condition.random_frame_prob": 0.5,
    "dit.condition.noise": 0.0,
    "diffusion.condition_noise": 0.0,
    "diffusion.objective": "rectified_flow",
    "diffusion.mode_scale": 1.29,
    "diffusion.shift_mode": "fixed",
    "diffusion.shift_base_tokens": 256,
    "diffusion.shift_max": 4.0,
    "diffusion.shift_in_training": False,
    "diffusion.ddpm.prediction": "eps",
    "diffusion.ddpm.schedule": "linear",
    "diffusion.ddpm.num_train_steps": 1000,
    "diffusion.ddpm.beta_start": 1e-4,
    "diffusion.ddpm.beta_end": 0.02,
    "diffusion.ddpm.cosine_s": 0.008,
    "diffusion.ddpm.zero_terminal_snr": False,
    "diffusion.ddpm.min_snr_gamma": 0.0,
    "diffusion.sampler": "euler",
    "diffusion.spacing": "shifted",
    "diffusion.ddim_eta": 0.0,
    "diffusion.karras_rho": 7.0,
    "diffusion.karras_sigma_min": 0.002,
    "diffusion.karras_sigma_max": 80.0,
    "diffusion.guidance_interval": (0.0, 1.0),
    "diffusion.guidance_rescale": 0.0,
    # Before chunked/tiled inference the VAE always ran on the whole video at once.
    "vae.inference.chunked": False,
    "vae.inference.chunk_latent_frames": 4,
    "vae.inference.tiled": False,
    "vae.inference.tile_latent_size": 32,
    "vae.inference.tile_latent_overlap": 8,
    "vae.inference.shard_tiles": False,
    # Before config mesh axes the mesh was data parallel over mesh.num_devices.
    "mesh.data": -1,
    "mesh.fsdp": 1,
    "mesh.tensor": 1,
    "mesh.sequence": 1,
    "mesh.sequence_attention": "all_to_all",
    "mesh.dcn.data": 1,
    "mesh.dcn.fsdp": 1,
    "mesh.dcn.tensor": 1,
    "mesh.dcn.sequence": 1,
    "mesh.rules": partitioning.DEFAULT_RULES,
    "dit.train.grad_accum_steps": 1,
    "vae.perceptual.weight": 0.0,
    "vae.perceptual.path": "",
    "vae.gan.weight": 0.0,
    "vae.gan.start_step": 5000,
    "vae.gan.channels": (64, 128, 256),
    "vae.gan.temporal_downsample": (False, True),
    "vae.gan.norm_groups": 8,
    "vae.gan.learning_rate": 1e-4,
    "vae.gan.max_adaptive_weight": 1e4,
    "vae.latent_stats_batches": 16,
    "vae.train.image_batch_size": 0,
    # Before them the VAE loss was L1 + KL on posterior samples.
    "vae.mse_weight": 0.0,
    "vae.sample_posterior": True,
    # Pretrained text encoders (a Hugging Face tokenizer, bf16 weights, cached caption
    # embeddings); the defaults are the built-in tiny encoder's behaviour.
    "text.tokenizer_path": "",
    "text.dtype": "float32",
    "text.cache_dir": "",
    # The grain input pipeline (TFDS array_record clips or a latent cache, decoded in workers)
    # and recaptioned captions; the built-in moving-shapes source trains exactly as before.
    "data.tfds_name": "video_clips",
    "data.tfds_data_dir": "",
    "data.tfds_split": "train",
    "data.cache_dir": "",
    "data.max_frames": 17,
    "data.target_area": 64 * 64,
    "data.stats_examples": 256,
    "data.encode_batch_size": 4,
    "data.worker_count": 0,
    "data.max_bad_fraction": 0.05,
    "data.captions_manifest": "",
    "sample.expand_prompt": False,
    "sample.prompt_lm": "",
    "sample.mesh": "",
    # Before it a non-finite step stopped the run (at the next log step).
    "vae.train.skip_nonfinite": False,
    "dit.train.skip_nonfinite": False,
    "dit.train.steps_per_call": 1,
    # Public models (a diffusers Wan folder); before them every run built the project's own.
    "init.from_pretrained": "",
    "vae.kind": "causal",
    "vae.path": "",
    "dit.model.arch": "dit",
    **{f"dit.model.wan.{k}": v for k, v in wan_presets.WAN_2_1_T2V_1_3B.items()},
}


def fill_added_keys(saved: dict) -> dict:
    """A saved config dict (e.g. a workdir's config.json) with any `ADDED_KEYS` it lacks."""
    for key, value in ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        node = saved
        for name in parents:
            node = node.setdefault(name, {})
        node.setdefault(leaf, value)
    return saved


def load(path: str) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file path (as config_flags does)."""
    return runpy.run_path(path)["get_config"]()


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Sets dotted keys like `--config.dit.train.steps=100` does (e.g. from a notebook or an
    environment variable's JSON): lists become tuples; an unknown key raises KeyError naming
    it. Returns the validated config."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise KeyError(f"config override {key!r}: no such key")
        node[leaf] = json_tuples(value)
    return validate(config)


def json_tuples(x):
    """JSON turns tuples into lists; configs use tuples (hashable, as in the files)."""
    if isinstance(x, dict):
        return {k: json_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(json_tuples(v) for v in x)
    return x


def load_with_arg(path: str, arg: str) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` (as `--config=path:arg` does), e.g. a size of configs/dit.py."""
    return runpy.run_path(path)["get_config"](arg)


def save(config: ml_collections.ConfigDict, directory: str):
    """Writes the config to directory/config.json (creating the directory)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))


def load_saved(directory: str) -> ml_collections.ConfigDict:
    """The validated config of a training workdir or an exported checkpoint (its config.json,
    with the `ADDED_KEYS` it was saved without)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: give a directory written by `python -m sora_jax.train` (a "
            f"workdir) or by `python -m sora_jax.export` (it holds the config and the weights)"
        )
    with open(path) as f:
        saved = fill_added_keys(json.load(f))
    return validate(ml_collections.ConfigDict(json_tuples(saved)))


# Each component's check of its own section, in this order: a check may rely on the sections
# before it (the data and sample sizes divide by the VAE's compression, the DiT's seq_len must
# hold the data's videos, the mesh must split the DiT's rows).
_CHECKS = (
    training_config.validate_stages,  # stages
    vae_lib.validate_geometry,  # vae.model.patch_size (the compression)
    input_pipeline.validate_config,  # data.*
    vae_lib.validate_config,  # vae.* but vae.train
    encoders.validate_config,  # text.*
    dit_lib.validate_config,  # dit.* but dit.train
    training_config.validate_config,  # vae.train.*, dit.train.*
    objectives.validate_config,  # diffusion.*
    samplers.validate_sample_config,  # sample.*, eval.*
    prompts.validate_config,  # sample.expand_prompt
    mesh_lib.validate_config,  # mesh.*, the DiT's split over it
    wan_folder.validate_config,  # vae.kind, dit.model.arch: what a Wan model needs
)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every value the code relies on; returns the config, with the sections of
    config.init.from_pretrained's models filled in (`wan_folder.resolve`). A bad value raises
    ValueError naming its key (config.<key>=<value>: why)."""
    wan_folder.resolve(config)
    for check in _CHECKS:
        check(config)
    return config

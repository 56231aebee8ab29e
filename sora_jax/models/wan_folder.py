"""A local diffusers Wan folder (``WanPipeline`` layout) as the models of a sora_jax run.

A folder holds ``model_index.json``, ``vae/`` (AutoencoderKLWan), ``transformer/``
(WanTransformer3DModel), ``text_encoder/`` (UMT5EncoderModel), ``tokenizer/`` and
``scheduler/``. ``check_folder`` checks that layout; ``resolve`` turns
``config.init.from_pretrained = FOLDER`` into the config sections that build its models:

  vae       vae.kind = 'wan', vae.path = FOLDER/vae, and the geometry the data and the DiT
            read (vae.model.channel_mults, temporal_downsample, spatial_downsample, patch_size,
            latent_channels) from vae/config.json; the VAE is loaded frozen, not trained;
  text      text.kind = 't5' (UMT5), text.path = FOLDER/text_encoder, text.tokenizer_path =
            FOLDER/tokenizer;
  dit       dit.model.arch = 'wan', dit.model.wan = transformer/config.json's architecture,
            dit.patch = its patch_size; the trainer starts from its weights.

The resolved config is what a workdir saves, so sampling and resuming read the same models
(the workdir keeps the folder's path: the VAE and the text encoder load from it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import ml_collections
import numpy as np

from sora_jax.common import config_checks as cc
from sora_jax.models import wan_transformer as wt
from sora_jax.models import wan_vae, wan_vae_weights

MODEL_INDEX = "model_index.json"
SUBFOLDERS = ("vae", "transformer", "text_encoder", "tokenizer", "scheduler")
CONFIG_NAME = "config.json"


def is_wan_folder(path: str) -> bool:
    """True for a folder whose model_index.json names a Wan pipeline."""
    index = os.path.join(path, MODEL_INDEX)
    if not os.path.isfile(index):
        return False
    with open(index) as f:
        return str(json.load(f).get("_class_name", "")).startswith("Wan")


def check_folder(folder: str) -> dict:
    """``model_index.json`` of a single-transformer Wan pipeline folder with every subfolder;
    otherwise an error naming what is wrong."""
    index = os.path.join(folder, MODEL_INDEX)
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{folder}: no {MODEL_INDEX}; not a diffusers pipeline folder")
    with open(index) as f:
        d = json.load(f)
    if not str(d.get("_class_name", "")).startswith("Wan"):
        raise ValueError(f"{index}: _class_name {d.get('_class_name')!r} is not a Wan pipeline")
    if d.get("transformer_2") and d["transformer_2"][0] is not None:
        raise ValueError(
            f"{index}: a two-expert pipeline (transformer_2, Wan 2.2 A14B) is not supported"
        )
    for sub in SUBFOLDERS:
        if not os.path.isdir(os.path.join(folder, sub)):
            raise FileNotFoundError(f"{folder}: missing the {sub}/ folder of a Wan pipeline")
    return d


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def vae_config(path: str) -> wan_vae.WanVAEConfig:
    """The ``WanVAEConfig`` of an AutoencoderKLWan folder."""
    return wan_vae_weights.config_from_diffusers(_read_json(os.path.join(path, CONFIG_NAME)))


def transformer_fields(path: str) -> dict:
    """``dit.model.wan`` fields (``WanTransformerConfig``) of a WanTransformer3DModel folder."""
    cfg = wt.WanTransformerConfig.from_diffusers(_read_json(os.path.join(path, CONFIG_NAME)))
    return dataclasses.asdict(cfg)


def transformer_config(config: ml_collections.ConfigDict) -> wt.WanTransformerConfig:
    """The ``WanTransformerConfig`` of config.dit.model.wan."""
    fields = config.dit.model.wan.to_dict()
    fields["patch_size"] = tuple(fields["patch_size"])
    return wt.WanTransformerConfig(**fields)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the sections of config.init.from_pretrained's models filled in (module
    docstring); unchanged when it is ''. Idempotent."""
    folder = config.init.from_pretrained
    if not folder:
        return config
    try:
        check_folder(folder)
        v = vae_config(os.path.join(folder, "vae"))
        fields = transformer_fields(os.path.join(folder, "transformer"))
    except (OSError, ValueError) as e:
        raise ValueError(f"config.init.from_pretrained={folder}: {e}") from None
    config.vae.kind = "wan"
    config.vae.path = os.path.join(folder, "vae")
    config.vae.model.channel_mults = tuple(v.dim_mult)
    config.vae.model.temporal_downsample = tuple(v.temporal_downsample)
    config.vae.model.patch_size = v.patch
    config.vae.model.spatial_downsample = ()  # every Wan VAE level halves space
    config.vae.model.latent_channels = v.z_dim
    config.text.kind = "t5"
    config.text.path = os.path.join(folder, "text_encoder")
    config.text.tokenizer_path = os.path.join(folder, "tokenizer")
    config.dit.model.arch = "wan"
    with config.dit.model.wan.ignore_type():
        for key, value in fields.items():
            config.dit.model.wan[key] = tuple(value) if key == "patch_size" else value
    config.dit.patch = tuple(fields["patch_size"])
    return config


def latent_stats(config) -> tuple[np.ndarray, np.ndarray] | None:
    """The Wan VAE's own per-channel latent (mean, std) f32[c], which its transformer was
    trained with; None for the project's VAE (its statistics are measured on the data)."""
    if config.vae.kind != "wan":
        return None
    v = vae_config(config.vae.path)
    return np.asarray(v.latents_mean, np.float32), np.asarray(v.latents_std, np.float32)


def load_vae_params(model: wan_vae.WanVAE, path: str):
    """float32 params of ``model`` from the AutoencoderKLWan folder ``path`` (every key
    mapped and shape-checked)."""
    return wan_vae_weights.from_state_dict(wan_vae_weights.read_state_dict(path), model)


def check_trainable(config):
    """A Wan transformer trains from the public model it fine-tunes (its folder gives the VAE
    and the text encoder too); a config without one can be planned, not trained."""
    cc.check(
        config.dit.model.arch != "wan" or config.vae.kind == "wan",
        "init.from_pretrained",
        config.init.from_pretrained,
        "a Wan config trains from a local diffusers Wan folder: "
        "--config.init.from_pretrained=FOLDER",
    )


def validate_config(config):
    """Checks what a Wan model in the config needs (vae.kind, dit.model.arch)."""
    cc.one_of(config, "vae.kind", ("causal", "wan"))
    cc.one_of(config, "dit.model.arch", ("dit", "wan"))
    if config.vae.kind == "wan":
        cc.check(
            os.path.isdir(config.vae.path),
            "vae.path",
            config.vae.path,
            "a Wan VAE needs its AutoencoderKLWan folder",
        )
        cc.check(
            "vae" not in config.stages,
            "stages",
            tuple(config.stages),
            "the Wan VAE is loaded frozen, not trained: leave 'vae' out",
        )
    if config.dit.model.arch != "wan":
        return
    cfg = transformer_config(config)
    cc.check(
        tuple(config.dit.patch) == cfg.patch_size,
        "dit.patch",
        tuple(config.dit.patch),
        f"must be the Wan transformer's patch_size {cfg.patch_size}",
    )
    cc.check(
        cfg.in_channels == cfg.out_channels == config.vae.model.latent_channels,
        "dit.model.wan.in_channels",
        cfg.in_channels,
        f"in and out channels must be the VAE's {config.vae.model.latent_channels} latent "
        f"channels (out_channels={cfg.out_channels})",
    )
    cc.one_of(config, "dit.model.remat_policy", ("none", "nothing_saveable"))
    f = config.dit.finetune
    cc.check(
        f.mode != "lora" or any(re.fullmatch(f.lora_targets, n) for n in wt.LORA_LAYERS),
        "dit.finetune.lora_targets",
        f.lora_targets,
        f"matches no layer of the Wan transformer; its layers: {'|'.join(wt.LORA_LAYERS)}",
    )
    cc.check(
        config.diffusion.objective == "rectified_flow",
        "diffusion.objective",
        config.diffusion.objective,
        "the Wan transformer predicts the flow velocity: use 'rectified_flow'",
    )
    cc.check(
        config.dit.text_tokens == 0,
        "dit.text_tokens",
        config.dit.text_tokens,
        "the Wan transformer attends every caption token of its segment: use 0",
    )

"""Config loading and validation: bad values fail fast with the key's name.

ml_collections already rejects unknown keys and wrong types on command-line
overrides; `validate` checks the values themselves and how they fit together
(sizes divisible by the compression, sequences long enough, ...).
"""

from __future__ import annotations

import json
import math
import os
import runpy
from collections.abc import Sequence

import ml_collections

from sora_jax.data import packing
from sora_jax.diffusion import conditioning, ddpm, objectives, samplers
from sora_jax.diffusion import rectified_flow as rf
from sora_jax.models import attention
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel.partitioning import DEFAULT_RULES as _RULES

STAGES = ("vae", "dit")
DATA_SOURCES = ("moving_shapes", "tfds", "latent_cache")
TEXT_KINDS = ("tiny", "bert", "t5", "clip")
IMAGE_PROMPTS = ("same", "first_frame")  # sample.image_prompt


# Keys added after configs were first saved to workdirs, with the value that reproduces what a
# workdir written before them trained: older runs keep loading (and resuming) unchanged.
ADDED_KEYS = {
    "vae.model.patch_size": 1,
    "vae.model.shortcuts": False,
    "vae.model.mid_attention": False,
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
    "dit.pack_lengths": (),
    "dit.text_tokens": 0,
    "sample.factorized": False,
    "sample.image_prompt": "same",
    "dit.first_frames": 0.0,
    "dit.token_drop.rate": 0.0,
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
    "mesh.rules": _RULES,
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
    # Pretrained text encoders (issue 9): defaults are the old behaviour.
    "text.tokenizer_path": "",
    "text.dtype": "float32",
    "text.cache_dir": "",
    # Grain sources (issue 8); the built-in source trains exactly as before.
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


CONFIG_FILE = "config.json"  # in a training workdir and in an exported checkpoint


def save(config: ml_collections.ConfigDict, directory: str):
    """Writes `directory`/config.json."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))


def load_saved(directory: str) -> ml_collections.ConfigDict:
    """The validated config of a training workdir or an exported checkpoint."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: give a directory written by `python -m sora_jax.train` (a "
            f"workdir) or by `python -m sora_jax.export` (it holds the config and the weights)"
        )
    with open(path) as f:
        saved = fill_added_keys(json.load(f))
    return validate(ml_collections.ConfigDict(json_tuples(saved)))


def load_with_arg(path: str, arg: str) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` (as `--config=path:arg` does), e.g. a size of configs/dit.py."""
    return runpy.run_path(path)["get_config"](arg)


def vae_compression(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(temporal, spatial) compression of the VAE described by config.vae.model."""
    m = config.vae.model
    # The model owns its geometry; an unbound module is enough to read it.
    vae = vae_lib.CausalVAE(
        channel_mults=tuple(m.channel_mults),
        temporal_downsample=tuple(bool(d) for d in m.temporal_downsample),
        patch_size=m.patch_size,
    )
    return vae.temporal_compression, vae.spatial_compression


def latent_grid(config, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (t, h, w) of a video; raises ValueError when the size is impossible."""
    ct, cs = vae_compression(config)
    pt, ph, pw = config.dit.patch
    if num_frames < 1 or (num_frames - 1) % ct:
        raise ValueError(
            f"num_frames={num_frames} is not supported: the causal VAE needs 1 + {ct}*k frames "
            f"(e.g. 1, {1 + ct}, {1 + 2 * ct})."
        )
    for name, size, p in (("height", height, ph), ("width", width, pw)):
        if size < cs * p or size % (cs * p):
            raise ValueError(
                f"{name}={size} is not supported: it must be a positive multiple of {cs * p} "
                f"(VAE spatial compression {cs} x patch size {p})."
            )
    t = 1 + (num_frames - 1) // ct
    if t % pt:
        raise ValueError(
            f"num_frames={num_frames} gives {t} latent frames, not divisible by "
            f"the temporal patch size {pt}."
        )
    return t, height // cs, width // cs


def num_tokens(config, num_frames: int, height: int, width: int) -> int:
    t, h, w = latent_grid(config, num_frames, height, width)
    pt, ph, pw = config.dit.patch
    return (t // pt) * (h // ph) * (w // pw)


def _check(cond: bool, key: str, value, why: str):
    if not cond:
        raise ValueError(f"config.{key}={value!r}: {why}")


def _positive(config, *keys: str):
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        _check(isinstance(value, (int, float)) and value > 0, key, value, "must be > 0")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every value the code relies on; returns the config unchanged."""
    stages = tuple(config.stages)
    _check(
        len(stages) > 0 and all(s in STAGES for s in stages),
        "stages",
        stages,
        f"must be a non-empty subset of {STAGES}",
    )
    # The VAE's geometry first: the size checks below divide by its compression.
    _positive(config, "vae.model.patch_size")
    d = config.data
    _check(d.source in DATA_SOURCES, "data.source", d.source, f"must be one of {DATA_SOURCES}")
    _check(
        d.source != "latent_cache" or bool(d.cache_dir),
        "data.cache_dir",
        d.cache_dir,
        "data.source='latent_cache' needs the cache folder written by sora_jax.cache_latents",
    )
    _positive(config, "data.target_area", "data.stats_examples", "data.encode_batch_size")
    _check(d.worker_count >= 0, "data.worker_count", d.worker_count, "must be >= 0")
    _check(
        0.0 <= d.max_bad_fraction <= 1.0,
        "data.max_bad_fraction",
        d.max_bad_fraction,
        "must be in [0, 1]",
    )
    if d.source != "moving_shapes":
        # Clip sizes of the grain sources (the built-in set uses frame_choices / resolutions).
        side = int(math.isqrt(int(d.target_area)))
        side -= side % (vae_compression(config)[1] * max(config.dit.patch[1:]))
        _check_size(config, "data.max_frames", d.max_frames, side, side)
        _check(
            num_tokens(config, d.max_frames, side, side) <= config.dit.seq_len,
            "data.target_area",
            d.target_area,
            f"a square clip of max_frames={d.max_frames} frames at this area has more tokens "
            f"than dit.seq_len={config.dit.seq_len}",
        )
    _check(len(d.frame_choices) > 0, "data.frame_choices", d.frame_choices, "must not be empty")
    _check(len(d.resolutions) > 0, "data.resolutions", d.resolutions, "must not be empty")
    _check(
        0.0 <= d.image_fraction <= 1.0, "data.image_fraction", d.image_fraction, "must be in [0, 1]"
    )
    _positive(config, "data.num_examples", "data.fps")
    for f in d.frame_choices:
        _check_size(config, "data.frame_choices", f, *d.resolutions[0])
    for res in d.resolutions:
        _check(
            isinstance(res, Sequence) and len(res) == 2,
            "data.resolutions",
            res,
            "each resolution must be (height, width)",
        )
        _check_size(config, "data.resolutions", 1, *res)

    m = config.vae.model
    _check(
        len(m.temporal_downsample) == len(m.channel_mults) - 1,
        "vae.model.temporal_downsample",
        m.temporal_downsample,
        f"needs len(channel_mults)-1={len(m.channel_mults) - 1} entries",
    )
    _positive(
        config,
        "vae.model.base_channels",
        "vae.model.latent_channels",
        "vae.model.norm_groups",
        "vae.model.num_res_blocks",
    )
    for mult in m.channel_mults:
        _check(
            (m.base_channels * mult) % m.norm_groups == 0,
            "vae.model.norm_groups",
            m.norm_groups,
            f"must divide every level's channels ({m.base_channels * mult})",
        )
    inf = config.vae.inference
    _positive(config, "vae.inference.chunk_latent_frames", "vae.inference.tile_latent_size")
    _check(
        0 <= inf.tile_latent_overlap <= inf.tile_latent_size // 2,
        "vae.inference.tile_latent_overlap",
        inf.tile_latent_overlap,
        f"must be in [0, tile_latent_size // 2 = {inf.tile_latent_size // 2}]",
    )
    for key in ("mse_weight", "kl_weight", "latent_noise"):
        _check(config.vae[key] >= 0, f"vae.{key}", config.vae[key], "must be >= 0")
    _validate_vae_losses(config)

    _check(
        config.text.kind in TEXT_KINDS,
        "text.kind",
        config.text.kind,
        f"must be one of {TEXT_KINDS}",
    )
    _check(
        config.text.kind == "tiny" or bool(config.text.path),
        "text.path",
        config.text.path,
        f"text.kind={config.text.kind!r} needs the path of a local Hugging Face model folder",
    )
    _check(
        config.text.dtype in ("float32", "bfloat16"),
        "text.dtype",
        config.text.dtype,
        "must be 'float32' or 'bfloat16'",
    )
    _positive(config, "text.max_length", "text.width", "text.num_heads")
    # depth 0: word + position embeddings only (no mixing between words).
    _check(config.text.depth >= 0, "text.depth", config.text.depth, "must be >= 0")

    dm = config.dit.model
    _positive(
        config,
        "dit.model.hidden",
        "dit.model.depth",
        "dit.model.num_heads",
        "dit.model.mlp_ratio",
        "dit.seq_len",
        "dit.rows",
        "dit.max_segments",
        "dit.latent_cache_size",
    )
    _check(
        dm.hidden % dm.num_heads == 0 and (dm.hidden // dm.num_heads) % 2 == 0,
        "dit.model.num_heads",
        dm.num_heads,
        f"must divide dit.model.hidden={dm.hidden} into even head sizes",
    )
    _check(
        len(config.dit.patch) == 3 and all(p > 0 for p in config.dit.patch),
        "dit.patch",
        config.dit.patch,
        "must be three positive sizes (t, h, w)",
    )
    _check(
        0.0 <= config.dit.first_frames <= 1.0,
        "dit.first_frames",
        config.dit.first_frames,
        "must be in [0, 1]",
    )
    _check(
        0.0 <= config.dit.text_dropout < 1.0,
        "dit.text_dropout",
        config.dit.text_dropout,
        "must be in [0, 1)",
    )
    tt = config.dit.text_tokens
    _check(
        tt == 0 or tt >= config.text.max_length,
        "dit.text_tokens",
        tt,
        f"must be 0 (off) or hold one whole caption (>= text.max_length={config.text.max_length})",
    )
    _validate_condition(config)
    _validate_dit_options(config)
    _row_shapes(config)
    _check(
        not config.dit.pack_lengths or d.source == "moving_shapes",
        "dit.pack_lengths",
        config.dit.pack_lengths,
        f"length-bucketed batches need the in-memory latent cache (data.source='moving_shapes'), "
        f"not {d.source!r}",
    )
    longest = max(num_tokens(config, f, *r) for f in d.frame_choices for r in d.resolutions)
    _check(
        longest <= config.dit.seq_len,
        "dit.seq_len",
        config.dit.seq_len,
        f"the largest training video has {longest} tokens; seq_len must hold it",
    )

    for stage in ("vae", "dit"):
        t = config[stage].train
        _positive(
            config,
            f"{stage}.train.steps",
            f"{stage}.train.learning_rate",
            f"{stage}.train.log_every",
            f"{stage}.train.checkpoint_every",
            f"{stage}.train.keep_checkpoints",
        )
        _check(t.warmup_steps >= 0, f"{stage}.train.warmup_steps", t.warmup_steps, "must be >= 0")
        _check(
            0.0 <= t.ema_decay < 1.0, f"{stage}.train.ema_decay", t.ema_decay, "must be in [0, 1)"
        )
        _check(t.grad_clip > 0, f"{stage}.train.grad_clip", t.grad_clip, "must be > 0")
    _positive(config, "vae.train.batch_size")
    _check(
        len(config.vae.train.buckets) > 0,
        "vae.train.buckets",
        config.vae.train.buckets,
        "must list at least one (frames, height, width)",
    )
    for bucket in config.vae.train.buckets:
        _check(
            len(bucket) == 3, "vae.train.buckets", bucket, "each bucket is (frames, height, width)"
        )
        _check_size(config, "vae.train.buckets", *bucket)

    _validate_diffusion(config)

    s = config.sample
    _check_size(config, "sample", s.num_frames, s.height, s.width)
    _one_of(config, "sample.image_prompt", IMAGE_PROMPTS)
    _positive(config, "eval.num_prompts")
    _check(
        config.mesh.num_devices == -1 or config.mesh.num_devices > 0,
        "mesh.num_devices",
        config.mesh.num_devices,
        "must be -1 (all devices) or a positive count",
    )
    _validate_mesh(config)
    return config


def _validate_mesh(config):
    m = config.mesh
    for group, sizes in (("mesh", m), ("mesh.dcn", m.dcn)):
        values = [sizes[a] for a in mesh_lib.AXES]
        _check(
            all(v == -1 or v >= 1 for v in values) and values.count(-1) <= 1,
            group,
            dict(zip(mesh_lib.AXES, values)),
            "axis sizes must be >= 1, with at most one -1 (fill)",
        )
    _check(-1 not in [m.dcn[a] for a in mesh_lib.AXES], "mesh.dcn", m.dcn, "no -1 across slices")
    names = [r[0] for r in m.rules if len(r) == 2]
    _check(
        len(names) == len(m.rules) and len(set(names)) == len(names),
        "mesh.rules",
        m.rules,
        "must be distinct (logical name, mesh axes) pairs",
    )
    for name, axes in m.rules:
        axes = axes if isinstance(axes, (list, tuple)) else (axes,)
        _check(
            all(a is None or a in mesh_lib.AXES for a in axes),
            "mesh.rules",
            (name, axes),
            f"mesh axes must be among {mesh_lib.AXES} or None",
        )
    _one_of(config, "mesh.sequence_attention", ("all_to_all", "gspmd"))
    _positive(config, "dit.train.grad_accum_steps")
    seq = m.sequence * m.dcn.sequence
    _check(
        m.sequence == -1 or config.dit.seq_len % seq == 0,
        "dit.seq_len",
        config.dit.seq_len,
        f"must be divisible by the sequence split {seq} (mesh.sequence x mesh.dcn.sequence)",
    )
    k = config.dit.train.grad_accum_steps
    if m.data != -1 and m.fsdp != -1:
        split = m.data * m.fsdp * m.dcn.data * m.dcn.fsdp * k
        _check(
            config.dit.rows % split == 0,
            "dit.rows",
            config.dit.rows,
            f"must be divisible by the data x fsdp devices x dit.train.grad_accum_steps ({split})",
        )
        _check(
            all(r % split == 0 for r, _ in _row_shapes(config).values()),
            "dit.pack_lengths",
            config.dit.pack_lengths,
            f"rows per length {_row_shapes(config)} must be divisible by the data x fsdp "
            f"devices x dit.train.grad_accum_steps ({split})",
        )
    _check(
        m.sequence == -1 or all(l % seq == 0 for l in _row_shapes(config)),
        "dit.pack_lengths",
        config.dit.pack_lengths,
        f"must be divisible by the sequence split {seq}",
    )


def _row_shapes(config) -> dict[int, tuple[int, int]]:
    dc = config.dit
    try:
        return packing.row_shapes(dc.seq_len, dc.rows, dc.max_segments, dc.pack_lengths)
    except ValueError as e:
        raise ValueError(f"config.dit.pack_lengths={tuple(dc.pack_lengths)}: {e}") from None


def _one_of(config, key: str, options: Sequence[str]):
    value = config[key]
    _check(value in options, key, value, f"must be one of {options}")


def _validate_vae_losses(config):
    v = config.vae
    p, g = v.perceptual, v.gan
    _check(p.weight >= 0, "vae.perceptual.weight", p.weight, "must be >= 0")
    _check(
        p.weight == 0 or bool(p.path),
        "vae.perceptual.path",
        p.path,
        "vae.perceptual.weight > 0 needs the path of a local LPIPS weights file "
        "(.safetensors or .npz; layout in sora_jax/models/lpips.py)",
    )
    _check(g.weight >= 0, "vae.gan.weight", g.weight, "must be >= 0")
    _check(g.start_step >= 0, "vae.gan.start_step", g.start_step, "must be >= 0")
    _check(len(g.channels) >= 1, "vae.gan.channels", g.channels, "must not be empty")
    _check(
        len(g.temporal_downsample) == len(g.channels) - 1,
        "vae.gan.temporal_downsample",
        g.temporal_downsample,
        f"needs len(vae.gan.channels)-1={len(g.channels) - 1} entries",
    )
    _positive(
        config,
        "vae.gan.norm_groups",
        "vae.gan.learning_rate",
        "vae.gan.max_adaptive_weight",
        "vae.latent_stats_batches",
    )
    for c in g.channels[1:]:
        _check(
            c % g.norm_groups == 0,
            "vae.gan.norm_groups",
            g.norm_groups,
            f"must divide every downsampling level's channels ({c})",
        )
    _check(
        v.train.image_batch_size >= 0,
        "vae.train.image_batch_size",
        v.train.image_batch_size,
        "must be >= 0",
    )


def _validate_condition(config):
    k = config.dit.condition
    _check(0.0 <= k.rate <= 1.0, "dit.condition.rate", k.rate, "must be in [0, 1]")
    types = dict(k.mask_types)
    _check(
        set(types) <= set(conditioning.MASK_TYPES),
        "dit.condition.mask_types",
        sorted(types),
        f"keys must be among {conditioning.MASK_TYPES}",
    )
    _check(
        all(w >= 0 for w in types.values()) and sum(types.values()) > 0,
        "dit.condition.mask_types",
        types,
        "weights must be >= 0 with a positive sum",
    )
    _check(
        0.0 < k.random_frame_prob < 1.0,
        "dit.condition.random_frame_prob",
        k.random_frame_prob,
        "must be in (0, 1)",
    )
    _check(0.0 <= k.noise < 1.0, "dit.condition.noise", k.noise, "must be in [0, 1)")


def _validate_dit_options(config):
    _one_of(config, "dit.model.mlp", dit_lib.MLPS)
    _one_of(config, "dit.model.text_attention", dit_lib.TEXT_ATTENTIONS)
    _one_of(config, "dit.model.attention_layout", dit_lib.ATTENTION_LAYOUTS)
    _one_of(config, "dit.model.dtype", tuple(dit_lib.DTYPES))
    _one_of(config, "dit.model.remat_policy", dit_lib.REMAT_POLICIES)
    _one_of(config, "dit.model.attention_impl", attention.kernel_names())
    d = config.dit.token_drop
    _one_of(config, "dit.token_drop.schedule", packing.DROP_SCHEDULES)
    _one_of(config, "dit.token_drop.per_example", packing.DROP_DISTRIBUTIONS)
    _check(0.0 < d.max_rate < 1.0, "dit.token_drop.max_rate", d.max_rate, "must be in (0, 1)")
    for key in ("rate", "start_rate"):
        _check(
            0.0 <= d[key] <= d.max_rate,
            f"dit.token_drop.{key}",
            d[key],
            f"must be in [0, dit.token_drop.max_rate={d.max_rate}]",
        )
    _positive(config, "dit.token_drop.schedule_steps")


def _validate_diffusion(config):
    f = config.diffusion
    _one_of(config, "diffusion.objective", objectives.OBJECTIVES)
    _one_of(config, "diffusion.timestep_sampling", rf.TIMESTEP_SAMPLINGS)
    _one_of(config, "diffusion.shift_mode", rf.SHIFT_MODES)
    _one_of(config, "diffusion.sampler", samplers.SAMPLERS)
    _one_of(config, "diffusion.spacing", samplers.SPACINGS)
    _positive(
        config,
        "diffusion.sample_steps",
        "diffusion.time_shift",
        "diffusion.logit_std",
        "diffusion.shift_base_tokens",
        "diffusion.karras_rho",
        "diffusion.karras_sigma_min",
    )
    # f_mode is a monotone map of [0, 1] onto itself only in this range (SD3, eq. 20).
    mode_max = 2.0 / (math.pi - 2.0)
    _check(
        -1.0 <= f.mode_scale <= mode_max,
        "diffusion.mode_scale",
        f.mode_scale,
        f"must be in [-1, {mode_max:.3f}]",
    )
    _check(f.shift_max >= 1.0, "diffusion.shift_max", f.shift_max, "must be >= 1")
    _check(
        f.karras_sigma_max > f.karras_sigma_min,
        "diffusion.karras_sigma_max",
        f.karras_sigma_max,
        f"must be > diffusion.karras_sigma_min={f.karras_sigma_min}",
    )
    _check(0.0 <= f.ddim_eta <= 1.0, "diffusion.ddim_eta", f.ddim_eta, "must be in [0, 1]")
    _check(f.guidance_scale >= 0, "diffusion.guidance_scale", f.guidance_scale, "must be >= 0")
    gi = f.guidance_interval
    _check(
        isinstance(gi, Sequence) and len(gi) == 2 and 0.0 <= gi[0] <= gi[1] <= 1.0,
        "diffusion.guidance_interval",
        gi,
        "must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1",
    )
    _check(
        0.0 <= f.guidance_rescale <= 1.0,
        "diffusion.guidance_rescale",
        f.guidance_rescale,
        "must be in [0, 1]",
    )
    _check(
        0.0 <= f.condition_noise < 1.0,
        "diffusion.condition_noise",
        f.condition_noise,
        "must be in [0, 1)",
    )
    d = f.ddpm
    _one_of(config, "diffusion.ddpm.prediction", ddpm.PREDICTIONS)
    _one_of(config, "diffusion.ddpm.schedule", ddpm.SCHEDULES)
    _positive(config, "diffusion.ddpm.num_train_steps", "diffusion.ddpm.cosine_s")
    _check(
        0.0 < d.beta_start < d.beta_end < 1.0,
        "diffusion.ddpm.beta_start",
        (d.beta_start, d.beta_end),
        "needs 0 < beta_start < beta_end < 1",
    )
    _check(d.min_snr_gamma >= 0, "diffusion.ddpm.min_snr_gamma", d.min_snr_gamma, "must be >= 0")
    _check(
        not (d.zero_terminal_snr and d.prediction == "eps"),
        "diffusion.ddpm.prediction",
        d.prediction,
        "eps-prediction cannot denoise pure noise (x0 = (x - sigma eps) / 0): use 'v' or "
        "'x0' with diffusion.ddpm.zero_terminal_snr",
    )


def _check_size(config, key, num_frames, height, width):
    try:
        latent_grid(config, num_frames, height, width)
    except ValueError as e:
        raise ValueError(f"config.{key}: {e}") from None

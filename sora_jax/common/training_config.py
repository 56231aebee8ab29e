"""Checks of `stages` and the stages' `train` sections (optimizer, EMA, loop, batches).

Kept beside the shared check primitives rather than in training/, so that loading a config
for inference (which validates it) never imports the trainers.
"""

from __future__ import annotations

import re

from sora_jax.common import config_checks as cc
from sora_jax.models import geometry

STAGES = ("vae", "dit")  # config.stages: what `python -m sora_jax.train` trains, in order


def validate_stages(config):
    """Checks config.stages."""
    stages = tuple(config.stages)
    cc.check(
        len(stages) > 0 and all(s in STAGES for s in stages),
        "stages",
        stages,
        f"must be a non-empty subset of {STAGES}",
    )


def validate_config(config):
    """Checks each stage's config.<stage>.train.* (optimizer, EMA, loop, batches); the VAE
    and the DiT sections must be valid already."""
    for stage in STAGES:
        t = config[stage].train
        cc.positive(
            config,
            f"{stage}.train.steps",
            f"{stage}.train.learning_rate",
            f"{stage}.train.log_every",
            f"{stage}.train.checkpoint_every",
            f"{stage}.train.keep_checkpoints",
        )
        cc.check(t.warmup_steps >= 0, f"{stage}.train.warmup_steps", t.warmup_steps, "must be >= 0")
        cc.check(
            0.0 <= t.ema_decay < 1.0, f"{stage}.train.ema_decay", t.ema_decay, "must be in [0, 1)"
        )
        cc.check(t.grad_clip > 0, f"{stage}.train.grad_clip", t.grad_clip, "must be > 0")
    v = config.vae.train
    cc.check(
        v.image_batch_size >= 0, "vae.train.image_batch_size", v.image_batch_size, "must be >= 0"
    )
    cc.positive(config, "vae.train.batch_size")
    cc.check(
        len(v.buckets) > 0,
        "vae.train.buckets",
        v.buckets,
        "must list at least one (frames, height, width)",
    )
    for bucket in v.buckets:
        cc.check(
            len(bucket) == 3, "vae.train.buckets", bucket, "each bucket is (frames, height, width)"
        )
        geometry.check_size(config, "vae.train.buckets", *bucket)
    cc.positive(
        config,
        "dit.train.grad_accum_steps",
        "dit.train.steps_per_call",
        "dit.train.val_examples",
        "vae.train.val_examples",
    )
    cc.check(
        v.data in ("source", "moving_shapes"),
        "vae.train.data",
        v.data,
        "must be 'source' (data.source's videos) or 'moving_shapes'",
    )
    for key in ("dit.train.val_every", "dit.train.sample_every", "vae.train.val_every"):
        stage, _, name = key.split(".")
        value = config[stage].train[name]
        cc.check(value >= 0, key, value, "must be >= 0 (0: never)")
    f = config.data.val_fraction
    cc.check(0.0 <= f < 1.0, "data.val_fraction", f, "must be in [0, 1)")
    _validate_finetune(config)


FINETUNE_MODES = ("full", "lora")


def _validate_finetune(config):
    """Checks config.dit.finetune.*."""
    f = config.dit.finetune
    cc.check(f.mode in FINETUNE_MODES, "dit.finetune.mode", f.mode, f"one of {FINETUNE_MODES}")
    try:
        re.compile(f.freeze)
    except re.error as e:
        cc.check(False, "dit.finetune.freeze", f.freeze, f"is not a regular expression ({e})")
    cc.check(
        not (f.mode == "lora" and f.freeze),
        "dit.finetune.freeze",
        f.freeze,
        "applies to 'full' fine-tuning ('lora' trains the adapters only)",
    )
    if f.mode == "lora":
        for key, ok, why in (
            ("lora_rank", f.lora_rank >= 1, "must be >= 1"),
            ("lora_alpha", f.lora_alpha > 0, "must be > 0"),
            ("lora_dropout", 0.0 <= f.lora_dropout < 1.0, "must be in [0, 1)"),
        ):
            cc.check(ok, f"dit.finetune.{key}", f[key], why)
        try:
            re.compile(f.lora_targets)
        except re.error as e:
            cc.check(False, "dit.finetune.lora_targets", f.lora_targets, f"not a regex ({e})")
    if f.adapters_from:
        cc.check(
            f.mode == "lora" and bool(f.init_from),
            "dit.finetune.adapters_from",
            f.adapters_from,
            "needs mode='lora' and the base they adapt in init_from",
        )

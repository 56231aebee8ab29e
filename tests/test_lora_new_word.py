"""A LoRA fine-tune teaches the tiny model a caption word its base never saw.

The base trains on the built-in set without white backgrounds (data.exclude_words), so the
word 'white' never appears in its captions and its embedding is the untrained one. A LoRA
fine-tune on the full set (white backgrounds included) must then make prompts that say
'white' draw a bright background, while samples of prompts with the other background words
stay close to the base's: the adapters learned the word, not a global shift.
"""

import numpy as np
import pytest
from test_finetune import _finetune
from test_train import micro_config

from sora_jax import train
from sora_jax.data import shapes
from sora_jax.evaluation import prompt_following
from sora_jax.inference import pipeline as pipeline_lib

WORD = "white"
SEEDS = (0, 1)
BASE_STEPS = dict(vae=150, dit=600)
LORA_STEPS = 200
# Enough examples that every attribute value recurs often in the latent cache.
OVERRIDES = {"dit.latent_cache_size": 256}


def _prompts(background):
    return [
        f"a medium {c} {s} on a {background} background"
        for c in shapes.COLOURS
        for s in shapes.SHAPES
    ]


def _samples(pipe, background):
    """f32[n 16 16 3] images of every colour and shape on `background`, fixed seeds."""
    prompts = _prompts(background)
    return np.concatenate(
        [
            pipe.generate(prompts, num_frames=1, height=16, width=16, seed=s).astype(np.float32)
            for s in SEEDS
        ]
    )


def _background_level(images):
    """Mean grey level of each image's pixels outside its saturated shape."""
    return np.array(
        [x[~prompt_following.foreground_mask(x.astype(np.uint8))].mean() for x in images]
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("base_without_word"))
    config = micro_config(vae_steps=BASE_STEPS["vae"], dit_steps=BASE_STEPS["dit"])
    config.update_from_flattened_dict(
        {
            "eval.at_end": False,
            "data.exclude_words": (WORD,),
            "vae.train.log_every": 100,
            "vae.train.checkpoint_every": BASE_STEPS["vae"],
            "dit.train.log_every": 100,
            "dit.train.checkpoint_every": BASE_STEPS["dit"],
            **OVERRIDES,
        }
    )
    train.train_and_evaluate(config, workdir)
    return workdir


def test_lora_learns_a_new_background_word(base, tmp_path):
    """Measured (2-core CPU, 2 x 21 images per background): 'white' background level 70 in
    the base (the unknown word draws any background), 242 after the LoRA (white is 236); mean
    absolute pixel change 170 for 'white' prompts, 2.9 / 13.7 / 16.3 for black / charcoal /
    grey and 23.0 for silver, whose background the base drew as bright as white (232) and the
    LoRA at 209 (silver is 190). Bounds: the level rises by > 60 and ends > 200; no other
    word's level rises by more than 0.25x that (measured: at most +12.7, charcoal) and none
    changes by more than 0.5x the word's pixels (measured <= 0.14x)."""
    workdir = str(tmp_path / "lora")
    _finetune(
        base,
        workdir,
        steps=LORA_STEPS,
        overrides={
            **OVERRIDES,
            "dit.train.log_every": 100,
            "dit.train.checkpoint_every": LORA_STEPS,
        },
        mode="lora",
        lora_rank=4,
        lora_alpha=8.0,
    )
    pipes = [pipeline_lib.load_pipeline(path) for path in (base, workdir)]
    level, change = {}, {}
    for background in shapes.BACKGROUNDS:
        before, after = (_samples(pipe, background) for pipe in pipes)
        level[background] = (_background_level(before).mean(), _background_level(after).mean())
        change[background] = float(np.abs(after - before).mean())
    print(f"background level (base, LoRA) {level}; mean |pixel change| {change}")
    was, now = level[WORD]
    assert now - was > 60 and now > 200, level
    for background in shapes.BACKGROUNDS:
        if background != WORD:
            assert level[background][1] - level[background][0] < 0.25 * (now - was), level
            assert change[background] < 0.5 * change[WORD], change

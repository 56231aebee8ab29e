r"""Prompt-following evaluation: generate from moving-shapes prompts, measure from pixels.

  python -m sora_jax.evaluate --workdir=runs/tiny [--num_prompts=32 --seed=10000]
  python -m sora_jax.evaluate --workdir=runs/tiny --mode=i2v  # first frame given
  python -m sora_jax.evaluate --workdir=runs/tiny --prompts=user  # prompts as users type them
  python -m sora_jax.evaluate --real [--num_prompts=32]   # the data itself (~100%)
  python -m sora_jax.evaluate --noise                     # random pixels (chance)

For each prompt the colour (foreground colour histogram), shape, direction and
speed of motion (centroid trajectory) are read off the video and compared with
the prompt's attributes. --prompts=user samples the 48 prompts of
sora_jax/evaluation/user_prompts.py (everyday phrasing, through the default
sampling path and its prompt expansion) and scores the attributes each names.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from sora_jax.common import cli
from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval
from sora_jax.inference import pipeline as pipeline_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to evaluate.")
_NUM = flags.DEFINE_integer("num_prompts", None, "Prompts (default: config.eval).")
_SEED = flags.DEFINE_integer("seed", None, "Prompt/noise seed (default: config.eval).")
_REAL = flags.DEFINE_boolean("real", False, "Score rendered ground-truth videos instead.")
_NOISE = flags.DEFINE_boolean("noise", False, "Score uniform random noise videos instead.")
_FRAMES = flags.DEFINE_integer("frames", 9, "Frames per video (--real/--noise).")
_HEIGHT = flags.DEFINE_integer("height", 32, "Height (--real/--noise).")
_WIDTH = flags.DEFINE_integer("width", 48, "Width (--real/--noise).")
_MODE = flags.DEFINE_enum(
    "mode",
    "t2v",
    ["t2v", "i2v"],
    "t2v: text->video; i2v: image->video, conditioned on each held-out video's first frame.",
)
_PROMPTS = flags.DEFINE_enum(
    "prompts",
    "grammar",
    ["grammar", "user"],
    "grammar: captions of the training grammar; user: prompts as users type them (t2v).",
)
_EXPAND = flags.DEFINE_bool(
    "expand_prompt", None, "Expand prompts first (default: config.sample.expand_prompt)."
)
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler (default: config.diffusion).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: config.diffusion).")
_NUM_SEEDS = flags.DEFINE_integer(
    "num_seeds", 1, "--prompts=user: noise seeds per prompt (--seed, --seed + 1, ...), pooled."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _PROMPTS.value == "user" and (_REAL.value or _NOISE.value or _MODE.value != "t2v"):
        raise app.UsageError("--prompts=user: text->video of a --workdir only")
    if _NUM_SEEDS.value != 1 and (_PROMPTS.value != "user" or _NUM_SEEDS.value < 1):
        raise app.UsageError(
            f"--num_seeds={_NUM_SEEDS.value}: a count >= 1, with --prompts=user only (more "
            "grammar prompts: --num_prompts)"
        )
    if _REAL.value or _NOISE.value:
        n, seed = _NUM.value or 32, 10_000 if _SEED.value is None else _SEED.value
        attrs = prompt_eval.eval_prompts(n, seed, _FRAMES.value, _HEIGHT.value, _WIDTH.value)
        if _REAL.value:
            videos = [
                shapes.render(
                    a, _FRAMES.value, _HEIGHT.value, _WIDTH.value, np.random.default_rng(i)
                )
                for i, a in enumerate(attrs)
            ]
        else:
            rng = np.random.default_rng(seed)
            videos = [
                rng.integers(0, 256, (_FRAMES.value, _HEIGHT.value, _WIDTH.value, 3), np.uint8)
                for _ in attrs
            ]
        result = prompt_eval.evaluate_videos(videos, attrs)
    else:
        if not _WORKDIR.value:
            raise app.UsageError("--workdir is required (or --real / --noise)")
        try:
            pipe = pipeline_lib.load_pipeline(_WORKDIR.value)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(str(e)) from None
        e = pipe.config.eval
        seed = e.seed if _SEED.value is None else _SEED.value
        sampling = dict(sampler=_SAMPLER.value, steps=_STEPS.value, expand_prompt=_EXPAND.value)
        try:
            if _PROMPTS.value == "user":
                result = prompt_eval.evaluate_user_prompts(
                    pipe, seed, num_seeds=_NUM_SEEDS.value, **sampling
                )
            else:
                evaluate = {
                    "t2v": prompt_eval.evaluate_pipeline,
                    "i2v": prompt_eval.evaluate_image_to_video,
                }[_MODE.value]
                result = evaluate(pipe, _NUM.value or e.num_prompts, seed, **sampling)
        except ValueError as err:
            raise app.UsageError(str(err)) from None
        result.update(mode=_MODE.value, prompts=_PROMPTS.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.run(main)

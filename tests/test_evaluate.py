"""The prompt-following evaluator scores real data near 100% and noise near chance."""

import json
import os
import subprocess
import sys
import types

import numpy as np
from test_faults import _message_lines

from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval
from sora_jax.evaluation.user_prompts import USER_PROMPTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_real_videos_score_high_and_noise_scores_near_chance():
    attrs = prompt_eval.eval_prompts(32, 10_000, 9, 32, 48)
    assert len({shapes.caption(a) for a in attrs}) == 32  # varied prompts
    real = [shapes.render(a, 9, 32, 48, np.random.default_rng(i)) for i, a in enumerate(attrs)]
    r = prompt_eval.evaluate_videos(real, attrs)
    assert r["colour_accuracy"] >= 0.95 and r["direction_accuracy"] >= 0.9, r
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (9, 32, 48, 3), np.uint8) for _ in attrs]
    n = prompt_eval.evaluate_videos(noise, attrs)
    assert n["colour_accuracy"] <= 0.35 and n["direction_accuracy"] <= 0.35, n


def test_evaluate_cli_real_and_noise():
    out = {}
    for mode in ("real", "noise"):
        r = subprocess.run(
            [sys.executable, "-m", "sora_jax.evaluate", f"--{mode}", "--num_prompts=16"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        out[mode] = json.loads(r.stdout)
    assert out["real"]["colour_accuracy"] >= 0.9 > out["noise"]["colour_accuracy"]


class _RendersOnFirstSeed:
    """A pipeline stand-in: u8[n t h w c] of the prompts' true renders for seed 10000, blank
    videos for other seeds."""

    config = types.SimpleNamespace(sample=types.SimpleNamespace(num_frames=9, height=32, width=48))

    def __init__(self):
        self.seeds = []

    def generate(self, prompts, num_frames, height, width, seed, **sampling):
        self.seeds.append(seed)
        attrs = [named for _, named in USER_PROMPTS]
        assert prompts == [p for p, _ in USER_PROMPTS]
        if seed != 10_000:
            return np.full((len(prompts), num_frames, height, width, 3), 128, np.uint8)
        return np.stack(
            [
                shapes.render(
                    {**shapes.sample_attributes(np.random.default_rng(i), False, 9, 32, 48), **a},
                    num_frames,
                    height,
                    width,
                    np.random.default_rng(i),
                )
                for i, a in enumerate(attrs)
            ]
        )


def test_user_prompt_evaluation_pools_noise_seeds():
    pipe = _RendersOnFirstSeed()
    one = prompt_eval.evaluate_user_prompts(pipe, 10_000)
    pipe.seeds = []
    two = prompt_eval.evaluate_user_prompts(pipe, 10_000, num_seeds=2)
    assert pipe.seeds == [10_000, 10_001]
    assert two["num_seeds"] == 2 and two["num_videos"] == 2 * one["num_videos"]
    assert one["colour_accuracy"] >= 0.95, one
    # The blank second seed's videos score nothing: the pool halves every accuracy.
    assert two["colour_accuracy"] == one["colour_accuracy"] / 2


def test_user_prompts_are_text_to_video_of_a_workdir_only():
    r = subprocess.run(
        [sys.executable, "-m", "sora_jax.evaluate", "--num_seeds=3", "--workdir=x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and _message_lines(r.stderr) == [
        "error: --num_seeds=3: a count >= 1, with --prompts=user only (more grammar prompts: "
        "--num_prompts)"
    ], r.stderr
    for bad in (["--real"], ["--noise"], ["--workdir=x", "--mode=i2v"]):
        r = subprocess.run(
            [sys.executable, "-m", "sora_jax.evaluate", "--prompts=user", *bad],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 2 and _message_lines(r.stderr) == [
            "error: --prompts=user: text->video of a --workdir only"
        ], r.stderr

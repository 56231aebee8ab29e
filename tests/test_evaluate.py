"""The prompt-following evaluator scores real data near 100% and noise near chance."""

import json
import os
import subprocess
import sys

import numpy as np
from test_faults import _message_lines

from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval

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


def test_user_prompts_are_text_to_video_of_a_workdir_only():
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

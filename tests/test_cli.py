"""CLI user experience: --help lists the modes; each mistake a CLI can detect stops it with a
message naming the problem (before any checkpoint loads where possible)."""

import pytest
from test_train import micro_config, run_cli

from sora_jax import config as config_lib

PROMPT = "--prompt=a large red circle moves right steadily on a grey background"


@pytest.mark.parametrize(
    "module, expected",
    [
        (
            "sora_jax.sample",
            [
                "--image first.png",
                "--extend forward",
                "--extend backward",
                "--connect a.mp4 b.mp4",
                "--edit 0.6",
                "image->video",
                "exported",
                "--workdir",
                "--seed",
            ],
        ),
        ("sora_jax.export", ["--workdir=runs/tiny --out=exports/tiny", "--bf16", "load_pipeline"]),
        ("sora_jax.evaluate", ["--mode=i2v", "--real", "--noise"]),
        ("sora_jax.train", ["--config=configs/tiny.py --workdir=runs/tiny", "resumes"]),
    ],
)
def test_help_lists_the_modes(module, expected):
    r = run_cli(module, "--help")
    for text in expected:
        assert text in r.stdout, (module, text)


@pytest.fixture()
def config_only(tmp_path):
    """A workdir holding a config but no checkpoint (training never ran)."""
    config_lib.save(micro_config(), str(tmp_path))
    return tmp_path


def test_sample_cli_errors_name_the_problem(config_only, tmp_path):
    w = f"--workdir={config_only}"
    cases = [
        ([f"--workdir={tmp_path}/nowhere", PROMPT], f"--workdir={tmp_path}/nowhere does not exist"),
        ([w, "--prompt= "], "--prompt must be given and not empty"),
        ([w], "--prompt must be given and not empty"),
        (
            [w, PROMPT, "--height=20"],
            "height=20 is not supported: it must be a positive multiple of 8",
        ),
        ([w, PROMPT, "--frames=0"], "num_frames=0: must be at least 1"),
        ([w, PROMPT], "no VAE checkpoint under"),
        ([w, PROMPT, "--guidance_interval=a,b"], "--guidance_interval must be two numbers"),
    ]
    for args, message in cases:
        r = run_cli("sora_jax.sample", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, args


def test_export_cli_errors_name_the_problem(config_only, tmp_path):
    cases = [
        ([f"--workdir={tmp_path}/nowhere", f"--out={tmp_path}/o"], "nowhere does not exist"),
        (
            [f"--out={tmp_path}/o"],
            "--workdir (a training workdir) and --out (a new folder) are required",
        ),
        ([f"--workdir={config_only}", f"--out={tmp_path}/o"], "no VAE checkpoint under"),
        ([f"--workdir={config_only}", f"--out={config_only}"], "exists and is not empty"),
    ]
    for args, message in cases:
        r = run_cli("sora_jax.export", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, args

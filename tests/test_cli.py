"""CLI user experience: --help lists the modes; each mistake a CLI can detect stops it with a
message naming the problem (before any checkpoint loads where possible)."""

import pytest
from test_faults import _message_lines
from test_train import TINY, micro_config, run_cli

from sora_jax import config as config_lib
from sora_jax.data import tfds_builder

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
        ([w, PROMPT, f"--adapters={tmp_path}/none"], f"{tmp_path}/none/adapters.json not found"),
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
        (
            [f"--workdir={config_only}", f"--out={tmp_path}/o", "--adapters_only", "--bf16"],
            "drop --bf16 and --scan_blocks",
        ),
        (
            [f"--workdir={config_only}", f"--out={tmp_path}/o", "--adapters_only"],
            "is not a LoRA run (config.dit.finetune.mode='full')",
        ),
    ]
    for args, message in cases:
        r = run_cli("sora_jax.export", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, args


def _one_line(r, *fragments):
    """The CLI failed with exactly one message line (no usage dump, no traceback) holding
    every fragment; returns it."""
    lines = _message_lines(r.stderr)
    assert r.returncode != 0, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for text in fragments:
        assert text in lines[0], (text, lines[0])
    return lines[0]


TINY_MICRO = f"--config={TINY}:micro"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--config=configs/nope.py", "--workdir=w"], ["--config=configs/nope.py", "no such file"]),
        (
            [TINY_MICRO, "--workdir=w", "--config.dit.train.stepz=3"],
            ["--config.dit.train.stepz", "'stepz'", "did you mean 'steps'"],
        ),
        ([TINY_MICRO, "--workdir=w", "--config.dit.train.steps=0"], ["config.dit.train.steps=0"]),
        (
            [TINY_MICRO, "--workdir=w", "--config.mesh.fsdp=3"],
            ["mesh", "'fsdp': 3", "devices are not divisible"],
        ),
        ([TINY_MICRO, "--workdri=w"], ["workdri", "workdir"]),
        ([TINY_MICRO], ["--workdir is required"]),
        (["--workdir=w"], ["--config"]),
    ],
)
def test_train_cli_errors_are_one_line(args, fragments, tmp_path):
    args = [a.replace("--workdir=w", f"--workdir={tmp_path}/w") for a in args]
    _one_line(run_cli("sora_jax.train", *args), *fragments)


def test_sampling_flags_are_checked_before_the_model_loads(config_only):
    # config_only has no checkpoint: an error about the flag (not "no VAE checkpoint") shows
    # the check ran before any loading.
    w = f"--workdir={config_only}"
    _one_line(run_cli("sora_jax.sample", w, PROMPT, "--steps", "0"), "--steps=0: must be > 0")
    _one_line(
        run_cli("sora_jax.sample", w, PROMPT, "--guidance_scale", "-5"),
        "--guidance_scale=-5.0: must be >= 0",
    )
    _one_line(run_cli("sora_jax.sample", w, PROMPT, "--sampler=foo"), "--sampler=foo", "euler")
    _one_line(run_cli("sora_jax.sample", w, PROMPT), "no VAE checkpoint under")


def test_build_dataset_cli_errors_name_the_flag(tmp_path):
    src = tmp_path / "src"
    tfds_builder.export_moving_shapes(
        src, 2, frame_choices=(1,), resolutions=((16, 16),), image_fraction=1.0
    )
    (src / "empty.mp4").write_bytes(b"")
    (src / "empty.txt").write_text("a caption")
    data = f"--data_dir={tmp_path}/tfds"
    r = run_cli("sora_jax.build_dataset", f"--source={src}", data, "--max_bad_fraction=2")
    _one_line(r, "--max_bad_fraction=2.0: must be in [0, 1]")
    r = run_cli("sora_jax.build_dataset", f"--source={src}", data, "--max_bad_fraction=0.1")
    _one_line(r, "1 of 3 files are bad", "(--max_bad_fraction)")
    r = run_cli("sora_jax.build_dataset", f"--source={src}", data, "--max_bad_fraction=0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    other = tmp_path / "other"
    tfds_builder.export_moving_shapes(
        other, 1, frame_choices=(1,), resolutions=((16, 16),), image_fraction=1.0
    )
    r = run_cli("sora_jax.build_dataset", f"--source={other}", data)
    _one_line(
        r, f"--data_dir={tmp_path}/tfds already holds a dataset built from {src}", "--overwrite"
    )
    r = run_cli("sora_jax.build_dataset", f"--source={other}", data, "--overwrite")
    assert r.returncode == 0 and "video_clips: 1 clips" in r.stdout, r.stderr[-2000:]


def test_other_cli_errors_are_one_line(tmp_path):
    _one_line(run_cli("sora_jax.plan", "--config=nope.py"), "--config=nope.py", "no such file")
    _one_line(
        run_cli("sora_jax.export", f"--workdir={tmp_path}/x", f"--out={tmp_path}/o"),
        "x does not exist",
    )
    _one_line(
        run_cli("sora_jax.recaption", "--input=m.jsonl", "--output_dir=o", "--captioner=bogus"),
        "--captioner",
        "builtin|hf",
    )
    for module, flag in (
        ("sora_jax.build_dataset", "--overwrite"),
        ("sora_jax.plan", "--topology"),
    ):
        assert flag in run_cli(module, "--help").stdout, module

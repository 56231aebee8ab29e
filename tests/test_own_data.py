"""Own videos end to end through the documented commands, each killed once and re-run:
build_dataset -> train (VAE) -> prepare (latent cache) -> train (DiT) -> sample."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("tensorflow_datasets")

from test_data_pipeline import CLIPS, _write_folder  # noqa: E402
from test_train import ROOT, TINY, run_cli  # noqa: E402

from sora_jax.data import video_io  # noqa: E402

DATA = [
    "--config.data.max_frames=5",
    f"--config.data.target_area={16 * 24}",
    "--config.data.image_fraction=0",
    "--config.data.stats_examples=4",
    "--config.data.val_fraction=0.3",
]


def _kill_once(module, *args, when: str, cache: str, timeout: float = 300):
    """Runs `python -m module args` and kills it (SIGKILL) as soon as a file matches the glob
    `when`; if it ends first, it must have succeeded. A kill can land while the process writes
    an entry of the JAX cache `cache`, and a process that later reads a truncated entry aborts:
    the entries written in the last seconds before the kill are dropped (an entry is written
    in milliseconds, right after its program compiles), so the re-run reuses the others."""
    p = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache),
        cwd=ROOT,
    )
    start = time.time()
    while p.poll() is None and not glob.glob(when) and time.time() - start < timeout:
        time.sleep(0.05)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        recent = time.time() - 5
        for entry in os.scandir(cache) if os.path.isdir(cache) else ():
            if entry.is_file() and entry.stat().st_mtime >= recent:
                os.remove(entry.path)
        return "killed"
    assert p.returncode == 0, p.stderr.read()[-3000:]
    return "finished"


def _run(module, *args, cache: str):
    """`run_cli` compiling into the JAX cache `cache`; the CompletedProcess, which must have
    succeeded."""
    r = run_cli(module, *args, JAX_COMPILATION_CACHE_DIR=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_own_videos_from_folder_to_samples_with_a_kill_at_every_stage(tmp_path):
    videos = _write_folder(tmp_path / "videos")  # mixed sizes, rates, lengths; bad files
    data_dir, work = str(tmp_path / "tfds"), str(tmp_path / "run")
    config = f"--config={TINY}:micro"
    # The test's own JAX cache, seeded with the suite's: its killed processes may truncate
    # entries, which no other test must read.
    jax_cache = str(tmp_path / "jax_cache")
    if os.path.isdir(shared := os.environ["JAX_COMPILATION_CACHE_DIR"]):
        shutil.copytree(shared, jax_cache)

    # 1. The dataset (the bad files are listed, not fatal).
    args = [f"--source={videos}", f"--data_dir={data_dir}", "--max_bad_fraction=0.5"]
    out = _run("sora_jax.build_dataset", *args, cache=jax_cache).stdout
    assert f"{len(CLIPS)} clips, 3 bad" in out

    # 2. The VAE on those videos, killed after its first checkpoint and re-run.
    vae = [config, f"--workdir={work}", "--config.stages=vae", *DATA]
    vae += ["--config.data.source=tfds", f"--config.data.tfds_data_dir={data_dir}"]
    vae += ["--config.vae.train.steps=4", "--config.vae.latent_stats_batches=1"]
    ckpts = os.path.join(work, "vae", "checkpoints")
    assert _kill_once("sora_jax.train", *vae, when=f"{ckpts}/2", cache=jax_cache) == "killed"
    assert not os.path.exists(f"{ckpts}/4")
    _run("sora_jax.train", *vae, cache=jax_cache)
    assert sorted(os.listdir(ckpts))[-1] == "4"

    # 3. The latent cache, killed while it writes and re-run; a third run reuses it.
    prep = [config, f"--workdir={work}", f"--source={videos}", f"--data_dir={data_dir}"]
    prep += ["--max_bad_fraction=0.5", *DATA]
    cache = os.path.join(work, "latent_cache")
    # Four clips encode fast: the cache may be whole before the kill lands. Either way the
    # record that makes a re-run reuse the cache never exists without the whole cache.
    _kill_once("sora_jax.prepare", *prep, when=f"{cache}/latents-*", cache=jax_cache)
    if os.path.exists(os.path.join(cache, "prepare.json")):
        assert os.path.exists(os.path.join(cache, "cache_info.json"))
    _run("sora_jax.prepare", *prep, cache=jax_cache)
    with open(os.path.join(cache, "cache_info.json")) as f:
        assert json.load(f)["num_examples"] == len(CLIPS)
    assert "reusing it" in _run("sora_jax.prepare", *prep, cache=jax_cache).stdout

    # 4. The DiT from the cache, killed after its first checkpoint and re-run (with held-out
    # validation and end-of-run samples; no moving-shapes judge on own videos).
    dit = [config, f"--workdir={work}", "--config.stages=dit", *DATA]
    dit += ["--config.data.source=latent_cache", f"--config.data.cache_dir={cache}"]
    dit += ["--config.dit.rows=8", "--config.dit.max_segments=1", "--config.dit.train.steps=4"]
    dit += ["--config.dit.train.val_every=2"]
    ckpts = os.path.join(work, "dit", "checkpoints")
    assert _kill_once("sora_jax.train", *dit, when=f"{ckpts}/2", cache=jax_cache) == "killed"
    _run("sora_jax.train", *dit, cache=jax_cache)
    assert sorted(os.listdir(ckpts))[-1] == "4"
    assert glob.glob(os.path.join(work, "samples", "*.mp4"))
    assert not os.path.exists(os.path.join(work, "eval.json"))  # the shapes judge: built-in only

    # 5. Sampling from the workdir.
    out = str(tmp_path / "out")
    sample = ["--prompt=a red circle moves right", "--frames=5", "--height=16", "--width=24"]
    _run(
        "sora_jax.sample",
        f"--workdir={work}",
        f"--out={out}",
        "--steps=2",
        *sample,
        cache=jax_cache,
    )
    (mp4,) = glob.glob(os.path.join(out, "*.mp4"))
    assert video_io.read_video(mp4).shape == (5, 16, 24, 3)

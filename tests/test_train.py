"""The whole loop on a micro config: train both stages, checkpoint, resume, sample, evaluate."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from dit_setup import fixed_batch
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax import train
from sora_jax.data import video_io
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.logging import writers
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, loop, vae_trainer
from sora_jax.training import train_state as ts
from sora_jax.models import builders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def micro_config(vae_steps=3, dit_steps=3):
    """configs/tiny.py:micro with the given steps per stage, validated."""
    c = config_lib.load_with_arg(TINY, "micro")
    c.vae.train.steps = vae_steps
    c.dit.train.steps = dit_steps
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    results = train.train_and_evaluate(micro_config(), workdir)
    return workdir, results


def test_full_run_writes_checkpoints_samples_logs_eval(trained):
    workdir, results = trained
    assert [s for s, _ in results["vae"]] == [1, 2, 3]
    assert [s for s, _ in results["dit"]] == [1, 2, 3]
    assert sorted(os.listdir(os.path.join(workdir, "dit", "checkpoints")))[-1] == "3"
    samples = sorted(os.listdir(os.path.join(workdir, "samples")))
    assert [os.path.splitext(s)[1] for s in samples] == [".gif", ".mp4", ".html"]  # + gallery
    video = video_io.read_video(os.path.join(workdir, "samples", samples[1]))
    assert video.shape == (5, 16, 24, 3)
    scalars = writers.read_scalars(os.path.join(workdir, "tensorboard"))
    assert [s for s, _ in scalars["dit/loss"]] == [1, 2, 3]
    np.testing.assert_allclose(
        [v for _, v in scalars["vae/loss"]], [m["loss"] for _, m in results["vae"]], rtol=1e-6
    )
    with open(os.path.join(workdir, "eval.json")) as f:
        ev = json.load(f)
    assert ev["num_videos"] == 2 and 0.0 <= ev["colour_accuracy"] <= 1.0
    # One source of latent statistics: the VAE checkpoint's, copied into the DiT's.
    mean, std = vae_trainer.load_latent_stats(micro_config(), workdir, mesh_lib.create_mesh(1))
    pipe = pipeline_lib.load_pipeline(workdir)
    np.testing.assert_array_equal(pipe.model.latent_mean, mean)
    np.testing.assert_array_equal(pipe.model.latent_std, std)
    assert not np.allclose(std, 1.0)


def test_rerun_of_finished_run_skips_training(trained):
    workdir, _ = trained
    c = micro_config()
    c.eval.at_end = False
    results = train.train_and_evaluate(c, workdir)
    assert results["vae"] == [] and results["dit"] == []


def test_changed_model_config_in_same_workdir_is_rejected(trained):
    workdir, _ = trained
    c = micro_config()
    c.dit.model.hidden = 64
    with pytest.raises(ValueError, match="config.dit.model differs"):
        train.train_and_evaluate(c, workdir)


def test_sampler_shapes_determinism_and_errors(trained):
    workdir, _ = trained
    pipe = pipeline_lib.load_pipeline(workdir)
    prompts = ["a small blue square moves up quickly on a black background"] * 2
    a = pipe.generate(prompts, num_frames=5, height=16, width=24, seed=1)
    b = pipe.generate(prompts, num_frames=5, height=16, width=24, seed=1)
    c = pipe.generate(prompts, num_frames=5, height=16, width=24, seed=2)
    assert a.shape == (2, 5, 16, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5
    # Another aspect ratio and a frame count the VAE cannot make (rounded up, trimmed).
    assert pipe.generate(prompts[:1], num_frames=3, height=24, width=16).shape == (1, 3, 24, 16, 3)
    with pytest.raises(ValueError, match="height=20"):
        pipe.generate(prompts, num_frames=5, height=20, width=24)
    with pytest.raises(ValueError, match="non-empty"):
        pipe.generate([""], num_frames=5, height=16, width=24)


def test_long_video_sampling_goes_through_chunked_decode(trained):
    """21 frames = 6 latent frames > 1 + chunk_latent_frames: the chunked path; it gives the
    same video as the whole-video decode (uint8 rounding aside)."""
    workdir, _ = trained
    pipe = pipeline_lib.load_pipeline(workdir)
    assert pipe.config.vae.inference.chunked and pipe.config.vae.inference.chunk_latent_frames == 4
    prompt = ["a small blue square moves up quickly on a black background"]
    chunked = pipe.generate(prompt, num_frames=21, height=16, width=16, seed=3)
    with pipe.config.unlocked():
        pipe.config.vae.inference.chunked = False
    full = pipe.generate(prompt, num_frames=21, height=16, width=16, seed=3)
    assert chunked.shape == (1, 21, 16, 16, 3)
    assert np.abs(chunked.astype(int) - full.astype(int)).max() <= 1


def test_evaluate_vae_writes_metrics_and_videos(trained, tmp_path):
    from sora_jax.evaluation import vae_eval

    workdir, _ = trained
    out = str(tmp_path / "vae_eval")
    from sora_jax.models import lpips as lpips_lib

    small = dict(widths=(4, 8), depths=(1, 1))
    weights = str(tmp_path / "lpips.npz")
    lpips_lib.save(weights, lpips_lib.random_weights(0, **small), **small)
    result = vae_eval.evaluate_workdir(
        workdir, 2, frames=5, height=16, width=24, out=out, num_write=1, lpips_path=weights
    )
    assert result["lpips"] > 0 and len(result["lpips_per_frame"]) == 5
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["psnr"] == pytest.approx(result["psnr"]) and saved["num_videos"] == 2
    assert len(saved["ssim_per_frame"]) == 5 and -1.0 <= saved["ssim_first_frame"] <= 1.0
    assert sorted(os.path.basename(p) for p in result["videos"]) == [
        "00_input_vs_recon.gif",
        "00_input_vs_recon.mp4",
    ]
    with pytest.raises(ValueError, match="training data seed"):
        vae_eval.evaluate_workdir(workdir, 2, seed=0)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        pipeline_lib.load_pipeline(str(tmp_path))
    config_lib.save(micro_config(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no VAE checkpoint"):
        pipeline_lib.load_pipeline(str(tmp_path))


def _kill_at(monkeypatch, step):
    real = vae_trainer.vae_batch

    def batch(config, s):
        if s == step:
            raise KeyboardInterrupt("simulated kill")
        return real(config, s)

    monkeypatch.setattr(vae_trainer, "vae_batch", batch)


def test_resume_after_kill_reproduces_the_same_losses(tmp_path, monkeypatch):
    c = micro_config(vae_steps=5)
    c.stages = ("vae",)
    full = train.train_and_evaluate(c, str(tmp_path / "a"))["vae"]
    _kill_at(monkeypatch, 3)  # dies after the checkpoint of step 2 was written
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(c, str(tmp_path / "b"))
    monkeypatch.undo()
    resumed = train.train_and_evaluate(c, str(tmp_path / "b"))["vae"]
    assert [s for s, _ in resumed] == [3, 4, 5]
    for (s1, m1), (s2, m2) in zip(full[2:], resumed):
        assert s1 == s2 and m1["loss"] == m2["loss"], (s1, m1["loss"], m2["loss"])


def _fixed_dit_batch(c):
    """(text encoder, the packed batch of step 0 over random one-colour latents)."""
    return builders.build_text_encoder(c), fixed_batch(c)


def test_dit_train_step_reduces_loss_and_sharded_equals_single_device():
    c = micro_config()
    text, batch = _fixed_dit_batch(c)
    assert (batch["segment_ids"] > 0).mean() > 0.5
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    losses = {}
    states = {}
    for n in (1, 8):
        mesh = mesh_lib.create_mesh(n)
        state = dit_trainer.init_state(c, dit, text, tx, mesh, None)
        step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
        sharded = mesh_lib.shard_batch(batch, mesh)
        losses[n] = []
        for _ in range(20):
            state, m = step(state, sharded, jax.random.PRNGKey(0))
            losses[n].append(float(m["loss"]))
        states[n] = state
    assert losses[1][-1] < 0.93 * losses[1][0], losses[1]
    np.testing.assert_allclose(losses[8], losses[1], rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
        states[1].params,
        states[8].params,
    )


def test_dit_steps_per_call_equal_one_step_per_call_sharded():
    """Steps run in one compiled loop (3 per call, the last call 2) give the losses and the
    params of one step per call, on one device and on an 8-device mesh."""
    c = micro_config()
    text, batch = _fixed_dit_batch(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    key = jax.random.PRNGKey(7)
    for n in (1, 8):
        mesh = mesh_lib.create_mesh(n)
        out = {}
        for per_call, calls in ((1, [1] * 5), (3, [3, 2])):
            state = dit_trainer.init_state(c, dit, text, tx, mesh, None)
            steps = loop.jit_train_steps(
                dit_trainer.make_train_step(c, dit, text, tx),
                mesh,
                loop.shardings_of(state),
                per_call=per_call,
            )
            losses, start = [], 0
            for count in calls:
                batches = [mesh_lib.shard_batch(batch, mesh)] * count
                state, m = steps(state, batches, key, start)
                assert m["loss"].shape == (per_call,)
                losses += [float(v) for v in m["loss"][:count]]
                start += count
            assert int(state.step) == 5
            out[per_call] = losses, state
        assert len(set(out[1][0])) == 5  # each step its own rng and params
        np.testing.assert_allclose(out[3][0], out[1][0], rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            out[3][1].params,
            out[1][1].params,
        )


def test_vae_latent_noise_is_applied_and_deterministic():
    c = micro_config()
    model = builders.build_vae(c)
    tx = ts.make_optimizer(c.vae.train)
    mesh = mesh_lib.create_mesh(1)
    state = vae_trainer.init_state(c, model, tx, mesh)
    batch = vae_trainer.vae_batch(c, 0)

    def losses(noise, seeds):
        c.vae.latent_noise = noise
        step = jax.jit(vae_trainer.make_train_step(model, tx, c.vae))
        return [float(step(state, batch, jax.random.key(s))[1]["loss"]) for s in seeds]

    clean = losses(0.0, [0, 1])
    assert clean[0] == clean[1]  # no noise: the rng is unused (sample_posterior is off)
    noisy = losses(1.0, [0, 1, 2, 0])
    assert noisy[0] == noisy[3]
    assert len(set(noisy)) == 3 and min(noisy) > clean[0]


def _parent(tree, dotted_key: str):
    """(the mapping holding `dotted_key`'s last part, that part) in nested mappings."""
    *parents, leaf = dotted_key.split(".")
    for name in parents:
        tree = tree[name]
    return tree, leaf


def test_config_overrides_and_errors():
    def parse(*overrides):
        argv = ["prog", f"--config={TINY}", *overrides]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
        fv(argv)
        return fv.config

    c = parse("--config.dit.train.steps=100", "--config.sample.height=64")
    assert c.dit.train.steps == 100 and c.sample.height == 64
    config_lib.validate(c)
    with pytest.raises(Exception, match="stepz.*Did you mean .steps"):
        parse("--config.dit.train.stepz=100")
    with pytest.raises(Exception, match="dit.train.steps"):
        parse("--config.dit.train.steps=many")
    bad = {
        "dit.train.steps": (0, "config.dit.train.steps=0"),
        "sample.height": (30, "height=30"),
        "sample.num_frames": (8, "num_frames=8"),
        "text.kind": ("gpt", "config.text.kind='gpt'"),
        "dit.seq_len": (16, "config.dit.seq_len=16"),
        "stages": (("vae", "gan"), "config.stages"),
        "dit.model.num_heads": (3, "config.dit.model.num_heads=3"),
        "data.image_fraction": (1.5, "config.data.image_fraction=1.5"),
        "vae.latent_noise": (-0.1, "config.vae.latent_noise=-0.1"),
        "vae.model.patch_size": (0, "config.vae.model.patch_size=0"),
        "vae.model.spatial_downsample": ((True,), "config.vae.model.spatial_downsample=(True,)"),
        "text.depth": (-1, "config.text.depth=-1"),
    }
    for key, (value, message) in bad.items():
        c = config_lib.load(TINY)
        node, leaf = _parent(c, key)
        with node.ignore_type():
            node[leaf] = value
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config_lib.validate(c)


def test_workdir_configs_saved_before_added_keys_still_load(tmp_path):
    c = config_lib.load(TINY)
    config_lib.save(c, str(tmp_path))
    path = tmp_path / config_lib.CONFIG_FILE
    saved = json.loads(path.read_text())
    assert saved["dit"]["model"]["abs_positions"] is True  # tiny's own value is kept
    for key in config_lib.ADDED_KEYS:
        node, leaf = _parent(saved, key)
        del node[leaf]
    path.write_text(json.dumps(saved))
    old = config_lib.load_saved(str(tmp_path))
    for key, value in config_lib.ADDED_KEYS.items():
        assert old[key] == value, key
    assert old.dit.train.steps == c.dit.train.steps  # the rest is as saved
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        config_lib.load_saved(str(tmp_path / "none"))


def _leaf_keys(tree, prefix=""):
    keys = set()
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_key_added_since_the_first_saved_config_is_in_added_keys(tmp_path):
    # The config as the first version saved it (configs/default.py then): every key added to
    # the configs since needs an ADDED_KEYS entry, or such workdirs stop loading.
    first = os.path.join(ROOT, "tests", "data", "config_first_saved.json")
    with open(first) as f:
        first_keys = _leaf_keys(json.load(f))
    default = config_lib.load(os.path.join(ROOT, "configs", "default.py"))
    keys = _leaf_keys(json.loads(default.to_json()))
    assert not sorted(keys - first_keys - set(config_lib.ADDED_KEYS))
    assert set(config_lib.ADDED_KEYS) <= keys  # entries name real keys (none misspelt)
    (tmp_path / config_lib.CONFIG_FILE).write_text(open(first).read())
    old = config_lib.load_saved(str(tmp_path))  # fills and validates
    assert old.vae.mse_weight == 0.0 and old.mesh.data == -1


def run_cli(module, *args, **env):
    """`python -m module args...` from the repository root on CPU, with the environment
    variables `env` added; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
        cwd=ROOT,
    )


def test_cli_errors_are_clear(tmp_path):
    r = run_cli("sora_jax.sample", f"--workdir={tmp_path}/none", "--prompt=a red circle")
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = run_cli("sora_jax.sample", f"--workdir={tmp_path}", "--prompt=a red circle")
    assert r.returncode != 0 and "config.json not found" in r.stderr
    r = run_cli(
        "sora_jax.train",
        f"--config={TINY}",
        f"--workdir={tmp_path}/w",
        "--config.dit.train.steps=-1",
    )
    assert r.returncode != 0 and "config.dit.train.steps=-1: must be > 0" in r.stderr

"""Fault safety of sampling and export: damaged checkpoints are passed over (with a warning),
non-finite weights are refused with one line, and the same sample gives the same bytes."""

import dataclasses
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_export import _perturb
from test_faults import _data_files, _message_lines
from test_train import micro_config, run_cli

from sora_jax import config as config_lib
from sora_jax.common import checkpoint
from sora_jax.inference import exporter, loader, samples
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.models import builders
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, vae_trainer
from sora_jax.training import train_state as ts

PROMPT = "a large red circle moves right steadily on a grey background"


def _states(c):
    mesh = mesh_lib.create_mesh(1)
    vae = vae_trainer.init_state(c, builders.build_vae(c), ts.make_optimizer(c.vae.train), mesh)
    text = builders.build_text_encoder(c)
    ch = c.vae.model.latent_channels
    stats = dit_trainer._extras(np.zeros(ch, np.float32), np.ones(ch, np.float32))
    dit = dit_trainer.init_state(
        c, builders.build_dit(c, text.dim), text, ts.make_optimizer(c.dit.train), mesh, stats
    )
    return {"vae": vae, "dit": dit}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A workdir with VAE and DiT checkpoints at steps 5 and 7 (perturbed init states)."""
    path = str(tmp_path_factory.mktemp("run"))
    c = micro_config()
    config_lib.save(c, path)
    for stage, state in _states(c).items():
        ckpt = checkpoint.for_stage(c, path, stage)
        for step in (5, 7):
            ckpt.save(step, state.replace(ema_params=_perturb(state.params, step)), force=True)
        ckpt.close()
    return path


@pytest.fixture()
def workdir(source, tmp_path):
    """A copy of `source` to damage."""
    path = str(tmp_path / "w")
    shutil.copytree(source, path)
    return path


def _dit_step_dir(workdir, step):
    return os.path.join(checkpoint.stage_directory(workdir, "dit"), str(step))


def _truncate_data(step_dir):
    # Every data file: which file holds which array depends on the writer threads.
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(10)


@pytest.mark.parametrize("damage", ["truncate", "delete_and_no_metadata"])
def test_sampling_falls_back_to_the_newest_checkpoint_that_restores(workdir, damage):
    newest = _dit_step_dir(workdir, 7)
    if damage == "truncate":
        _truncate_data(newest)
    else:
        for p in _data_files(newest):
            os.remove(p)
        for p in glob.glob(f"{newest}/**/_METADATA", recursive=True):
            os.remove(p)
    model = loader.load_workdir(workdir)
    assert model.steps == {"vae_step": 7, "dit_step": 5}
    assert os.path.isdir(newest)  # inference never moves or deletes checkpoints


def test_no_restorable_checkpoint_names_the_workdir_and_the_steps(workdir):
    for step in (5, 7):
        _truncate_data(_dit_step_dir(workdir, step))
    with pytest.raises(checkpoint.NoUsableCheckpoint) as e:
        loader.load_workdir(workdir)
    assert checkpoint.stage_directory(workdir, "dit") in str(e.value)
    assert "[7, 5]" in str(e.value)
    r = run_cli("sora_jax.export", f"--workdir={workdir}", f"--out={workdir}_export")
    lines = _message_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: no DiT checkpoint in") and "[7, 5]" in lines[0]


def _save_nan_dit(workdir, step=9):
    c = micro_config()
    state = _states(c)["dit"]
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.params)
    ckpt = checkpoint.for_stage(c, workdir, "dit")
    ckpt.save(step, state.replace(ema_params=nan), force=True)
    ckpt.close()


def test_sample_and_export_refuse_nonfinite_weights_with_one_line(workdir, tmp_path):
    _save_nan_dit(workdir)
    with pytest.raises(loader.NonFiniteWeights, match="DiT checkpoint 9"):
        loader.load_workdir(workdir)
    for module, args in (
        ("sora_jax.sample", [f"--workdir={workdir}", f"--prompt={PROMPT}"]),
        ("sora_jax.export", [f"--workdir={workdir}", f"--out={tmp_path}/e"]),
    ):
        r = run_cli(module, *args)
        lines = _message_lines(r.stderr)
        assert r.returncode != 0 and len(lines) == 1, (module, r.stderr[-3000:])
        assert "DiT checkpoint 9" in lines[0] and "non-finite weights" in lines[0], lines
        assert not os.path.exists(f"{workdir}/cli_samples") and not os.path.exists(f"{tmp_path}/e")


def test_loading_an_export_with_nonfinite_weights_is_refused(source, tmp_path):
    model = loader.load_workdir(source)
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), model.params)
    out = exporter.save_model(dataclasses.replace(model, params=nan), str(tmp_path / "e"))
    with pytest.raises(loader.NonFiniteWeights, match="exported checkpoint"):
        loader.load(out)


def test_the_same_sample_written_twice_is_byte_identical(source, tmp_path):
    pipe = pipeline_lib.load_pipeline(source)
    kw = dict(num_frames=5, height=16, width=24, seed=3)
    a = samples.write_samples(pipe, [PROMPT], str(tmp_path / "a"), **kw)
    b = samples.write_samples(pipe, [PROMPT], str(tmp_path / "b"), **kw)
    videos = [p for p in a if p.endswith((".mp4", ".gif"))]
    assert len(videos) == 2
    for pa, pb in zip(a, b):
        if pa.endswith((".mp4", ".gif")):
            assert open(pa, "rb").read() == open(pb, "rb").read(), pa


def test_prompts_the_encoder_does_not_see_whole_are_warned_about(source, tmp_path, caplog):
    pipe = pipeline_lib.load_pipeline(source)
    long = " ".join([PROMPT] * 40)
    prompts = [PROMPT, "a red zeppelin moves up", long]
    kw = dict(num_frames=1, height=16, width=24, seed=0)
    with caplog.at_level("WARNING"):
        paths = samples.write_samples(pipe, prompts, str(tmp_path), **kw)
    records = {}
    for p in paths[::2]:
        log = os.path.splitext(p)[0] + ".json"
        records[p] = json.load(open(log))["warnings"] if os.path.exists(log) else []
    got = list(records.values())
    assert got[0] == []
    assert got[1] == ["words the text encoder does not know: 'zeppelin'"]
    assert len(got[2]) == 1 and got[2][0].startswith("truncated to the first")
    assert "zeppelin" in caplog.text and "truncated" in caplog.text

"""Inference checkpoints: export EMA params only, reload in a fresh process, sample the same
video bit for bit (float32); bf16 exports load and sample; provenance and the gallery."""

import html.parser
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import ROOT, micro_config, run_cli

import sora_jax
from sora_jax.common import checkpoint
from sora_jax.data import video_io
from sora_jax.inference import export_format, exporter
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, vae_trainer
from sora_jax.training import train_state as ts
from sora_jax.inference import samples
from sora_jax import config as config_lib
from sora_jax.models import builders

PROMPT = "a large red circle moves right steadily on a grey background"
KW = dict(num_frames=5, height=16, width=24, seed=3)


def _perturb(tree, seed, scale=0.05):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir whose checkpoints have params != EMA params (both perturbed from
    init, so the DiT's adaLN-Zero outputs are not zero) and non-trivial latent statistics."""
    path = str(tmp_path_factory.mktemp("run"))
    c = micro_config()
    config_lib.save(c, path)
    mesh = mesh_lib.create_mesh(1)
    vae = vae_trainer.init_state(c, builders.build_vae(c), ts.make_optimizer(c.vae.train), mesh)
    text = builders.build_text_encoder(c)
    ch = c.vae.model.latent_channels
    stats = dit_trainer._extras(
        np.linspace(-0.3, 0.2, ch).astype(np.float32), np.linspace(0.5, 1.5, ch).astype(np.float32)
    )
    dit = dit_trainer.init_state(
        c, builders.build_dit(c, text.dim), text, ts.make_optimizer(c.dit.train), mesh, stats
    )
    for stage, state in (("vae", vae), ("dit", dit)):
        state = state.replace(
            params=_perturb(state.params, 1), ema_params=_perturb(state.params, 2)
        )
        ckpt = checkpoint.for_stage(c, path, stage)
        ckpt.save(7, state, force=True)
        ckpt.close()
    return path


@pytest.fixture(scope="module")
def pipe(workdir):
    """The workdir's pipeline, loaded once (each load compiles the train-state init)."""
    return pipeline_lib.load_pipeline(workdir)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# A fresh interpreter: loads the export, samples, saves the video and the loaded weights.
FRESH = """
import sys, numpy as np, jax, sora_jax
pipe = sora_jax.load_pipeline(sys.argv[1])
video = pipe.generate([{prompt!r}], **{kw!r})
leaves = jax.tree.leaves({{"vae": pipe.model.vae_params, **pipe.model.params}})
np.savez(sys.argv[2], video=video, mean=pipe.model.latent_mean, std=pipe.model.latent_std,
         **{{f"p{{i}}": np.asarray(x) for i, x in enumerate(leaves)}})
"""


def test_export_reloads_in_a_fresh_process_and_samples_bitwise_equal(workdir, pipe, tmp_path):
    before = pipe
    video = before.generate([PROMPT], **KW)
    out = tmp_path / "exported"
    r = run_cli("sora_jax.export", f"--workdir={workdir}", f"--out={out}", "--name=micro")
    assert r.returncode == 0, r.stderr
    # EMA params only: no optimizer state, no raw params.
    stored = ocp.StandardCheckpointer().metadata(str(out / "params")).item_metadata.tree
    assert set(stored) == {"vae", "dit", "text"}
    meta = json.loads((out / "export.json").read_text())
    assert meta["name"] == "micro" and meta["dtype"] == "float32"
    assert meta["text_encoder"] == {"kind": "tiny", "max_length": 16}
    assert meta["source"]["dit_step"] == 7 and meta["source"]["vae_step"] == 7
    r = subprocess.run(
        [sys.executable, "-c", FRESH.format(prompt=PROMPT, kw=KW), str(out), tmp_path / "a.npz"],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    after = np.load(tmp_path / "a.npz")
    ema = _leaves({"vae": before.model.vae_params, **before.model.params})
    for i, x in enumerate(ema):
        np.testing.assert_array_equal(after[f"p{i}"], x)
        assert after[f"p{i}"].dtype == np.float32
    np.testing.assert_array_equal(after["mean"], before.model.latent_mean)
    np.testing.assert_array_equal(after["std"], before.model.latent_std)
    # The raw (non-EMA) params differ, so the export did pick the EMA ones.
    raw = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "dit", "checkpoints", "7", "default")
    )
    for a, b in zip(_leaves(raw["ema_params"]), _leaves(before.model.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_leaves(raw["params"])[0], _leaves(before.model.params)[0])
    assert after["video"].dtype == np.uint8 and after["video"].std() > 1
    np.testing.assert_array_equal(after["video"], video)


def test_bf16_export_loads_and_samples(pipe, tmp_path):
    f32 = exporter.save_model(pipe.model, str(tmp_path / "f32"))
    bf16 = exporter.save_model(pipe.model, str(tmp_path / "bf16"), bf16=True)
    # The stored arrays, read back as written: every one bfloat16, half the float32 bytes. (The
    # OCDBT data files' sizes are not a measure: how a save splits them into files varies from
    # run to run, 0.45-0.73x of the float32 export's measured on the same weights.)
    stored = {
        p: jax.tree.leaves(
            ocp.StandardCheckpointer().restore(os.path.join(p, export_format.PARAMS_DIR))
        )
        for p in (f32, bf16)
    }
    assert {a.dtype for a in stored[bf16]} == {np.dtype(jax.numpy.bfloat16)}
    assert {a.dtype for a in stored[f32]} == {np.dtype(np.float32)}
    assert 2 * sum(a.nbytes for a in stored[bf16]) == sum(a.nbytes for a in stored[f32]) > 0
    loaded = sora_jax.load_pipeline(bf16)
    assert json.loads((tmp_path / "bf16" / "export.json").read_text())["dtype"] == "bfloat16"
    for a, b in zip(_leaves(loaded.model.params), _leaves(pipe.model.params)):
        assert a.dtype == np.float32  # computed in float32 after loading
        np.testing.assert_array_equal(a, b.astype(jax.numpy.bfloat16).astype(np.float32))
    video = loaded.generate([PROMPT], **KW)
    assert video.shape == (1, 5, 16, 24, 3) and video.dtype == np.uint8
    # Close to the float32 model's video, not equal (rounded weights).
    diff = np.abs(video.astype(int) - pipe.generate([PROMPT], **KW).astype(int))
    assert 0 < diff.mean() < 8, diff.mean()


def test_export_converts_between_scanned_and_unrolled_blocks(workdir, pipe, tmp_path):
    out = tmp_path / "scanned"
    r = run_cli("sora_jax.export", f"--workdir={workdir}", f"--out={out}", "--scan_blocks=true")
    assert r.returncode == 0, r.stderr
    scanned = sora_jax.load_pipeline(str(out))
    assert scanned.model.config.dit.model.scan_blocks
    depth = pipe.model.config.dit.model.depth
    blocks = scanned.model.params["dit"]["blocks"]["block"]
    assert (
        blocks["qkv"]["kernel"].shape[0] == depth and "block_0" not in scanned.model.params["dit"]
    )
    np.testing.assert_array_equal(
        blocks["qkv"]["kernel"][-1],
        pipe.model.params["dit"][f"block_{depth - 1}"]["qkv"]["kernel"],
    )
    # The scanned program computes the same video (float32, up to rounding in a pixel or so).
    diff = np.abs(scanned.generate([PROMPT], **KW).astype(int) - pipe.generate([PROMPT], **KW))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # And back: the unrolled export holds the original weights bit for bit.
    back = exporter.save_model(scanned.model, str(tmp_path / "back"), scan_blocks=False)
    unrolled = sora_jax.load_pipeline(back)
    assert not unrolled.model.config.dit.model.scan_blocks
    for a, b in zip(_leaves(unrolled.model.params), _leaves(pipe.model.params)):
        np.testing.assert_array_equal(a, b)


def test_export_errors_are_clear(workdir, pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        exporter.export_workdir(str(tmp_path / "none"), str(tmp_path / "out"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        exporter.export_workdir(workdir, str(tmp_path / "full"))
    with pytest.raises(FileExistsError, match="not an exported checkpoint; will not replace"):
        exporter.export_workdir(workdir, workdir, overwrite=True)
    empty = tmp_path / "empty"
    config_lib.save(micro_config(), str(empty))
    with pytest.raises(FileNotFoundError, match="no VAE checkpoint"):
        exporter.export_workdir(str(empty), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="export.json not found"):
        export_format.read_meta(workdir)
    # Weights that do not fit the config's models are named as such.
    out = exporter.save_model(pipe.model, str(tmp_path / "ok"))
    c = config_lib.load_saved(out)
    c.dit.model.hidden = 64
    config_lib.save(c, out)
    with pytest.raises(ValueError, match="do not fit the models of its config.json"):
        sora_jax.load_pipeline(out)


class _Gallery(html.parser.HTMLParser):
    """Collects the video sources, gif fallbacks and captions of an index.html."""

    def __init__(self):
        super().__init__()
        self.videos, self.gifs, self.prompts, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "video":
            self.videos.append(a["src"])
        elif tag == "img":
            self.gifs.append(a["src"])
        elif tag == "span":
            self._in = a.get("class")

    def handle_data(self, data):
        if self._in == "prompt":
            self.prompts.append(data)
        self._in = None


def test_samples_carry_provenance_and_a_gallery_lists_them(workdir, pipe, tmp_path):
    prompts = [PROMPT, "a small <blue> square moves up quickly on a black background"]
    out = str(tmp_path / "samples")
    paths = samples.write_samples(pipe, prompts, out, **KW)
    expected = (
        f"AI-generated by sora_jax; model: {os.path.basename(workdir)}; prompt: {PROMPT}; seed: 3"
    )
    for path in paths[:2]:  # the mp4 and the gif of the first prompt
        meta = video_io.read_metadata(path)
        assert meta["comment"] == expected, path
    assert video_io.read_metadata(paths[0])["title"] == PROMPT
    page = _Gallery()
    page.feed(open(os.path.join(out, "index.html"), encoding="utf-8").read())
    names = sorted(os.path.basename(p) for p in paths)
    assert page.videos == [n for n in names if n.endswith(".mp4")]
    assert page.gifs == [n for n in names if n.endswith(".gif")]
    assert page.prompts == prompts  # escaped in the page, read back as written
    for src in page.videos + page.gifs:
        assert os.path.isfile(os.path.join(out, src))


def test_sampling_progress_line_has_eta_and_leaves_the_video_unchanged(pipe, capsys):
    plain = pipe.generate([PROMPT], **KW)
    capsys.readouterr()
    shown = pipe.generate([PROMPT], progress=True, **KW)
    err = capsys.readouterr().err
    assert "sampling: step 3/3 (100%)" in err and "ETA 0s" in err, err
    np.testing.assert_array_equal(shown, plain)

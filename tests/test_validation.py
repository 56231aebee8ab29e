"""Validation during training: the held-out split, a deterministic held-out loss, samples."""

import os
import shutil

import numpy as np
import pytest
from test_train import micro_config

from sora_jax import train
from sora_jax.common import checkpoint
from sora_jax.data import holdout
from sora_jax.evaluation import vae_eval
from sora_jax.inference import loader
from sora_jax.logging import writers
from sora_jax.models import builders, vae_inference
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, validation, vae_trainer
from sora_jax.training import train_state as ts


def test_split_is_a_function_of_each_index():
    train_idx, held = holdout.split(1000, 0.1, seed=3)
    assert 70 < len(held) < 130
    assert np.intersect1d(train_idx, held).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, held), np.arange(1000))
    # More data keeps the old examples' side of the split; another seed gives another split.
    _, held_more = holdout.split(1500, 0.1, seed=3)
    np.testing.assert_array_equal(held_more[held_more < 1000], held)
    assert not np.array_equal(holdout.split(1000, 0.1, seed=4)[1], held)
    # A small dataset still holds one out; none with fraction 0.
    assert len(holdout.split(3, 0.01, seed=0)[1]) == 1
    assert len(holdout.split(3, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        holdout.split(10, 1.0, seed=0)


def _config(steps, **train_keys):
    c = micro_config(vae_steps=2, dit_steps=steps)
    c.dit.train.update(val_every=2, val_examples=6, **train_keys)
    c.dit.train.checkpoint_every = 2
    c.vae.train.val_every = 2
    c.eval.at_end = False
    c.sample.prompts = c.sample.prompts[:1]
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run validating every 2 steps and sampling at step 4."""
    workdir = str(tmp_path_factory.mktemp("val"))
    train.train_and_evaluate(_config(4, sample_every=4), workdir)
    return workdir


def _val_scalars(workdir):
    scalars = writers.read_scalars(os.path.join(workdir, "tensorboard"))
    return {k: v for k, v in scalars.items() if k.startswith("val/")}


def test_held_out_loss_per_bucket_and_samples_are_written(run):
    val = _val_scalars(run)
    assert [s for s, _ in val["val/loss"]] == [2, 4]
    assert [s for s, _ in val["val/loss_ema"]] == [2, 4]
    buckets = [k for k in val if k.startswith("val/loss/")]
    assert len(buckets) >= 2, buckets  # the held-out videos come in several token grids
    assert all(np.isfinite(v) and v > 0 for s in val.values() for _, v in s)
    files = sorted(os.listdir(os.path.join(run, "dit", "val_samples", "4")))
    assert [os.path.splitext(f)[1] for f in files] == [".gif", ".mp4", ".html"]
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(run, "tensorboard"))
    acc.Reload()
    (image,) = acc.Images("val/samples/00")
    assert image.step == 4 and image.encoded_image_string[:6] == b"GIF89a"


def test_vae_psnr_and_ssim_of_held_out_videos_match_an_evaluation_of_the_checkpoint(run):
    c = _config(4)
    scalars = writers.read_scalars(os.path.join(run, "tensorboard"))
    buckets = ["x".join(map(str, b)) for b in c.vae.train.buckets]
    model, params = loader.load_vae(c, run, mesh_lib.create_mesh(1))
    for name, bucket in zip(buckets, c.vae.train.buckets):
        videos = vae_eval.held_out_videos(c.eval.seed, c.vae.train.val_examples, *bucket)
        recon = vae_eval.reconstruct_videos(model, params, videos, vae_inference.from_config(c))
        want = vae_eval.metrics(videos, recon)
        for k in ("psnr", "ssim"):
            ((step, got),) = scalars[f"vae/val/{k}/{name}"]
            assert step == 2
            np.testing.assert_allclose(got, want[k], rtol=1e-5)
    assert 0 < scalars["vae/val/ssim"][0][1] < 1 and scalars["vae/val/psnr"][0][1] > 5


def _losses_of_checkpoint(config, workdir, step):
    """The validator's held-out losses of the DiT checkpoint `step` (params and EMA)."""
    mesh = mesh_lib.create_mesh()
    vae_model, vae_state = vae_trainer.load_state(config, workdir, mesh)
    text = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text.dim)
    tx = ts.make_optimizer(config.dit.train)
    state = dit_trainer.init_state(config, dit, text, tx, mesh, vae_state.extras)
    ckpt = checkpoint.for_stage(config, workdir, "dit")
    state = ckpt.restore(state, step)
    ckpt.close()
    writer = writers.MetricWriter(os.path.join(workdir, "unused_tb"), console=False)
    v = dit_trainer.validator(
        config, workdir, mesh, writer, (vae_model, vae_state.ema_params), dit, text, state, None
    )
    writer.close()
    return v.losses(state.params), v.losses(state.ema_params)["loss"]


def test_the_same_checkpoint_gives_the_same_loss_twice_and_after_a_resume(run, tmp_path):
    c = _config(4, sample_every=4)
    first, ema = _losses_of_checkpoint(c, run, 4)
    again, _ = _losses_of_checkpoint(c, run, 4)
    assert first == again  # bit for bit
    logged = _val_scalars(run)
    # TensorBoard stores float32.
    np.testing.assert_allclose(logged["val/loss"][-1][1], first["loss"], rtol=1e-6)
    np.testing.assert_allclose(logged["val/loss_ema"][-1][1], ema, rtol=1e-6)
    # A run killed after checkpoint 2 resumes to the same losses at step 4.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("tensorboard", "val_samples"))
    shutil.rmtree(os.path.join(checkpoint.stage_directory(resumed, "dit"), "4"))
    train.train_and_evaluate(c, resumed)
    got = _val_scalars(resumed)
    for tag in ("val/loss", "val/loss_ema"):
        assert got[tag] == logged[tag][-1:], tag


def test_held_out_batches_pack_every_video_once_without_dropout():
    c = micro_config()
    c.dit.text_dropout = 0.5
    c.dit.condition.rate = 1.0
    text = builders.build_text_encoder(c)
    rng = np.random.default_rng(0)
    lengths = [6, 20, 9, 32, 14, 3]
    items = [
        (
            rng.normal(size=(n, 4)).astype(np.float32),
            np.stack([np.zeros(n), np.arange(n) // 4, np.arange(n) % 4], -1).astype(np.int32),
            *(np.asarray(a)[0] for a in text.tokenize([f"a red circle {i}"])),
        )
        for i, n in enumerate(lengths)
    ]
    cache = validation.batches_lib.LatentCache.from_items(items, np.zeros(4), np.ones(4))
    null_ids, null_mask = (np.asarray(a)[0] for a in text.tokenize([""]))
    packed = validation.pack_held_out(c, cache, null_ids, null_mask)
    assert all("cond_mask" not in b for b in packed)
    seen = []
    for b in packed:
        for r, row in enumerate(b["segment_ids"]):
            for k in np.unique(row[row > 0]):
                tokens = b["tokens"][r][row == k]
                match = [i for i, it in enumerate(items) if np.array_equal(it[0], tokens)]
                assert len(match) == 1
                seen.append(match[0])
                # Every caption is its own, never the empty one of caption dropout.
                np.testing.assert_array_equal(b["caption_ids"][r, k - 1], items[match[0]][2])
    assert sorted(seen) == list(range(len(items)))

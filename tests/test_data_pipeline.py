"""Own-video data at scale: TFDS builder, grain pipeline, host sharding, resume, latent cache."""

import json
import os
import shutil

import jax

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from test_text import _random_bert_weights, _write_bert  # noqa: E402
from test_train import micro_config, run_cli  # noqa: E402

from sora_jax import config as config_lib  # noqa: E402
from sora_jax import train  # noqa: E402
from sora_jax.common import checkpoint  # noqa: E402
from sora_jax.data import (  # noqa: E402
    dit_input,  # noqa: E402
    input_pipeline,
    vae_input,
    latent_cache,
    manifest,
    shapes,
    tfds_builder,
    video_io,
)
from sora_jax.logging import writers  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402
from sora_jax.training import dit_trainer, vae_trainer  # noqa: E402
from sora_jax.training import train_state as ts  # noqa: E402
from sora_jax.inference import loader  # noqa: E402
from sora_jax.models import builders  # noqa: E402

# (name, height, width, fps, frames) of the good clips: different sizes, rates and lengths.
CLIPS = (("a", 32, 48, 8, 9), ("b", 48, 32, 12, 17), ("c", 32, 32, 24, 5), ("d", 32, 48, 8, 1))


def _write_folder(folder):
    folder.mkdir(parents=True)
    src = shapes.MovingShapes(
        0, 8, frame_choices=(17,), resolutions=((48, 48),), image_fraction=0.0
    )
    for i, (name, h, w, fps, t) in enumerate(CLIPS):
        video = video_io.resize(src[i]["video"][:t], h, w)
        video_io.write_video(folder / f"{name}.mp4", video, fps=fps)
        (folder / f"{name}.txt").write_text(src[i]["caption"])
    good = (folder / "a.mp4").read_bytes()
    (folder / "corrupt.mp4").write_bytes(good[: len(good) // 2])  # truncated: no moov atom
    (folder / "corrupt.txt").write_text("a caption")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "empty.txt").write_text("a caption")
    video_io.write_video(folder / "nocaption.mp4", src[5]["video"][:5], fps=8)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    folder = _write_folder(root / "src")
    builder = tfds_builder.build(folder, root / "tfds", max_bad_fraction=0.5)
    return folder, root / "tfds", builder


def _config(data_dir, **data):
    c = micro_config(vae_steps=1, dit_steps=2)
    c.data.source = "tfds"
    c.data.tfds_data_dir = str(data_dir)
    c.data.max_frames = 5
    c.data.target_area = 16 * 24
    c.data.image_fraction = 0.0  # fewer clip shapes, fewer VAE compiles (mixing: see below)
    c.data.stats_examples = 4
    c.dit.rows = 8
    c.dit.max_segments = 1
    c.vae.train.data = "moving_shapes"  # the VAE these tests share comes from elsewhere
    for k, v in data.items():
        c.data[k] = v
    return c


def test_builder_counts_metadata_and_reports_bad_files(dataset):
    folder, data_dir, builder = dataset
    ds = builder.as_data_source()["train"]
    assert len(ds) == len(CLIPS)
    got = {os.path.basename(r["path"].decode()): r for r in (ds[i] for i in range(len(ds)))}
    for name, h, w, fps, t in CLIPS:
        r = got[f"{name}.mp4"]
        assert (r["height"], r["width"], r["num_frames"]) == (h, w, t)
        assert r["fps"] == pytest.approx(fps) and r["duration"] == pytest.approx(t / fps)
        assert (r["start"], r["end"]) == (0.0, pytest.approx(t / fps))
        assert bytes(r["video"]) == (folder / f"{name}.mp4").read_bytes()
        assert r["caption"].decode() == (folder / f"{name}.txt").read_text()
    bad = [
        json.loads(line)
        for line in (data_dir / tfds_builder.BAD_FILES).read_text().split("\n")
        if line
    ]
    reasons = {os.path.basename(b["path"]): b["reason"] for b in bad}
    assert set(reasons) == {"corrupt.mp4", "empty.mp4", "nocaption.mp4"}
    assert "cannot decode" in reasons["corrupt.mp4"]
    assert reasons["empty.mp4"] == "zero-length file"
    assert reasons["nocaption.mp4"] == "missing caption"
    assert builder.info.metadata["num_bad"] == 3


def test_builder_stops_past_max_bad_fraction(dataset, tmp_path):
    folder, _, _ = dataset
    with pytest.raises(manifest.TooManyBadFiles, match="max_bad_fraction"):
        tfds_builder.build(folder, tmp_path, max_bad_fraction=0.2)


def test_manifest_window_and_fps(dataset, tmp_path):
    folder, _, _ = dataset
    rows = [
        dict(path=str(folder / "b.mp4"), caption="clip b", start=0.5, end=1.0),
        dict(path=str(folder / "a.mp4"), caption="clip a", fps=4),
        dict(path=str(folder / "a.mp4"), caption=""),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    entries = manifest.read_manifest(path)
    assert manifest.probe(entries[0])["start"] == 0.5 and manifest.probe(entries[0])["end"] == 1.0
    assert manifest.probe(entries[1])["duration"] == pytest.approx(9 / 4)
    with pytest.raises(ValueError, match="missing caption"):
        manifest.probe(entries[2])
    rng = np.random.default_rng(0)
    idx = input_pipeline.clips.frame_indices(17, 12.0, 0.5, 1.5, 8.0, 17, 4, rng)
    # Window [0.5, 1.5) s of a 17-frame 12 fps clip = frames 6..16; at 8 fps that holds 7
    # samples 1.5 frames apart, so 1 + 4 = 5 of them; a 0.5 s window holds 4, so 1 frame.
    assert len(idx) == 5 and idx.min() >= 6 and idx.max() <= 16
    assert len(input_pipeline.clips.frame_indices(17, 12.0, 0.5, 1.0, 8.0, 17, 4, rng)) == 1
    np.testing.assert_allclose(np.diff(idx), 1.5, atol=0.5)


def test_clips_are_resized_by_area_keeping_aspect(dataset):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    images = input_pipeline.clip_options(_config(data_dir, image_fraction=1.0))
    for i in range(len(source)):
        assert input_pipeline.decode_example(images, i, source[i])["video"].shape[0] == 1
    opts = input_pipeline.clip_options(c)
    for i in range(len(source)):
        ex = input_pipeline.decode_example(opts, i, source[i])
        h, w = source[i]["height"], source[i]["width"]
        t = ex["video"].shape[0]
        assert ex["video"].shape[1:] == {(32, 48): (16, 24, 3), (48, 32): (24, 16, 3)}.get(
            (h, w), (16, 16, 3)
        )
        # At 8 fps: a (9 frames at 8 fps) and b (17 at 12) hold 5 frames (max_frames); c
        # (5 frames at 24 fps = 2 samples) and d (1 frame) hold one.
        name = os.path.basename(source[i]["path"].decode())
        assert t == {"a.mp4": 5, "b.mp4": 5, "c.mp4": 1, "d.mp4": 1}[name]


def test_host_sharding_covers_every_example_once_per_epoch(dataset):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    n = len(source)
    for epoch in range(2):
        seen = []
        for host in range(2):
            groups = input_pipeline.video_groups(c, source, host, 2, examples_per_step=1)
            per_host = n // 2
            seen += [
                e["index"]
                for s in range(epoch * per_host, (epoch + 1) * per_host)
                for e in groups[s]["examples"]
            ]
        assert sorted(seen) == list(range(n)), (epoch, seen)


def test_resume_from_checkpoint_yields_the_next_batch(dataset, tmp_path):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    groups = input_pipeline.video_groups(c, source, 0, 1, examples_per_step=2)
    straight = input_pipeline.DataIterator(groups)
    expected = [straight(s) for s in range(4)]
    it = input_pipeline.DataIterator(groups)
    for s in range(3):
        it(s)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, with_data=True)
    ckpt.save(3, {"w": np.zeros(2)}, data_state=it.get_state())
    ckpt.wait()
    resumed = input_pipeline.DataIterator(groups)
    resumed.set_state(ckpt.restore_data())
    ckpt.close()
    with pytest.raises(ValueError, match="at step 3"):
        resumed(2)
    got = resumed(3)
    assert [e["index"] for e in got["examples"]] == [e["index"] for e in expected[3]["examples"]]
    for a, b in zip(got["examples"], expected[3]["examples"]):
        np.testing.assert_array_equal(a["video"], b["video"])


@pytest.fixture(scope="module")
def vae_workdir(dataset, tmp_path_factory):
    """A workdir with a random-init VAE checkpoint (encoding needs weights, not good ones)."""
    _, data_dir, _ = dataset
    workdir = str(tmp_path_factory.mktemp("run"))
    c = _config(data_dir)
    model = builders.build_vae(c)
    state = vae_trainer.init_state(c, model, ts.make_optimizer(c.vae.train), mesh_lib.create_mesh())
    ckpt = checkpoint.for_stage(c, workdir, "vae")
    ckpt.save(1, state, force=True)
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def vae(dataset, vae_workdir):
    """(model, params) of the workdir's VAE, loaded once for the tests that encode."""
    return loader.load_vae(_config(dataset[1]), vae_workdir, mesh_lib.create_mesh())


@pytest.fixture(scope="module")
def cache_dir(dataset, vae_workdir, vae, tmp_path_factory):
    _, data_dir, _ = dataset
    out = str(tmp_path_factory.mktemp("cache"))
    info = dit_input.write_latent_cache(_config(data_dir), vae, out)
    assert info["num_examples"] == len(CLIPS) and info["num_bad"] == 0
    assert open(os.path.join(out, "bad_files.jsonl")).read() == ""
    return out


def test_cached_latents_give_the_same_batches_as_on_the_fly(dataset, vae, cache_dir):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    mesh = mesh_lib.create_mesh()
    vae_model, vae_params = vae
    text = builders.build_text_encoder(c)
    fly, mean, std = dit_input.build(c, vae_model, vae_params, text, mesh)
    c.data.source, c.data.cache_dir = "latent_cache", cache_dir
    cached, cmean, cstd = dit_input.build(c, vae_model, vae_params, text, mesh)
    np.testing.assert_allclose(cmean, mean, atol=1e-5)
    np.testing.assert_allclose(cstd, std, atol=1e-5)
    for step in range(3):
        a, b = fly.local_batch(step), cached.local_batch(step)
        assert a.keys() == b.keys()
        assert (a["segment_ids"] > 0).any()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=f"{k} at step {step}")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random-init BERT folder (config.json, model.safetensors, vocab.txt)."""
    return _write_bert(tmp_path_factory.mktemp("bert"), _random_bert_weights(0))


def test_latent_cache_stores_frozen_text_embeddings(dataset, vae, cache_dir, bert_dir, tmp_path):
    """A frozen encoder's caption embeddings are cached beside the latents, and the cached
    source's batches carry them as the on-the-fly source's do; 'tiny' keeps token ids only."""
    _, data_dir, _ = dataset
    c = _config(data_dir)
    c.text.kind, c.text.path, c.text.max_length = "bert", bert_dir, 12
    c.dit.text_dropout = 0.5  # the empty caption's embedding goes into some rows
    c = config_lib.validate(c)
    out = str(tmp_path / "cache")
    info = dit_input.write_latent_cache(c, vae, out)
    text = builders.build_text_encoder(c)
    assert info["text_identity"] == text.identity and info["text_dtype"] == "float32"

    # Each record holds its caption's hidden states, as the encoder computes them.
    records, _ = latent_cache.open_cache(out)
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    captions = [source[i]["caption"].decode() for i in range(len(source))]
    ids, mask = text.tokenize(captions)
    want = np.asarray(text.encode(text.params, ids, mask))
    for i in range(len(records)):
        r = latent_cache.decode_record(records[i])
        assert r["caption_emb"].shape == (12, 32)
        np.testing.assert_allclose(r["caption_emb"], want[i], atol=1e-5)
        np.testing.assert_array_equal(r["caption_mask"], mask[i])
    tiny_records, _ = latent_cache.open_cache(cache_dir)
    assert "caption_emb" not in latent_cache.decode_record(tiny_records[0])

    mesh = mesh_lib.create_mesh()
    fly, _, _ = dit_input.build(c, *vae, text, mesh)
    c.data.source, c.data.cache_dir = "latent_cache", out
    cached, _, _ = dit_input.build(c, None, None, text, mesh)  # no VAE needed
    null_ids = text.tokenize([""])[0][0]
    for step in range(2):
        a, b = fly.local_batch(step), cached.local_batch(step)
        assert a.keys() == b.keys() and "caption_emb" in a
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=f"{k} at step {step}")
        # The embeddings are those of the batch's captions (the empty one where dropped).
        used = b["caption_mask"].any(-1)
        fresh = text.encode(text.params, b["caption_ids"][used], b["caption_mask"][used])
        np.testing.assert_allclose(b["caption_emb"][used], np.asarray(fresh), atol=1e-5)
        assert not b["caption_emb"][~used].any()
        dropped = (b["caption_ids"][used] == null_ids).all(-1)
        assert 0 < dropped.sum() < len(dropped), step

    # A cache written for another text encoder is refused, naming what differs.
    tiny = _config(data_dir)
    tiny.data.source, tiny.data.cache_dir = "latent_cache", out
    with pytest.raises(ValueError, match="another text encoder.*text_kind.*'bert', 'tiny'"):
        dit_input.build(tiny, None, None, builders.build_text_encoder(tiny), mesh)


def test_latent_cache_record_keeps_bfloat16_embeddings():
    emb = np.random.default_rng(0).normal(size=(3, 4)).astype(jnp.bfloat16)
    latent, ids, mask = np.zeros((1, 2, 2, 4)), [1, 2, 0], [1, 1, 0]
    narrow = latent_cache.encode_record(latent, ids, mask, 7, emb)
    wide = latent_cache.encode_record(latent, ids, mask, 7, emb.astype(np.float32))
    assert len(narrow) < len(wide)  # stored as 2-byte values
    r = latent_cache.decode_record(narrow)
    assert r["caption_emb"].dtype == np.float32
    np.testing.assert_array_equal(r["caption_emb"], emb.astype(np.float32))
    assert int(r["index"]) == 7 and r["caption_mask"].tolist() == [True, True, False]


def _copy_with_bad_record(cache_dir, out, bad_index):
    """The cache with record `bad_index` replaced by a bad example's (no VAE needed)."""
    source, info = latent_cache.open_cache(cache_dir)
    writer = latent_cache.Writer(out)
    for i in range(len(source)):
        writer.add(latent_cache.BAD_RECORD if i == bad_index else source[i])
    writer.close({k: v for k, v in info.items() if k != "num_examples"})
    return str(out)


def test_dit_trains_and_resumes_from_the_latent_cache(dataset, vae_workdir, cache_dir, tmp_path):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    # One of the 4 examples unusable: each step reads 8 (dit.rows x 1 segment = two epochs).
    bad_cache = _copy_with_bad_record(cache_dir, tmp_path / "cache", bad_index=1)
    c.data.source, c.data.cache_dir, c.data.max_bad_fraction = "latent_cache", bad_cache, 0.5
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    os.symlink(os.path.join(vae_workdir, "vae"), os.path.join(workdir, "vae"))
    mesh = mesh_lib.create_mesh()
    writer = writers.MetricWriter(str(tmp_path / "tb"))
    _, first = dit_trainer.train(c, workdir, mesh, writer)
    assert [s for s, _ in first] == [1, 2] and all(np.isfinite(m["loss"]) for _, m in first)
    ckpt = checkpoint.for_stage(c, workdir, "dit")
    assert ckpt.restore_data()["step"] == 2
    ckpt.close()
    c.dit.train.steps = 3
    _, resumed = dit_trainer.train(c, workdir, mesh, writer)
    assert [s for s, _ in resumed] == [3]
    # The bad-example counts go to TensorBoard with the step's metrics, and survive the resume.
    writer.flush()
    scalars = writers.read_scalars(str(tmp_path / "tb"))
    assert scalars["data/num_bad"] == [(1, 2.0), (2, 4.0), (3, 6.0)]
    assert scalars["data/bad_fraction"] == [(s, 0.25) for s in (1, 2, 3)]
    assert [s for s, _ in scalars["dit/loss"]] == [1, 2, 3]
    bad = [json.loads(line) for line in open(os.path.join(workdir, "dit", "bad_files.jsonl"))]
    assert [(b["step"], b["index"]) for b in bad] == [(s, 1) for s in (0, 0, 1, 1, 2, 2)]
    assert "bad example in the latent cache" in bad[0]["reason"]
    # The sampler's loader reads the same checkpoint layout.
    _, _, params, extras = loader.load_dit(c, workdir, mesh)
    np.testing.assert_allclose(np.asarray(extras["latent_std"]), _cache_std(cache_dir), rtol=1e-6)
    writer.close()


def test_run_stops_past_max_bad_fraction(dataset, cache_dir, tmp_path):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    c.data.source, c.data.max_bad_fraction = "latent_cache", 0.3
    c.data.cache_dir = _copy_with_bad_record(cache_dir, tmp_path / "cache", bad_index=2)
    text = builders.build_text_encoder(c)
    batches, _, _ = dit_input.build(c, None, None, text, mesh_lib.create_mesh())
    batches.local_batch(0)  # 2 of 8 bad: under 0.3
    assert batches.metrics() == {"data/num_bad": 2, "data/bad_fraction": 0.25}
    c.data.max_bad_fraction = 0.2
    with pytest.raises(RuntimeError, match=r"4 of 16 examples were unusable, more than config"):
        batches.local_batch(1)


def test_held_out_examples_never_reach_training(dataset, vae, cache_dir):
    """The split is by source index: the TFDS source and the latent cache written from it hold
    out the same examples, training groups never contain them, and every other one comes."""
    _, data_dir, _ = dataset
    c = _config(data_dir, val_fraction=0.3)
    text = builders.build_text_encoder(c)
    mesh = mesh_lib.create_mesh()
    fly, _, _ = dit_input.build(c, *vae, text, mesh)
    c.data.source, c.data.cache_dir = "latent_cache", cache_dir
    cached, _, _ = dit_input.build(c, None, None, text, mesh)
    held = set(fly.held_out.tolist())
    assert 0 < len(held) < len(CLIPS) and set(cached.held_out.tolist()) == held
    for source in (fly, cached):
        seen = [int(e["index"]) for s in range(4) for e in source.iterator(s)["examples"]]
        assert set(seen) == set(range(len(CLIPS))) - held, seen
    a, b = fly.held_out_cache(8), cached.held_out_cache(8)
    assert len(a.tokens) == len(b.tokens) == len(held)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_allclose(x, y, atol=1e-4)


def _vae_config(data_dir, steps=4):
    c = _config(data_dir, val_fraction=0.3)
    c.stages = ("vae",)
    c.vae.train.update(data="source", steps=steps, val_every=2, val_examples=2)
    c.vae.train.update(buckets=((5, 16, 16), (1, 16, 24)), batch_size=8, image_batch_size=8)
    c.vae.latent_stats_batches = 2
    return config_lib.validate(c)


def test_vae_batches_fit_own_clips_to_the_step_bucket_and_skip_held_out(dataset):
    _, data_dir, _ = dataset
    c = _vae_config(data_dir)
    mesh = mesh_lib.create_mesh()
    batches = vae_input.VAEBatches(c, mesh)
    held = set(batches.held_out.tolist())
    assert 0 < len(held) < len(CLIPS)
    seen = set()
    for step in range(6):
        examples = batches.examples(step)
        seen |= {e["index"] for e in examples}
        b = batches.assemble(examples, step)
        frames, h, w = vae_input.step_bucket(c, step)
        # The shortest clip (5 frames) caps the frames; stills go to the images unless the
        # group has nothing else.
        longest = max(len(e["video"]) for e in examples)
        want = min(frames, 5) if longest > 1 else 1
        assert b["video"].shape == (8, want, h, w, 3), (step, b["video"].shape)
        assert b["image"].shape == (8, 1, h, w, 3)
        assert -1.0 <= b["video"].min() < b["video"].max() <= 1.0
    assert seen == set(range(len(CLIPS))) - held
    # Fitting keeps the aspect ratio: a 32x48 clip into 16x16 is a crop of its 16x24 resize.
    video = np.arange(2 * 32 * 48 * 3, dtype=np.uint8).reshape(2, 32, 48, 3)
    out = vae_input.fit(video, 5, 16, 16, np.random.default_rng(0))
    full = video_io.resize(video, 16, 24)
    assert out.shape == (2, 16, 16, 3)
    assert any(np.array_equal(out, full[:, :, x : x + 16]) for x in range(9))
    v = batches.held_out_videos(2, (5, 16, 16))
    assert v.dtype == np.uint8 and v.shape[0] == min(2, len(held)) and v.shape[2:] == (16, 16, 3)


def test_vae_trains_on_own_videos_and_resumes_bit_exactly(dataset, tmp_path):
    _, data_dir, _ = dataset
    c = _vae_config(data_dir)
    c.vae.train.buckets = ((5, 16, 16),)  # one train step program to compile
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    train.train_and_evaluate(c, full)
    scalars = writers.read_scalars(os.path.join(full, "tensorboard"))
    assert [s for s, _ in scalars["vae/val/psnr"]] == [2, 4]
    assert {"vae/val/ssim/5x16x16", "vae/val/psnr/5x16x16"} <= set(scalars)
    # A run killed after checkpoint 2 (its data iterator state saved with it) resumes to the
    # same weights as the run that went through.
    shutil.copytree(full, cut, ignore=shutil.ignore_patterns("tensorboard"))
    shutil.rmtree(os.path.join(checkpoint.stage_directory(cut, "vae"), "4"))
    train.train_and_evaluate(c, cut)
    mesh = mesh_lib.create_mesh()
    (_, a), (_, b) = (vae_trainer.load_state(c, w, mesh) for w in (full, cut))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.extras["latent_std"], b.extras["latent_std"])
    ckpt = checkpoint.for_stage(c, cut, "vae")
    assert ckpt.restore_data(4)["step"] == 4
    ckpt.close()


def _cache_std(cache_dir):
    return np.asarray(json.load(open(os.path.join(cache_dir, "cache_info.json")))["latent_std"])


@pytest.mark.parametrize(
    "knobs, key",
    [
        (dict(source="webdataset"), "data.source"),
        (dict(source="latent_cache", cache_dir=""), "data.cache_dir"),
        (dict(max_frames=6), "data.max_frames"),
        (dict(target_area=64 * 64), "data.target_area"),
        (dict(max_bad_fraction=1.5), "data.max_bad_fraction"),
    ],
)
def test_config_rejects_bad_data_knobs(knobs, key):
    c = _config("/nonexistent")
    for k, v in knobs.items():
        c.data[k] = v
    with pytest.raises(ValueError, match=f"config.{key}[=:]"):
        config_lib.validate(c)


def test_build_dataset_cli_exports_and_builds_moving_shapes(tmp_path):
    r = run_cli(
        "sora_jax.build_dataset",
        "--moving_shapes=3",
        f"--source={tmp_path}/shapes",
        f"--data_dir={tmp_path}/tfds",
    )
    assert r.returncode == 0, r.stderr
    assert "video_clips: 3 clips, 0 bad" in r.stdout
    ds = input_pipeline.open_tfds("video_clips", str(tmp_path / "tfds"))
    captions = sorted(ds[i]["caption"].decode() for i in range(3))
    assert captions == sorted(shapes.MovingShapes(0, 3, (1, 9, 17))[i]["caption"] for i in range(3))


def test_bad_record_at_decode_time_is_skipped_and_counted(dataset):
    _, data_dir, _ = dataset
    c = _config(data_dir)
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    records = [source[i] for i in range(len(source))]
    records[1] = dict(records[1], video=records[1]["video"][:100])  # truncated after building
    opts = input_pipeline.clip_options(c)
    assert input_pipeline.decode_example(opts, 1, records[1]) is None
    examples = input_pipeline.examples_dataset(
        records, lambda i, r: input_pipeline.decode_or_report(opts, i, r)
    )
    group = input_pipeline.step_groups(examples, 0, len(records), 0, 1)[0]
    assert group["num_bad"] == 1
    assert sorted(e["index"] for e in group["examples"]) == [0, 2, 3]
    [bad] = group["bad"]  # reported with its path and the error, for bad_files.jsonl
    assert bad["index"] == 1 and bad["path"] == records[1]["path"].decode()
    assert bad["reason"].startswith(("InvalidDataError", "ValueError")), bad["reason"]


def test_worker_processes_yield_the_same_groups_and_resume(dataset):
    """data.worker_count=1: clips decoded in a grain worker process are the in-process ones."""
    _, data_dir, _ = dataset
    source = input_pipeline.open_tfds("video_clips", str(data_dir))
    groups = input_pipeline.video_groups(_config(data_dir), source, 0, 1, examples_per_step=3)
    inline = input_pipeline.DataIterator(groups)
    expected = [inline(s) for s in range(3)]
    workers = input_pipeline.DataIterator(groups, worker_count=1)
    got = [workers(s) for s in range(2)]
    state = workers.get_state()
    resumed = input_pipeline.DataIterator(groups, worker_count=1)
    resumed.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
    got.append(resumed(2))
    for a, b in zip(got, expected):
        assert a["num_bad"] == b["num_bad"]
        assert [e["index"] for e in a["examples"]] == [e["index"] for e in b["examples"]]
        for x, y in zip(a["examples"], b["examples"]):
            np.testing.assert_array_equal(x["video"], y["video"])

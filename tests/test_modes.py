"""Generation modes through one conditioning mechanism (per-token time, clean given frames).

Image->video, extension forward / backward and connecting clips must keep the given frames
(exactly in latent space, by PSNR against the VAE round trip in pixels); SDEdit at strength 0
returns the input's round trip and at strength 1 is plain text->video; the DiT without given
frames is the old DiT; given tokens leave the loss; the training masks follow their rates.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusion import CONVERGED, TARGETS, random_pipeline, err
from test_train import _fixed_dit_batch, micro_config, run_cli

from sora_jax import config as config_lib
from sora_jax.inference import prompts as prompts_lib
from sora_jax.common import checkpoint
from sora_jax.data import shapes, video_io
from sora_jax.diffusion import conditioning, samplers
from sora_jax.diffusion import objectives as obj
from sora_jax.evaluation import prompt_eval
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.models.dit import DiT
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, vae_trainer
from sora_jax.training import train_state as ts
from sora_jax.data import packing
from sora_jax.models import builders
from sora_jax.data import batches

# ------------------------------------------------------------------------------ the DiT

DIT_KW = dict(patch_dim=16, hidden=32, depth=2, num_heads=4, text_dim=8, abs_positions=True)


def _dit_inputs():
    r = np.random.default_rng(0)
    b, l, s, lt = 2, 20, 3, 5
    x = r.normal(size=(b, l, 16)).astype(np.float32)
    t = r.uniform(size=(b, s)).astype(np.float32)
    seg = np.repeat([[1] * 8 + [2] * 8 + [3] * 2 + [0] * 2], b, 0).astype(np.int32)
    pos = r.integers(0, 3, (b, l, 3)).astype(np.int32)
    text = r.normal(size=(b, s, lt, 8)).astype(np.float32)
    tmask = np.ones((b, s, lt), bool)
    tmask[:, :, -1] = False
    return x, t, seg, pos, text, tmask


def _numpy_params(model, args):
    """Params drawn with numpy (independent of jax's PRNG), in the tree's leaf order."""
    shapes_ = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))["params"]
    leaves, tree = jax.tree.flatten(shapes_)
    r = np.random.default_rng(1)
    return jax.tree.unflatten(
        tree, [0.3 * r.normal(size=a.shape).astype(np.float32) for a in leaves]
    )


def test_dit_without_given_frames_is_the_old_dit():
    args = _dit_inputs()
    model = DiT(**DIT_KW)
    params = _numpy_params(model, args)
    out = np.asarray(jax.jit(lambda p: model.apply({"params": p}, *args))(params))
    # Outputs of the DiT before per-token time existed (commit 2d2a687), same params and inputs.
    np.testing.assert_allclose(
        out[0, 0, :4], [2.758544, -4.9593697, -14.076484, 16.043474], rtol=1e-4
    )
    np.testing.assert_allclose(
        out[1, 17, :4], [-16.039112, 9.769467, -2.4451501, 7.0846214], rtol=1e-4
    )
    np.testing.assert_allclose(np.abs(out).sum(), 4898.3877, rtol=1e-4)
    # The same parameter tree as then (old checkpoints load).
    assert set(params) == {
        "time_mlp_in",
        "time_mlp_out",
        "text_pool_proj",
        "text_proj",
        "patch_embed",
        "pos_embed",
        "block_0",
        "block_1",
        "final_adaln",
        "final_out",
    }


def test_given_frames_take_their_own_time_and_flag():
    x, t, seg, pos, text, tmask = _dit_inputs()
    model = DiT(**DIT_KW, cond_embedding=True)
    params = _numpy_params(model, (x, t, seg, pos, text, tmask))
    apply = jax.jit(lambda p, **kw: model.apply({"params": p}, x, t, seg, pos, text, tmask, **kw))
    ref = np.asarray(apply(params))
    no_cond = np.zeros(seg.shape, bool)
    np.testing.assert_allclose(apply(params, cond_mask=no_cond), ref, atol=1e-5)
    # Given tokens at their segment's own time: that time equal to t changes nothing but the
    # flag; at t = 0 (the default) they change the output.
    cond = (seg == 1) & (pos[..., 0] == 0)
    fresh = dict(params, cond_embed=jnp.zeros(32))  # zero-initialised flag: no effect
    np.testing.assert_allclose(apply(fresh, cond_mask=cond, t_given=t), ref, atol=1e-5)
    assert np.abs(apply(fresh, cond_mask=cond) - ref).max() > 1e-2
    a = apply(fresh, cond_mask=cond, t_given=np.zeros_like(t))
    np.testing.assert_array_equal(a, apply(fresh, cond_mask=cond))
    b = apply(params, cond_mask=cond)
    assert np.abs(a - b).max() > 1e-2  # the learned flag
    with pytest.raises(ValueError, match="t_given"):
        apply(params, cond_mask=cond, t_given=t[:, :1])


# ----------------------------------------------------------------------------- training


def test_mask_sampler_follows_the_configured_rates():
    weights = dict(first=0.4, first_k=0.2, last_k=0.15, both_ends=0.15, random=0.1)
    rng = np.random.default_rng(0)
    n, frames = 20_000, 6
    counts = dict.fromkeys(weights, 0)
    for _ in range(n):
        kind, m = conditioning.sample_frame_mask(rng, frames, weights, 0.5)
        counts[kind] += 1
        assert m.any() and not m.all(), (kind, m)
        k = int(m.sum())
        if kind == "first":
            assert m[0] and k == 1
        elif kind == "first_k":
            assert m[:k].all()
        elif kind == "last_k":
            assert m[frames - k :].all()
        elif kind == "both_ends":
            assert m[0] and m[-1] and not m.all()
            assert np.sum(np.diff(m.astype(int)) != 0) == 2  # one gap between two runs
    for kind, w in weights.items():
        assert abs(counts[kind] / n - w) < 0.015, (kind, counts[kind] / n)
    # Short videos: both ends needs 3 latent frames; an image is never conditioned.
    kinds = {conditioning.sample_frame_mask(rng, 2, weights)[0] for _ in range(500)}
    assert "both_ends" not in kinds and len(kinds) == 4
    assert conditioning.sample_frame_mask(rng, 1, weights) is None


def _cond_config(rate):
    c = micro_config()
    c.dit.condition.rate = rate
    c.dit.model.cond_embedding = True
    return config_lib.validate(c)


def test_batches_condition_at_the_rate_and_rate_zero_is_unchanged():
    _, old = _fixed_dit_batch(_cond_config(0.0))
    assert "cond_mask" not in old  # rate 0: the batch of old runs
    text, batch = _fixed_dit_batch(_cond_config(0.5))
    for key in old:
        np.testing.assert_array_equal(batch[key], old[key])
    cm, seg, pos = batch["cond_mask"], batch["segment_ids"], batch["positions"]
    conditioned = multi = 0
    for r in range(seg.shape[0]):
        for s in range(1, seg[r].max() + 1):
            on = seg[r] == s
            frames = pos[r, on, 0]
            if frames.max() == 0:
                assert not cm[r, on].any()  # one latent frame: nothing left to generate
                continue
            multi += 1
            given = np.unique(frames[cm[r, on]])
            conditioned += len(given) > 0
            # Whole latent frames, never all of them.
            assert len(given) < frames.max() + 1
            assert np.array_equal(cm[r, on], np.isin(frames, given))
    assert multi >= 8 and 0.2 < conditioned / multi < 0.8, (conditioned, multi)
    # Rates over many steps.
    cache_batches = [
        batches.dit_batch(_cond_config(0.5), *_cache_args(), step) for step in range(20)
    ]
    assert 0.05 < np.mean([b["cond_mask"].mean() for b in cache_batches]) < 0.4


def _cache_args():
    c = micro_config()
    rng = np.random.default_rng(0)
    tokens, positions = [], []
    for t in (1, 2, 3, 4) * 8:
        tok, pos = packing.patchify(rng.normal(size=(t, 2, 2, 4)), tuple(c.dit.patch))
        tokens.append(tok.astype(np.float32))
        positions.append(pos)
    text = builders.build_text_encoder(c)
    ids, mask = text.tokenize(["a small red circle on a grey background"] * len(tokens))
    cache = batches.LatentCache(tokens, positions, ids, mask, np.zeros(4), np.ones(4))
    null_ids, null_mask = (a[0] for a in text.tokenize([""]))
    return cache, null_ids, null_mask


def test_first_frames_of_videos_join_the_cache_as_images_with_the_video_caption():
    c = micro_config()
    c.dit.latent_cache_size = 12
    mesh = mesh_lib.create_mesh(1)
    vae = builders.build_vae(c)
    vae_params = vae_trainer.init_state(c, vae, ts.make_optimizer(c.vae.train), mesh).params
    text = builders.build_text_encoder(c)
    ch = c.vae.model.latent_channels
    stats = (np.zeros(ch, np.float32), np.ones(ch, np.float32))
    plain = batches.build_latent_cache(c, vae, vae_params, text, *stats)
    c.dit.first_frames = 1.0
    cache = batches.build_latent_cache(c, vae, vae_params, text, *stats)
    videos = [i for i, p in enumerate(plain.positions) if p[:, 0].max() > 0]
    assert 0 < len(videos) < 12 and len(cache.tokens) == 12 + len(videos)
    for i, j in enumerate(videos):
        k = 12 + i
        first = plain.positions[j][:, 0] == 0  # the first latent frame's tokens
        np.testing.assert_array_equal(cache.tokens[k], plain.tokens[j][first])
        np.testing.assert_array_equal(cache.positions[k], plain.positions[j][first])
        np.testing.assert_array_equal(cache.caption_ids[k], plain.caption_ids[j])
    for name in ("tokens", "positions"):
        for a, b in zip(getattr(cache, name)[:12], getattr(plain, name)):
            np.testing.assert_array_equal(a, b)
    c.dit.first_frames = 1.5
    with pytest.raises(ValueError, match="dit.first_frames"):
        config_lib.validate(c)


def test_given_tokens_are_left_out_of_the_loss():
    c = _cond_config(1.0)
    text, batch = _fixed_dit_batch(c)
    cm = batch["cond_mask"]
    assert cm.any() and (~cm & (batch["segment_ids"] > 0)).any()
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    assert "cond_embed" in state.params["dit"]
    # A fresh DiT outputs zeros whatever it sees (adaLN-Zero): the loss is that of the targets.
    step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
    loss = lambda b: float(step(state, b, jax.random.PRNGKey(0))[1]["loss"])  # noqa: E731
    base = loss(batch)
    changed = dict(batch, tokens=np.where(cm[..., None], 100.0, batch["tokens"]))
    assert loss(changed) == base
    free = (~cm) & (batch["segment_ids"] > 0)
    changed = dict(batch, tokens=np.where(free[..., None], 100.0, batch["tokens"]))
    assert loss(changed) > 10 * base
    _, metrics = step(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(
        metrics["cond_fraction"], cm.sum() / (batch["segment_ids"] > 0).sum(), rtol=1e-6
    )


class _Recorded(Exception):
    pass


class _SpyDiT:
    """The DiT, recording the inputs of its first `apply` (the train step run eagerly) and
    stopping the step there: the rest of it (the DiT, its gradients) is not under test."""

    def __init__(self, dit):
        self.dit, self.inputs = dit, None

    def apply(self, variables, x, *args, **kw):
        self.inputs = (
            np.asarray(x),
            {k: None if v is None else np.asarray(v) for k, v in kw.items()},
        )
        raise _Recorded

    def __getattr__(self, name):
        return getattr(self.dit, name)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_given_frames_are_noised_to_their_own_time_in_training(noise):
    c = _cond_config(1.0)
    c.dit.condition.noise = 1.0
    with pytest.raises(ValueError, match="dit.condition.noise"):
        config_lib.validate(c)
    c.dit.condition.noise = noise
    text, batch = _fixed_dit_batch(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    spy = _SpyDiT(dit)
    with jax.disable_jit(), pytest.raises(_Recorded):
        dit_trainer.make_train_step(c, spy, text, tx)(state, batch, jax.random.PRNGKey(0))
    (x, kw), seg = spy.inputs, batch["segment_ids"]
    cond, x0 = kw["cond_mask"], batch["tokens"]
    np.testing.assert_array_equal(cond, batch["cond_mask"] & (seg > 0))
    if noise == 0:
        assert kw["t_given"] is None  # the model's default: clean, at time 0
        np.testing.assert_array_equal(x[cond], x0[cond])
        return
    # One time per conditioned video, drawn in [0, noise]; its given tokens are noised to it.
    tc = np.take_along_axis(np.asarray(kw["t_given"]), np.maximum(seg - 1, 0), axis=1)[cond]
    assert tc.min() >= 0 and tc.max() <= noise and len(np.unique(tc)) > 1
    moved = np.abs(x[cond] - x0[cond]).mean(-1)
    assert np.all(moved[tc > 0.05] > 0) and np.corrcoef(tc, moved)[0, 1] > 0.5


def test_sampling_noises_given_frames_and_returns_them_clean(pipe, clip, monkeypatch):
    prompt, video = clip
    got = _capture(monkeypatch)
    clean = pipe.image_to_video([prompt], video[0], **KW)
    noised = pipe.image_to_video([prompt], video[0], condition_noise=0.3, **KW)
    (t0, t1), sl = got[-2:], slice(0, TOKENS_PER_FRAME)
    np.testing.assert_array_equal(t1[0, sl], t0[0, sl])  # the given frame comes back clean
    np.testing.assert_array_equal(noised[0, 0], clean[0, 0])
    # The model saw a noised given frame, so the generated frames change.
    assert np.abs(t1[0, TOKENS_PER_FRAME:] - t0[0, TOKENS_PER_FRAME:]).mean() > 1e-3
    with pytest.raises(ValueError, match="diffusion.condition_noise"):
        pipe.image_to_video([prompt], video[0], condition_noise=1.0, **KW)


# ---------------------------------------------------------------------- samplers from t_start


@pytest.mark.parametrize("objective", [obj.RectifiedFlow(), obj.DDPM(prediction="v")])
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_starts_from_an_intermediate_time(objective, sampler):
    """From x_{t0} of true samples the samplers must still land on the target (SDEdit)."""
    target = TARGETS["mixture"]
    n = 20_000
    x0 = jnp.asarray(target.sample(np.random.default_rng(3), n), jnp.float32)
    noise = jax.random.normal(jax.random.PRNGKey(4), x0.shape)
    steps = CONVERGED[sampler]
    ts_ = samplers.time_grid(objective, steps, "uniform", t_start=0.6)
    assert float(ts_[0]) == pytest.approx(0.6) and float(ts_[-1]) == 0.0 and len(ts_) < steps
    start = samplers.start_state(objective, x0, noise, 0.6)
    x = samplers.sample(
        sampler,
        target.model_fn(objective),
        objective,
        start,
        ts_,
        eta=0.5,
        rng=jax.random.PRNGKey(5),
    )
    assert err(target, np.asarray(x)) < 0.12
    # t_start = 0: no step, the data itself; t_start = 1: the full grid and pure noise.
    assert samplers.time_grid(objective, 40, "uniform", t_start=0.0).tolist() == [0.0]
    np.testing.assert_array_equal(
        samplers.time_grid(objective, 40, "uniform", t_start=1.0),
        samplers.time_grid(objective, 40, "uniform"),
    )
    np.testing.assert_array_equal(samplers.start_state(objective, x0, noise, 1.0), noise)
    np.testing.assert_array_equal(samplers.start_state(objective, x0, noise, 0.0), x0)


# ------------------------------------------------------------------------------ pipeline

H = W = 16
KW = dict(num_frames=9, height=H, width=W, seed=3, steps=3)


@pytest.fixture(scope="module")
def pipe():
    """A random DiT over a VAE with only its parameter-free shortcut paths (block averages
    down, copies up): an autoencoder whose decoded frame depends on its own latent frame
    only, so given frames placed anywhere must come back exactly as their round trip."""
    p = random_pipeline(micro_config())
    return dataclasses.replace(
        p, model=dataclasses.replace(p.model, vae_params=_shortcut_only(p.model.vae_params))
    )


def _shortcut_only(params):
    def leaf(path, x):
        return jnp.ones_like(x) if jax.tree_util.keystr(path).endswith("['scale']") else x * 0

    return jax.tree_util.tree_map_with_path(leaf, params)


@pytest.fixture(scope="module")
def clip():
    attrs = shapes.sample_attributes(np.random.default_rng(1), False, 13, H, W)
    return shapes.caption(attrs), shapes.render(attrs, 13, H, W)


def _capture(monkeypatch):
    """The sampled latent tokens of every generate call."""
    real, got = pipeline_lib._decode, []

    def decode(*args):
        got.append(np.asarray(args[5]))
        return real(*args)

    monkeypatch.setattr(pipeline_lib, "_decode", decode)
    return got


def _round_trip(pipe, video):
    lat = pipe._encode(video[None], H, W)
    grid = (lat.shape[1], H // 4, W // 4)
    out = pipeline_lib._decode(
        pipe.model.vae,
        pipeline_lib.vae_inference.from_config(pipe.config),
        (1, 2, 2),
        grid,
        pipe.model.vae_params,
        pipe._tokens(lat),
        pipe.model.latent_mean,
        pipe.model.latent_std,
    )
    return pipeline_lib.builders.to_uint8(out)[0], pipe._tokens(lat)[0]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


TOKENS_PER_FRAME = (H // 8) * (W // 8)


@pytest.mark.parametrize("mode", ["image", "forward", "backward", "connect"])
def test_given_frames_are_kept(pipe, clip, mode, monkeypatch):
    prompt, video = clip
    got = _capture(monkeypatch)
    other = video[::-1].copy()
    if mode == "image":
        out = pipe.image_to_video([prompt], video[0], **KW)
        given = [(video[:1], slice(0, 1), slice(0, 1))]
    elif mode == "forward":
        out = pipe.extend([prompt], video, "forward", context_frames=5, **KW)
        given = [(video[8:13], slice(0, 5), slice(0, 2))]
    elif mode == "backward":
        out = pipe.extend([prompt], video, "backward", **KW)
        given = [(video[:4], slice(5, 9), slice(2, 3))]
    else:
        out = pipe.connect([prompt], video, other, **KW)
        given = [(video[12:13], slice(0, 1), slice(0, 1)), (other[:4], slice(5, 9), slice(2, 3))]
    assert out.shape == (1, 9, H, W, 3)
    tokens = got[-1][0]
    free = np.ones(3, bool)
    for frames, pixels, latents in given:
        # End frames are encoded behind a copy of their first frame (the causal VAE's image).
        padded = frames if pixels.start == 0 else np.concatenate([frames[:1], frames])
        ref, ref_tok = _round_trip(pipe, padded)
        k = latents.stop - latents.start
        sl = slice(latents.start * TOKENS_PER_FRAME, latents.stop * TOKENS_PER_FRAME)
        np.testing.assert_array_equal(tokens[sl], ref_tok[-k * TOKENS_PER_FRAME :])
        assert psnr(out[0, pixels], ref[-len(frames) :]) > 40, mode
        assert psnr(out[0, pixels], frames) > 15, mode  # the shortcut VAE's own fidelity
        free[latents] = False
    # The other frames are generated, not copies.
    sl = np.repeat(free, TOKENS_PER_FRAME)
    assert np.abs(tokens[sl]).mean() > 0.1


def test_edit_strength_zero_is_the_round_trip_and_one_is_text_to_video(pipe, clip):
    prompt, video = clip
    ref, _ = _round_trip(pipe, video[:9])
    np.testing.assert_array_equal(pipe.edit([prompt], video, 0.0, **KW)[0], ref)
    plain = pipe.generate([prompt], **KW)
    np.testing.assert_array_equal(pipe.edit([prompt], video, 1.0, **KW), plain)
    half = pipe.edit([prompt], video, 0.5, **KW)
    assert psnr(half[0], ref) < 100 and not np.array_equal(half, plain)


def test_factorized_text_to_video_is_text_to_image_then_image_to_video(pipe, clip):
    prompt, _ = clip
    # The image is drawn from the prompt as the video reads it, not as a 1-frame prompt reads.
    video_prompt = pipe.expand_prompts([prompt], KW["seed"], KW["num_frames"])
    image = pipe.generate(video_prompt, **dict(KW, num_frames=1), expand_prompt=False)
    out = pipe.generate([prompt], factorized=True, **KW)
    np.testing.assert_array_equal(out, pipe.image_to_video([prompt], image[0, 0], **KW))
    assert psnr(out[0, :1], _round_trip(pipe, image[0])[0]) > 40  # the image is frame 0
    assert not np.array_equal(out, pipe.generate([prompt], **KW))
    # config.sample.factorized is the default; an image is sampled in one pass either way.
    pipe.config.sample.factorized = True
    try:
        np.testing.assert_array_equal(pipe.generate([prompt], **KW), out)
        one = dict(KW, num_frames=1)
        np.testing.assert_array_equal(
            pipe.generate([prompt], **one), pipe.generate([prompt], **one, factorized=False)
        )
    finally:
        pipe.config.sample.factorized = False
    # image_prompt 'first_frame': the image pass is prompted without the motion clause.
    still = prompts_lib.first_frame_prompt(prompt)
    assert " moves " in prompt and " moves " not in still
    pipe.config.sample.image_prompt = "first_frame"
    try:
        out = pipe.generate([prompt], factorized=True, **KW)
    finally:
        pipe.config.sample.image_prompt = "same"
    image = pipe.generate([still], **dict(KW, num_frames=1))
    np.testing.assert_array_equal(out, pipe.image_to_video([prompt], image[0, 0], **KW))


def test_mode_errors_are_clear(pipe, clip):
    prompt, video = clip
    with pytest.raises(ValueError, match="too many given frames"):
        pipe.image_to_video([prompt], video[0], num_frames=1, height=H, width=W)
    with pytest.raises(ValueError, match="too many given frames"):
        pipe.extend([prompt], video, "forward", context_frames=9, **KW)
    with pytest.raises(ValueError, match="must be 1 \\+ 4\\*j"):
        pipe.generate([prompt], start_frames=video[:3], **KW)
    with pytest.raises(ValueError, match="must be a multiple of 4"):
        pipe.generate([prompt], end_frames=video[:3], **KW)
    with pytest.raises(ValueError, match="has 13 frames, 17 are needed"):
        pipe.extend([prompt], video, "forward", context_frames=17, **KW)
    with pytest.raises(ValueError, match="frames given at the end the video must have"):
        pipe.extend([prompt], video, "backward", **dict(KW, num_frames=8))
    with pytest.raises(ValueError, match="edit strength 1.5"):
        pipe.edit([prompt], video, 1.5, **KW)
    with pytest.raises(ValueError, match="13 frames; 17 are needed"):
        pipe.edit([prompt], video, 0.5, **dict(KW, num_frames=17))
    # Other sizes are resized.
    big = video_io.resize(video, 32, 24)
    assert pipe.image_to_video([prompt], big[0], **KW).shape == (1, 9, H, W, 3)


def test_image_to_video_evaluation_runs(pipe):
    result = prompt_eval.evaluate_image_to_video(
        pipe, 3, 5, num_frames=5, height=H, width=W, steps=2
    )
    assert result["num_videos"] == 3 and 0.0 <= result["colour_accuracy"] <= 1.0
    frames = prompt_eval.first_frames(prompt_eval.eval_prompts(3, 5, 5, H, W), 5, H, W)
    assert frames.shape == (3, H, W, 3)


# --------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with freshly initialised VAE and DiT checkpoints (no training needed)."""
    path = str(tmp_path_factory.mktemp("modes"))
    c = micro_config()
    config_lib.save(c, path)
    mesh = mesh_lib.create_mesh(1)
    vae = builders.build_vae(c)
    states = {"vae": vae_trainer.init_state(c, vae, ts.make_optimizer(c.vae.train), mesh)}
    text = builders.build_text_encoder(c)
    ch = c.vae.model.latent_channels
    states["dit"] = dit_trainer.init_state(
        c,
        builders.build_dit(c, text.dim),
        text,
        ts.make_optimizer(c.dit.train),
        mesh,
        dit_trainer._extras(np.zeros(ch, np.float32), np.ones(ch, np.float32)),
    )
    for stage, state in states.items():
        ckpt = checkpoint.for_stage(c, path, stage)
        ckpt.save(1, state, force=True)
        ckpt.close()
    return path


def test_cli_modes_and_errors(workdir, clip, tmp_path):
    prompt, video = clip
    a, b, image = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "first.png"
    video_io.write_video(a, video)
    video_io.write_video(b, video[::-1].copy())
    video_io.write_image(image, video[0])
    base = [f"--workdir={workdir}", f"--prompt={prompt}", "--frames=9", "--height=16", "--width=16"]
    out = tmp_path / "out"
    r = run_cli("sora_jax.sample", *base, f"--out={out}", "--connect", str(a), str(b), "--steps=2")
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(out))
    assert [os.path.splitext(f)[1] for f in files] == [".gif", ".json", ".mp4", ".html"]
    assert video_io.read_video(out / files[2]).shape == (9, 16, 16, 3)
    with open(out / files[1]) as f:
        assert json.load(f)["expanded_prompt"] == prompt  # a caption expands to itself
    r = run_cli("sora_jax.sample", *base, f"--image={tmp_path}/missing.png")
    assert r.returncode != 0 and "not found" in r.stderr and "missing.png" in r.stderr
    r = run_cli("sora_jax.sample", *base, f"--video={a}", "--extend=forward", "--context_frames=9")
    assert r.returncode != 0 and "too many given frames" in r.stderr
    r = run_cli("sora_jax.sample", *base, f"--image={image}", "--extend=forward")
    assert r.returncode != 0 and "choose one mode" in r.stderr
    r = run_cli(
        "sora_jax.evaluate", f"--workdir={workdir}", "--mode=i2v", "--num_prompts=2", "--steps=2"
    )
    assert r.returncode == 0, r.stderr
    assert '"mode": "i2v"' in r.stdout and '"direction_accuracy"' in r.stdout

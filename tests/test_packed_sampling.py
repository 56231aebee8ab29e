"""Sampling packs videos of different sizes into shared rows (the packer training uses) and
gets the videos each request gives alone."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusion import random_pipeline
from test_train import micro_config

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.diffusion import guidance
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.inference import sampling

PROMPTS = (
    "a large red circle moves right steadily on a grey background",
    "a small blue square moves up quickly on a black background",
    "a medium green triangle moves left slowly on a white background",
)
# (frames, height, width): 12, 4 and 6 latent tokens on the micro config (4x4x4 VAE, 1x2x2).
SIZES = ((5, 16, 24), (1, 16, 16), (9, 8, 16))
SEEDS = (3, 1, 4)


def _pipeline(**diffusion):
    c = micro_config()
    c.diffusion.sample_steps = 4
    for k, v in diffusion.items():
        c.diffusion[k] = v
    return random_pipeline(config_lib.validate(c))


def _requests(**kw):
    return [
        pipeline_lib.Request(p, f, h, w, seed=s, **kw)
        for p, (f, h, w), s in zip(PROMPTS, SIZES, SEEDS)
    ]


def _alone(pipe, requests, **kw):
    return [
        pipe.generate(
            [r.prompt], num_frames=r.num_frames, height=r.height, width=r.width, seed=r.seed, **kw
        )[0]
        for r in requests
    ]


def _latents(pipe, videos_per_call, **kw):
    """The normalised latent tokens each sampling call gives, through the pipeline's packing
    (records what `_sample` returns)."""
    got = []
    real = pipe._sample

    def record(*a):
        out = real(*a)
        got.append(out)
        return out

    pipe._sample = record
    try:
        videos = videos_per_call()
    finally:
        del pipe._sample
    return videos, got


@pytest.mark.parametrize(
    "diffusion",
    [
        # One time grid for every video (the fixed shift) ...
        dict(),
        # ... or one per video (the shift grows with its tokens), with per-segment rescale.
        dict(shift_mode="tokens", time_shift=2.0, shift_base_tokens=4, guidance_rescale=0.7),
    ],
    ids=["shared_grid", "token_shift"],
)
def test_three_sizes_in_one_row_equal_sampling_them_one_at_a_time(diffusion):
    pipe = _pipeline(**diffusion)
    requests = _requests()
    num_tokens = [len(packing.grid_positions(_tok(pipe, r))) for r in requests]
    assert num_tokens == [12, 4, 6]
    packed, packed_tok = _latents(pipe, lambda: pipe.generate_packed(requests, seq_len=22))
    assert len(packed_tok) == 1  # one sampler call ...
    rows = []
    real = sampling.sample_tokens

    def spy(*a, **kw):
        rows.append(np.asarray(kw["segment_ids"]))
        return real(*a, **kw)

    sampling.sample_tokens = spy
    try:
        pipe.generate_packed(requests, seq_len=22)
    finally:
        sampling.sample_tokens = real
    assert [r.shape for r in rows] == [(1, 22)]  # ... on one row holding all three videos
    assert sorted(np.unique(rows[0]).tolist()) == [1, 2, 3]
    alone, alone_tok = _latents(pipe, lambda: _alone(pipe, requests))
    for p, a in zip(packed_tok[0], [t[0] for t in alone_tok]):
        np.testing.assert_allclose(p, a, atol=1e-5)
    for p, a, (f, h, w) in zip(packed, alone, SIZES):
        assert p.shape == a.shape == (f, h, w, 3) and p.dtype == np.uint8
        assert np.abs(p.astype(int) - a.astype(int)).max() <= 1  # uint8 rounding of 1e-5
    # The packing changes nothing: a different packing of the same requests agrees too.
    spread = pipe.generate_packed(requests, seq_len=12, rows=2)
    for p, s in zip(packed, spread):
        assert np.abs(p.astype(int) - s.astype(int)).max() <= 1


def _tok(pipe, r):
    grid = pipeline_lib.geometry.latent_grid(
        pipe.config, pipeline_lib.generated_frames(pipe.config, r.num_frames), r.height, r.width
    )
    return pipeline_lib._token_grid(pipe.config, grid)


def test_packed_factorised_and_given_frames_equal_one_at_a_time():
    """The two passes of factorised sampling (first frames as images, then the videos from
    them) pack like any request; so do given start frames."""
    pipe = _pipeline()
    requests = _requests()
    packed, (images, videos) = _latents(
        pipe, lambda: pipe.generate_packed(requests, seq_len=22, factorized=True)
    )
    alone, alone_tok = _latents(pipe, lambda: _alone(pipe, requests, factorized=True))
    # Alone: image and video of request 0, request 1 (one frame: no image pass), image and
    # video of request 2. Packed: both images in one call, then the three videos in one.
    r0_image, r0, r1, r2_image, r2 = (t[0] for t in alone_tok)
    for p, a in zip(images + videos, [r0_image, r2_image, r0, r1, r2]):
        np.testing.assert_allclose(p, a, atol=1e-5)
    for p, a in zip(packed, alone):
        assert np.abs(p.astype(int) - a.astype(int)).max() <= 1

    image = packed[0][:1]
    given = [dataclasses.replace(requests[0], start_frames=image)] + requests[1:]
    got = pipe.generate_packed(given, seq_len=22)
    want = _alone(pipe, given[:1], start_frames=image) + _alone(pipe, given[1:])
    for p, a in zip(got, want):
        assert np.abs(p.astype(int) - a.astype(int)).max() <= 1


def test_generate_packed_rejects_bad_requests():
    pipe = _pipeline()
    with pytest.raises(ValueError, match="no requests"):
        pipe.generate_packed([])
    with pytest.raises(ValueError, match="non-empty string"):
        pipe.generate_packed([pipeline_lib.Request(" ", 5, 16, 16)])
    with pytest.raises(ValueError, match="exceeds seq_len 8"):
        pipe.generate_packed(_requests(), seq_len=8)


def test_segment_values_and_per_segment_guidance_rescale():
    seg = jnp.asarray([[1, 1, 2, 2, 2, 0]])
    t = jnp.asarray([[0.5, 0.5, 0.25, 0.25, 0.25, 0.9]])
    np.testing.assert_allclose(sampling.segment_values(t, seg, 3), [[0.5, 0.25, 0.0]])
    # Rescaled CFG of a packed row = rescaled CFG of each video alone.
    rng = np.random.default_rng(0)
    cond, uncond = (jnp.asarray(rng.normal(size=(1, 6, 3)), jnp.float32) for _ in range(2))
    packed = guidance.guide(cond, uncond, 0.5, 3.0, rescale=0.7, segment_ids=seg, num_segments=3)
    for lo, hi in ((0, 2), (2, 5)):
        alone = guidance.guide(cond[:, lo:hi], uncond[:, lo:hi], 0.5, 3.0, rescale=0.7)
        np.testing.assert_allclose(packed[:, lo:hi], alone, rtol=1e-5, atol=1e-6)

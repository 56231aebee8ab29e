"""Chunked (causal cache) and tiled VAE inference, reconstruction metrics, weights loader.

Small models and frames keep compiles (the cost here) few: one module-scoped model, the
streaming steps jitted per chunk shape and reused across video lengths.
"""

import functools

import einops

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.evaluation import reconstruction as rec
from sora_jax.models import vae_inference as vi
from sora_jax.models import vae_weights
from sora_jax.models.vae import CausalVAE

# r_t = 4, r_s = 4, shortcuts; causal convs with caches in conv_in/out, the mid residual
# blocks and every temporal down/upsampler. No per-level residual blocks: half the compile time.
TINY = dict(
    base_channels=8,
    channel_mults=(1, 2, 2),
    num_res_blocks=0,
    latent_channels=4,
    temporal_downsample=(True, True),
    norm_groups=4,
)
WITH_RES = {**TINY, "num_res_blocks": 1}  # + residual blocks with 1x1x1 skip convs
H, W = 8, 12  # non-square: 2x3 latents


def _video(key, t, h=H, w=W, b=1):
    return jax.random.uniform(jax.random.key(key), (b, t, h, w, 3), minval=-1.0, maxval=1.0)


def _init(model):
    init = jax.jit(lambda k: model.init({"params": k}, _video(0, 1), sample_posterior=False))
    return init(jax.random.key(0))["params"]


@pytest.fixture(scope="module")
def model_params():
    model = CausalVAE(**WITH_RES)
    return model, _init(model)


@functools.lru_cache(maxsize=None)
def _full(mid_attention: bool, spatial_downsample: tuple[bool, ...] = ()):
    """(model, params, x f32[2 21 8 12 3], its mean, logvar, decode(mean)) all at once. With
    ``mid_attention`` the attention output projections are made non-zero (they start at zero:
    an identity block would make the comparisons vacuous)."""
    model = CausalVAE(**TINY, mid_attention=mid_attention, spatial_downsample=spatial_downsample)
    params = _init(model)
    if mid_attention:
        params = jax.tree_util.tree_map_with_path(
            lambda path, v: (
                0.3 * jax.random.normal(jax.random.key(len(path)), v.shape)
                if any(getattr(k, "key", None) == "to_out" for k in path)
                else v
            ),
            params,
        )
    x = _video(1, 21, b=2)
    full = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    mean, logvar = full(params, x)
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
    return model, params, x, mean, logvar, dec(params, mean)


@pytest.fixture(scope="module")
def vae():
    return _full(False)


def _loop(model, params, method, x, first, size):
    """Chunk by chunk in Python (jitted per chunk shape): first chunk ``first`` frames, then
    chunks of ``size`` (the last may be shorter: a causal chunk needs no padding)."""
    step = _step(model, method)
    outs, cache, s = [], None, 0
    while s < x.shape[1]:
        n = first if cache is None else size
        *out, cache = step(params, x[:, s : s + n], cache)
        outs.append(out)
        s += n
    return [jnp.concatenate(o, axis=1) for o in zip(*outs)]


@functools.lru_cache(maxsize=None)
def _step(model, method):
    return jax.jit(lambda p, x, c: model.apply({"params": p}, x, c, method=method))


@pytest.mark.parametrize(
    "t, mid_attention, spatial",
    [(1, False, ()), (5, False, ()), (9, False, ()), (17, False, ()), (21, False, ())]
    + [(21, True, ()), (21, False, (True, False))],
)
def test_streamed_encode_decode_equal_full_for_every_length_and_chunk(t, mid_attention, spatial):
    """Every length T = 1 + 4k and chunks of 1 + 4m first / 4m later frames (several m): the
    chunk-by-chunk result equals the whole-video one (prefixes: the VAE is causal). T = 1 is
    the image path: a 1-frame first chunk gives the video's latent / decoded frame 0. The
    per-frame mid-block attention and a level that halves time only keep this exact."""
    model, params, x, mean, logvar, recon = _full(mid_attention, spatial)
    t_lat = 1 + (t - 1) // 4
    for first, size in [(1, 4), (5, 8), (1, 12)]:
        m, lv = _loop(model, params, "encode_chunk", x[:, :t], first, size)
        np.testing.assert_allclose(m, mean[:, :t_lat], atol=1e-5, rtol=0)
        np.testing.assert_allclose(lv, logvar[:, :t_lat], atol=1e-5, rtol=0)
        (y,) = _loop(
            model, params, "decode_chunk", mean[:, :t_lat], 1 + (first - 1) // 4, size // 4
        )
        np.testing.assert_allclose(y, recon[:, :t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("t, chunk, mid_attention", [(21, 2, False), (17, 3, True)])
def test_scan_chunked_encode_decode_equal_full(t, chunk, mid_attention):
    """The lax.scan driver (one program; the latent frames after the first in chunks, the
    last end-padded) == the whole-video path, with and without mid-block attention."""
    model, params, x, mean, logvar, recon = _full(mid_attention)
    t_lat = 1 + (t - 1) // 4
    m, lv = jax.jit(lambda p, x: vi.chunked_encode(model, p, x, chunk))(params, x[:, :t])
    np.testing.assert_allclose(m, mean[:, :t_lat], atol=1e-5, rtol=0)
    np.testing.assert_allclose(lv, logvar[:, :t_lat], atol=1e-5, rtol=0)
    y = jax.jit(lambda p, z: vi.chunked_decode(model, p, z, chunk))(params, mean[:, :t_lat])
    assert y.shape == recon[:, :t].shape
    np.testing.assert_allclose(y, recon[:, :t], atol=1e-5, rtol=0)


def test_chunk_geometry_errors_are_clear(vae):
    model, params, x, mean, _, _ = vae
    step = _step(model, "encode_chunk")
    with pytest.raises(ValueError, match="first chunk .* 1 \\+ 4\\*k frames, got 4"):
        step(params, x[:, :4], None)
    _, _, cache = step(params, x[:, :1], None)
    with pytest.raises(ValueError, match="later chunk needs 4\\*k frames, k >= 1, got 5"):
        step(params, x[:, 1:6], cache)
    with pytest.raises(ValueError, match="width=10"):
        step(params, _video(0, 1, 8, 10), None)
    with pytest.raises(ValueError, match="chunk_latent_frames=0"):
        vi.InferenceConfig(chunk_latent_frames=0)
    with pytest.raises(ValueError, match="tile_latent_overlap=5"):
        vi.InferenceConfig(tile_latent_size=8, tile_latent_overlap=5)


def test_reconstruct_pads_sizes_the_vae_cannot_take(vae):
    """t=6, 10x13: padded to 9x12x16 (repeating the last frame/row/column), cropped back; the
    core encode raises instead (tests/test_vae.py)."""
    model, params, *_ = vae
    assert vi.padded_size(model, 6, 10, 13) == (9, 12, 16)
    x = _video(3, 6, 10, 13)
    y = jax.jit(lambda p, x: vi.reconstruct(model, p, x, vi.InferenceConfig()))(params, x)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="every dimension"):
        vi.padded_size(model, 0, 8, 8)


# ---- spatial tiles ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, tile, overlap, scale", [(10, 4, 1, 1), (16, 8, 4, 4), (7, 8, 2, 2)]
)
def test_blend_weights_sum_to_one_and_ramp(length, tile, overlap, scale):
    starts = vi.tile_starts(length, tile, overlap)
    weights = vi.blend_weights(length, tile, overlap, scale)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # overlap >= asked
    total = np.zeros(length * scale)
    for s, w in zip(starts, weights):
        total[s * scale : (s + size) * scale] += w
        assert (w >= 0).all() and (w <= 1).all()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    if len(starts) > 1:  # a ramp, not a step: small increments inside the overlap
        assert np.abs(np.diff(weights[1])).max() <= 1.0 / (overlap * scale) + 1e-6


def test_tiled_blend_is_exact_for_per_pixel_maps():
    """Tiling machinery alone: maps without spatial context (pooling down, copies up) come out
    exactly as untiled, so every error of the VAE's tiling is its receptive field's."""
    x = jax.random.normal(jax.random.key(0), (1, 2, 32, 48, 3))
    down = lambda v: einops.reduce(v, "b t (h p) (w q) c -> b t h w c", "mean", p=4, q=4)  # noqa: E731
    up = lambda v: jnp.repeat(jnp.repeat(v, 4, axis=2), 4, axis=3)  # noqa: E731
    np.testing.assert_allclose(vi.tiled(down, x, 4, 2, 4, 1), down(x), atol=1e-6)
    np.testing.assert_allclose(vi.tiled(up, down(x), 4, 2, 1, 4), up(down(x)), atol=1e-6)


def test_tiled_encode_and_decode_close_to_untiled():
    """64x64 frame (16x16 latents) in 12-latent tiles overlapping by 6 (2x2 tiles).

    Measured on this random-init tiny VAE (its receptive field spans most of a tile): mean
    |tiled - untiled| / std(untiled) = 4.4 % for encode, 3.6 % for decode (10-14 % with
    8-latent tiles overlapping by 2, 27-32 % with 4/2; 3.9 % / 4.0 % with a residual block
    per level). Asserted: < 6 %.
    """
    model = CausalVAE(**TINY)
    x = _video(5, 1, 64, 64)
    init = jax.jit(lambda k: model.init({"params": k}, x, sample_posterior=False))
    params = init(jax.random.key(0))["params"]
    cfg = vi.InferenceConfig(tiled=True, tile_latent_size=12, tile_latent_overlap=6)

    @jax.jit
    def run(p, x):
        full_m, _ = model.apply({"params": p}, x, method=model.encode)
        tiled_m, _ = vi.encode(model, p, x, cfg)
        full_y = model.apply({"params": p}, full_m, method=model.decode)
        tiled_y = vi.decode(model, p, full_m, cfg)
        return full_m, tiled_m, full_y, tiled_y

    full_m, tiled_m, full_y, tiled_y = run(params, x)
    assert tiled_m.shape == full_m.shape == (1, 1, 16, 16, 4)
    assert tiled_y.shape == full_y.shape == x.shape
    rel_m = float(jnp.abs(tiled_m - full_m).mean() / full_m.std())
    rel_y = float(jnp.abs(tiled_y - full_y).mean() / full_y.std())
    assert rel_m < 0.06 and rel_y < 0.06, (rel_m, rel_y)


# ---- metrics ------------------------------------------------------------------------------


def test_psnr_known_value():
    x = jnp.full((2, 4, 4, 3), 0.5)
    y = x + 0.1 * jnp.where(jnp.arange(4)[:, None, None] % 2 == 0, 1.0, -1.0)  # MSE 0.01
    np.testing.assert_allclose(rec.mse(x, y), [0.01, 0.01], rtol=1e-5)
    np.testing.assert_allclose(rec.psnr(x, y), [20.0, 20.0], rtol=1e-5)
    np.testing.assert_allclose(rec.psnr(2 * x, 2 * y, data_range=2.0), [20.0, 20.0], rtol=1e-5)


def test_ssim_identity_constants_and_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 24, 20, 3)).astype(np.float32)
    np.testing.assert_allclose(rec.ssim(x, x), 1.0, atol=1e-5)
    # Constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly.
    a, b = 0.3, 0.6
    c1 = (0.01) ** 2
    s = rec.ssim(np.full((16, 16, 1), a), np.full((16, 16, 1), b))
    # (float32 E[x^2] - mu^2 leaves ~1e-7 of variance next to C2 ~1e-3: rtol 1e-4)
    np.testing.assert_allclose(s, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-4)
    noisy = [
        float(rec.ssim(x, np.clip(x + sd * rng.normal(size=x.shape), 0, 1)).mean())
        for sd in (0.02, 0.1, 0.3)
    ]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2] > 0.0, noisy
    np.testing.assert_allclose(rec.gaussian_window().sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        rec.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="same shape"):
        rec.ssim(np.zeros((16, 16, 3)), np.zeros((16, 17, 3)))


def test_ssim_matches_a_direct_loop():
    """Against a plain per-pixel double loop over the 2-D Gaussian window (one channel)."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(2, 13, 14, 1))
    g = rec.gaussian_window(11, 1.5).astype(np.float64)
    win = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(13 - 10):
        for j in range(14 - 10):
            px, py = x[i : i + 11, j : j + 11, 0], y[i : i + 11, j : j + 11, 0]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * px * px).sum() - mx**2
            vy = (win * py * py).sum() - my**2
            cxy = (win * px * py).sum() - mx * my
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    np.testing.assert_allclose(rec.ssim(x, y), np.mean(vals), rtol=1e-4)


# ---- pretrained weights -------------------------------------------------------------------


def test_weights_layout_names_and_shapes(model_params):
    model, params = model_params
    tensors = vae_weights.to_external(params, model)
    assert tensors["encoder.conv_in.conv.weight"].shape == (8, 3, 3, 3, 3)  # (out in kt kh kw)
    assert tensors["encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight"].shape == (
        16,
        8,
        1,
        1,
        1,
    )
    assert tensors["encoder.conv_norm_out.weight"].shape == (16,)
    # decoder levels are numbered from the coarsest: flax up2_* is up_blocks.0
    np.testing.assert_array_equal(
        tensors["decoder.up_blocks.0.upsamplers.0.conv.conv.weight"],
        np.transpose(params["decoder"]["up2_sample"]["conv"]["kernel"], (4, 3, 0, 1, 2)),
    )
    assert "decoder.mid_block.resnets.0.norm2.bias" in tensors
    assert len(tensors) == len(jax.tree.leaves(params))


def test_weights_load_synthetic_safetensors_and_forward(tmp_path, model_params):
    """A file written with the safetensors package from random PyTorch-layout tensors (names
    and shapes from the documented layout) loads, runs, and round-trips; all-zero weights
    give the exact parameter-free shortcut path (a known forward result)."""
    import safetensors.numpy

    model, params = model_params
    x = _video(1, 5, b=2)
    rng = np.random.default_rng(0)
    shapes = {k: v.shape for k, v in vae_weights.to_external(params, model).items()}
    tensors = {k: (0.1 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
    path = str(tmp_path / "vae.safetensors")
    safetensors.numpy.save_file(tensors, path)
    loaded = vae_weights.load(path, model)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    np.testing.assert_array_equal(
        loaded["encoder"]["down0_res0"]["conv1"]["kernel"],
        np.transpose(tensors["encoder.down_blocks.0.resnets.0.conv1.conv.weight"], (2, 3, 4, 1, 0)),
    )
    np.testing.assert_array_equal(
        loaded["decoder"]["norm_out"]["scale"], tensors["decoder.conv_norm_out.weight"]
    )
    vae_weights.save(str(tmp_path / "again.safetensors"), loaded, model)
    again = safetensors.numpy.load_file(str(tmp_path / "again.safetensors"))
    assert again.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(again[k], tensors[k])
    m, _, _ = _step(model, "encode_chunk")(loaded, x[:, :5], None)
    y, _ = _step(model, "decode_chunk")(loaded, m, None)
    assert y.shape == x[:, :5].shape and bool(jnp.all(jnp.isfinite(y)))

    # zeros: a grey video constant on 4x4 pixel blocks passes the shortcut path exactly
    zeros = {k: np.zeros_like(v) for k, v in tensors.items()}
    zp = vae_weights.from_external(zeros, model)
    block = jax.random.uniform(jax.random.key(2), (2, 1, 2, 3, 1), minval=-1)
    img = jnp.repeat(jnp.repeat(jnp.repeat(block, 4, axis=2), 4, axis=3), 3, axis=4)
    m, _, _ = _step(model, "encode_chunk")(zp, img, None)
    np.testing.assert_allclose(m, jnp.repeat(block, 4, axis=-1), atol=1e-6)


def test_weights_map_mid_attention_as_diffusers_attentions(tmp_path):
    """Mid-block attention maps to ``mid_block.attentions.0`` (group_norm, to_q/k/v, to_out.0;
    linear weights transposed to PyTorch's (out, in)); a file in that layout loads and runs,
    a wrongly shaped projection is named."""
    model = CausalVAE(**TINY, mid_attention=True)
    params = _init(model)
    tensors = vae_weights.to_external(params, model)
    rng = np.random.default_rng(1)
    tensors = {k: (0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in tensors.items()}
    for part in ("encoder", "decoder"):
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            assert tensors[f"{part}.mid_block.attentions.0.{n}.weight"].shape == (16, 16)
        assert tensors[f"{part}.mid_block.attentions.0.group_norm.weight"].shape == (16,)
    path = str(tmp_path / "attn.safetensors")
    vae_weights.save(path, vae_weights.from_external(tensors, model), model)
    loaded = vae_weights.load(path, model)
    np.testing.assert_array_equal(
        loaded["decoder"]["mid_attn"]["to_k"]["kernel"],
        tensors["decoder.mid_block.attentions.0.to_k.weight"].T,
    )
    m, _ = model.apply({"params": loaded}, _video(3, 5), method=model.encode)
    assert m.shape == (1, 2, 2, 3, 4) and bool(jnp.all(jnp.isfinite(m)))
    bad = {**tensors, "encoder.mid_block.attentions.0.to_v.weight": np.zeros((16, 8), np.float32)}
    with pytest.raises(ValueError, match=r"to_v.weight' has shape \(16, 8\), expected \(16, 16\)"):
        vae_weights.from_external(bad, model)


def test_weights_mismatch_errors_name_the_key(model_params):
    model, params = model_params
    tensors = vae_weights.to_external(params, model)
    bad = dict(tensors)
    bad["encoder.conv_in.conv.weight"] = np.zeros((8, 3, 3, 3, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"'encoder.conv_in.conv.weight' has shape \(8, 3, 3, 3, 4\), expected \(8, 3, 3, 3, 3\)",
    ):
        vae_weights.from_external(bad, model)
    missing = dict(tensors)
    del missing["decoder.up_blocks.1.resnets.0.norm1.weight"]
    with pytest.raises(
        ValueError, match="missing tensor 'decoder.up_blocks.1.resnets.0.norm1.weight'"
    ):
        vae_weights.from_external(missing, model)
    extra = {**tensors, "encoder.mid_block.attentions.0.to_q.weight": np.zeros((16, 16))}
    with pytest.raises(ValueError, match="unexpected tensors .*attentions"):
        vae_weights.from_external(extra, model)
    assert jax.tree.structure(
        vae_weights.from_external(extra, model, strict=False)
    ) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="not part of the CausalVAE layout"):
        vae_weights.external_name(("encoder", "attn", "kernel"), 3)


# ---- evaluator ----------------------------------------------------------------------------


def test_vae_eval_metrics_and_side_by_side_videos(tmp_path):
    from sora_jax.data import video_io
    from sora_jax.evaluation import vae_eval

    videos = vae_eval.held_out_videos(seed=10_000, n=2, frames=5, height=16, width=24)
    assert videos.shape == (2, 5, 16, 24, 3) and videos.dtype == np.uint8
    np.testing.assert_array_equal(videos, vae_eval.held_out_videos(10_000, 2, 5, 16, 24))
    assert not np.array_equal(videos, vae_eval.held_out_videos(0, 2, 5, 16, 24))
    x = videos.astype(np.float32) / 255.0
    noise = np.zeros_like(x)
    noise[:, 1:] = 0.05 * np.random.default_rng(0).choice([-1.0, 1.0], x[:, 1:].shape)
    m = vae_eval.metrics(videos, x + noise)  # frame 0 exact, the rest MSE 0.0025: 26.02 dB
    assert m["psnr_first_frame"] == float("inf") and m["ssim_first_frame"] == pytest.approx(1.0)
    assert m["psnr_rest"] == pytest.approx(10 * np.log10(1 / 0.0025), rel=1e-4)
    assert len(m["psnr_per_frame"]) == 5 and m["ssim_rest"] < 1.0
    paths = vae_eval.write_side_by_side(str(tmp_path), videos, x, n=1)
    assert [p[-3:] for p in paths] == ["mp4", "gif"]
    assert video_io.read_video(paths[1]).shape == (5, 16, 48, 3)  # input | reconstruction

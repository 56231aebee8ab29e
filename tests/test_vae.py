"""Tests for the causal video VAE (tiny sizes: base_channels 8, 16x16 frames)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sora_jax.models.vae import (
    CausalConv3d,
    CausalVAE,
    FrameAttention,
    PerFrameGroupNorm,
    channel_shortcut,
    kl_divergence,
)

TINY = dict(
    base_channels=8,
    channel_mults=(1, 2, 2),
    num_res_blocks=1,
    latent_channels=4,
    temporal_downsample=(True, True),
    norm_groups=4,
)


def _video(key, b=1, t=9, h=16, w=16):
    return jax.random.uniform(jax.random.key(key), (b, t, h, w, 3), minval=-1.0, maxval=1.0)


class _Jitted:
    """The model's methods under jit: one compile per shape beats op-by-op eager dispatch."""

    def __init__(self, model):
        self.model = model
        self.encode = jax.jit(lambda p, x: model.apply(p, x, method=model.encode))
        self.decode = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))
        self.call = jax.jit(lambda p, x, rng: model.apply(p, x, rngs={"posterior": rng}))
        self.mode = jax.jit(lambda p, x: model.apply(p, x, sample_posterior=False))


@pytest.fixture(scope="module")
def vae_and_params():
    model = CausalVAE(**TINY)
    params = jax.jit(model.init)(
        {"params": jax.random.key(0), "posterior": jax.random.key(1)}, _video(0, t=1)
    )
    return _Jitted(model), params


@pytest.fixture(scope="module")
def vae_attn_and_params():
    """TINY with mid-block attention whose output projections are random (they start at zero,
    which would make the blocks the identity and the causality checks vacuous)."""
    model = CausalVAE(**TINY, mid_attention=True)
    params = jax.jit(model.init)(
        {"params": jax.random.key(0), "posterior": jax.random.key(1)}, _video(0, t=1)
    )
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            jax.random.normal(jax.random.key(len(path)), v.shape) * 0.3
            if any(getattr(k, "key", None) == "to_out" for k in path)
            else v
        ),
        params,
    )
    return _Jitted(model), params


def test_compression_properties_on_unbound_module():
    assert CausalVAE(**TINY).spatial_compression == 4
    assert CausalVAE(**TINY).temporal_compression == 4
    m = CausalVAE(**{**TINY, "temporal_downsample": (False, True)})
    assert (m.spatial_compression, m.temporal_compression) == (4, 2)
    assert m.latent_shape(5, 8, 12) == (3, 2, 3, 4)
    assert CausalVAE(**TINY).latent_shape(1, 16, 16) == (1, 4, 4, 4)
    assert CausalVAE(**TINY).latent_shape(9, 32, 16) == (3, 8, 4, 4)
    m = CausalVAE(**{**TINY, "spatial_downsample": (True, False)})  # level 2 halves time only
    assert (m.spatial_compression, m.temporal_compression) == (2, 4)
    assert m.latent_shape(9, 32, 16) == (3, 16, 8, 4)


@pytest.mark.parametrize(
    "args, match",
    [
        ((8, 16, 16), "num_frames=8"),
        ((0, 16, 16), "num_frames=0"),
        ((9, 18, 16), "height=18"),
        ((9, 16, 6), "width=6"),
    ],
)
def test_latent_shape_rejects_bad_geometry(args, match):
    with pytest.raises(ValueError, match=match):
        CausalVAE(**TINY).latent_shape(*args)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="temporal_downsample"):
        CausalVAE(**{**TINY, "temporal_downsample": (True,)}).latent_shape(1, 16, 16)
    with pytest.raises(ValueError, match="norm_groups"):
        CausalVAE(**{**TINY, "norm_groups": 3}).latent_shape(1, 16, 16)
    with pytest.raises(ValueError, match="spatial_downsample has 1 entries"):
        CausalVAE(**{**TINY, "spatial_downsample": (True,)}).latent_shape(1, 16, 16)


def test_channel_shortcut_averages_or_repeats():
    x = jnp.arange(6.0).reshape(1, 6)  # channels 0..5
    # 6 -> 2: channel j averages channels j, j+2, j+4
    np.testing.assert_allclose(channel_shortcut(x, 2), [[2.0, 3.0]])
    # 6 -> 4: uneven groups (0, 4), (1, 5), (2,), (3,)
    np.testing.assert_allclose(channel_shortcut(x, 4), [[2.0, 3.0, 2.0, 3.0]])
    # 3 -> 7: channels repeated cyclically
    np.testing.assert_allclose(channel_shortcut(x[:, :3], 7), [[0, 1, 2, 0, 1, 2, 0]])


def _init_params(model, x):
    init = jax.jit(lambda k: model.init({"params": k}, x, sample_posterior=False))
    return init(jax.random.key(0))


def _zero_params(model, x):
    return jax.tree.map(jnp.zeros_like, _init_params(model, x))


@pytest.mark.parametrize(
    "patch, spatial", [(1, ()), (2, ()), (1, (True, False)), (1, (False, True))]
)
def test_zero_weights_leave_an_exact_shortcut_path(patch, spatial):
    """With every weight zero the VAE is its parameter-free shortcut path: block averages down,
    nearest copies up. A grey video constant on the causal blocks (frame 0 alone, then groups
    of r_t frames; r_s x r_s pixels) passes through it exactly; without shortcuts, nothing does.
    Levels that halve time only keep a finer grid (r_s 2)."""
    model = CausalVAE(**{**TINY, "patch_size": patch, "spatial_downsample": spatial})
    r_t, r_s = model.temporal_compression, model.spatial_compression
    t_lat, h_lat, w_lat = 3, 2, 3
    blocks = jax.random.uniform(jax.random.key(7), (1, t_lat, h_lat, w_lat, 1), minval=-1)
    x = jnp.concatenate([blocks[:, :1], jnp.repeat(blocks[:, 1:], r_t, axis=1)], axis=1)
    x = jnp.repeat(jnp.repeat(jnp.repeat(x, r_s, axis=2), r_s, axis=3), 3, axis=4)
    assert x.shape == (1, 1 + 2 * r_t, h_lat * r_s, w_lat * r_s, 3)
    recon, mean, _ = model.apply(_zero_params(model, x), x, sample_posterior=False)
    np.testing.assert_allclose(recon, x, atol=1e-6)
    np.testing.assert_allclose(mean, jnp.repeat(blocks, 4, axis=-1), atol=1e-6)
    plain = CausalVAE(
        **{**TINY, "patch_size": patch, "spatial_downsample": spatial, "shortcuts": False}
    )
    recon, _, _ = plain.apply(_zero_params(plain, x), x, sample_posterior=False)
    assert float(jnp.abs(recon).max()) == 0.0


def test_patch_stem_geometry_and_causality():
    model = CausalVAE(
        **{**TINY, "patch_size": 2, "channel_mults": (1, 2), "temporal_downsample": (True,)}
    )
    assert (model.temporal_compression, model.spatial_compression) == (2, 4)
    x = _video(8, t=5)
    params = _init_params(model, x)
    enc = jax.jit(lambda x: model.apply(params, x, method=model.encode)[0])
    dec = jax.jit(lambda z: model.apply(params, z, method=model.decode))
    m1 = enc(x)
    assert m1.shape == (1, 3, 4, 4, 4)
    assert dec(m1).shape == x.shape
    m2 = enc(x.at[:, 3:].set(0.0))  # latent j sees frames <= 2j: latents 0, 1 unchanged
    np.testing.assert_allclose(m1[:, :2], m2[:, :2], atol=1e-6, rtol=0)
    assert float(jnp.abs(m1[:, 2] - m2[:, 2]).max()) > 1e-3
    with pytest.raises(ValueError, match="patch_size"):
        CausalVAE(**{**TINY, "patch_size": 0}).latent_shape(1, 16, 16)
    with pytest.raises(ValueError, match="height=14"):
        model.latent_shape(5, 14, 16)  # 14 is not a multiple of 2 * 2


@pytest.mark.parametrize("t, t_lat", [(1, 1), (9, 3)])
def test_shapes_encode_decode_roundtrip(vae_and_params, t, t_lat):
    model, params = vae_and_params
    x = _video(1, b=2, t=t)
    mean, logvar = model.encode(params, x)
    assert (
        mean.shape
        == logvar.shape
        == (2, t_lat, 4, 4, 4)
        == (2, *model.model.latent_shape(t, 16, 16))
    )
    assert mean.dtype == jnp.float32
    assert float(logvar.min()) >= -30.0 and float(logvar.max()) <= 20.0
    recon = model.decode(params, mean)
    assert recon.shape == x.shape and recon.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(recon)))


def test_encode_rejects_bad_frame_count_and_size(vae_and_params):
    model, params = vae_and_params
    with pytest.raises(ValueError, match="num_frames=6"):
        model.encode(params, _video(0, t=6))
    with pytest.raises(ValueError, match="height=10"):
        model.encode(params, _video(0, t=1, h=10))
    with pytest.raises(ValueError, match="shape"):
        model.encode(params, jnp.zeros((1, 1, 16, 16, 4)))
    with pytest.raises(ValueError, match="shape"):
        model.decode(params, jnp.zeros((1, 1, 4, 4, 3)))


@pytest.mark.parametrize("which", ["vae_and_params", "vae_attn_and_params"])
def test_encoder_is_causal(request, which):
    model, params = request.getfixturevalue(which)
    x = _video(2, t=9)
    x2 = x.at[:, 5:].set(_video(3, t=4))  # change frames >= 5
    m1, lv1 = model.encode(params, x)
    m2, lv2 = model.encode(params, x2)
    # latent j sees input frames <= 4j: latents 0 and 1 (frames <= 4) must not move
    np.testing.assert_allclose(m1[:, :2], m2[:, :2], atol=1e-6, rtol=0)
    np.testing.assert_allclose(lv1[:, :2], lv2[:, :2], atol=1e-6, rtol=0)
    assert float(jnp.abs(m1[:, 2] - m2[:, 2]).max()) > 1e-3


def test_image_shares_latent_space_with_first_frame(vae_and_params):
    model, params = vae_and_params
    x = _video(4, b=2, t=9)
    m_video, lv_video = model.encode(params, x)
    m_image, lv_image = model.encode(params, x[:, :1])
    np.testing.assert_allclose(m_image[:, 0], m_video[:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(lv_image[:, 0], lv_video[:, 0], atol=1e-5, rtol=0)
    # ... and decoding latent frame 0 alone gives the video decode's first frame
    d_video = model.decode(params, m_video)
    d_image = model.decode(params, m_video[:, :1])
    np.testing.assert_allclose(d_image[:, 0], d_video[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["vae_and_params", "vae_attn_and_params"])
def test_decoder_is_causal(request, which):
    model, params = request.getfixturevalue(which)
    z = jax.random.normal(jax.random.key(5), (1, 3, 4, 4, 4))
    z2 = z.at[:, 2].add(1.0)
    d1 = model.decode(params, z)
    d2 = model.decode(params, z2)
    assert d1.shape == (1, 9, 16, 16, 3)
    # decoded frame i sees latents <= ceil(i / 4): frames 0..4 ignore latent frame 2
    np.testing.assert_allclose(d1[:, :5], d2[:, :5], atol=1e-6, rtol=0)
    assert float(jnp.abs(d1[:, 5:] - d2[:, 5:]).max()) > 1e-3


def test_causal_conv_pads_past_only_with_first_frame():
    conv = CausalConv3d(2, kernel_size=(3, 1, 1))
    x = jax.random.normal(jax.random.key(6), (1, 4, 2, 2, 3))
    params = conv.init(jax.random.key(7), x)
    y = conv.apply(params, x)
    assert y.shape == (1, 4, 2, 2, 2)
    k, bias = params["params"]["kernel"], params["params"]["bias"]
    padded = jnp.concatenate([x[:, :1], x[:, :1], x], axis=1)  # replicate frame 0 twice
    expected = (
        sum(jnp.einsum("bthwc,cd->bthwd", padded[:, i : i + 4], k[i, 0, 0]) for i in range(3))
        + bias
    )
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_im2col_and_conv_paths_agree():
    x = jax.random.normal(jax.random.key(8), (2, 3, 6, 5, 3))
    small, big = CausalConv3d(5, im2col_max_inputs=10**6), CausalConv3d(5, im2col_max_inputs=0)
    params = small.init(jax.random.key(9), x)
    np.testing.assert_allclose(small.apply(params, x), big.apply(params, x), atol=1e-5)


def test_frame_attention_is_per_frame_global_in_space_and_matches_softmax():
    """Frames never mix; every position of a frame sees every other; the values are
    x + softmax(q k^T / sqrt(c)) v W_out + b_out; a fresh block is the identity."""
    attn = FrameAttention(norm_groups=2)
    x = jax.random.normal(jax.random.key(20), (2, 3, 3, 4, 6))
    fresh = attn.init(jax.random.key(21), x)
    np.testing.assert_array_equal(attn.apply(fresh, x), x)  # zero output projection
    p = jax.tree.map(
        lambda v: jax.random.normal(jax.random.key(v.size), v.shape) * 0.5, fresh["params"]
    )
    y = attn.apply({"params": p}, x)
    y2 = attn.apply({"params": p}, x.at[:, 1, 0, 0].add(3.0))  # one pixel of frame 1
    np.testing.assert_allclose(y[:, [0, 2]], y2[:, [0, 2]], atol=1e-6, rtol=0)
    assert float(jnp.abs(y[:, 1] - y2[:, 1]).min()) > 0  # every position of frame 1 moved
    norm = PerFrameGroupNorm(2).apply({"params": p["norm"]}, x)
    q, k, v = (norm @ p[n]["kernel"] + p[n]["bias"] for n in ("to_q", "to_k", "to_v"))
    q, k, v = (np.asarray(a).reshape(2, 3, 12, 6) for a in (q, k, v))
    logits = np.einsum("btqc,btkc->btqk", q, k) / np.sqrt(6.0)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    o = np.einsum("btqk,btkc->btqc", w / w.sum(-1, keepdims=True), v)
    expected = np.asarray(x).reshape(2, 3, 12, 6) + o @ p["to_out"]["kernel"] + p["to_out"]["bias"]
    np.testing.assert_allclose(np.asarray(y).reshape(2, 3, 12, 6), expected, atol=1e-4)
    with pytest.raises(ValueError, match="no cache"):
        attn.apply({"params": p}, x, jnp.zeros(1), stream=True)


def test_group_norm_is_per_frame():
    norm = PerFrameGroupNorm(num_groups=2)
    x = jax.random.normal(jax.random.key(10), (2, 5, 4, 4, 6))
    params = norm.init(jax.random.key(0), x)
    y = norm.apply(params, x)
    y2 = norm.apply(params, x.at[:, 3].multiply(7.0).at[:, 3].add(3.0))
    np.testing.assert_allclose(y[:, :3], y2[:, :3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(y[:, 4], y2[:, 4], atol=1e-6, rtol=0)
    # each (example, frame, group) is normalised: zero mean, unit variance
    groups = np.asarray(y).reshape(2, 5, 4, 4, 2, 3)
    np.testing.assert_allclose(groups.mean(axis=(2, 3, 5)), 0.0, atol=1e-5)
    np.testing.assert_allclose(groups.var(axis=(2, 3, 5)), 1.0, atol=1e-3)


def test_posterior_sampling(vae_and_params):
    model, params = vae_and_params
    x = _video(11, t=5)
    r1, m1, _ = model.mode(params, x)
    r2, m2, _ = model.mode(params, x)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(r1, model.decode(params, m1), atol=1e-6)
    s1, _, _ = model.call(params, x, jax.random.key(1))
    s1b, _, _ = model.call(params, x, jax.random.key(1))
    s2, _, _ = model.call(params, x, jax.random.key(2))
    np.testing.assert_array_equal(s1, s1b)
    assert float(jnp.abs(s1 - s2).max()) > 1e-4
    assert float(jnp.abs(s1 - r1).max()) > 1e-4


def test_kl_divergence_values():
    zeros = jnp.zeros((3, 2, 4, 4, 4))
    np.testing.assert_allclose(kl_divergence(zeros, zeros), np.zeros(3), atol=1e-7)
    mean = jnp.ones((2, 1, 2, 2, 1)) * jnp.array([1.0, 2.0]).reshape(2, 1, 1, 1, 1)
    logvar = jnp.full_like(mean, np.log(2.0))
    # per element 0.5 * (mu^2 + 2 - 1 - ln 2), summed over 4 elements
    expected = 2.0 * (np.array([1.0, 4.0]) + 1.0 - np.log(2.0))
    np.testing.assert_allclose(kl_divergence(mean, logvar), expected, rtol=1e-5)


def test_bfloat16_compute_returns_float32(vae_and_params):
    _, params = vae_and_params
    model = _Jitted(CausalVAE(**TINY, dtype=jnp.bfloat16))
    recon, mean, _ = model.mode(params, _video(12, t=5))
    assert recon.dtype == mean.dtype == jnp.float32
    assert recon.shape == (1, 5, 16, 16, 3) and bool(jnp.all(jnp.isfinite(recon)))


def test_adam_steps_reduce_reconstruction_loss(vae_and_params):
    jitted, params = vae_and_params
    model = jitted.model
    # a smooth, learnable batch: moving colour gradients
    t, yy, xx = jnp.meshgrid(jnp.arange(5), jnp.arange(16), jnp.arange(16), indexing="ij")
    base = jnp.stack(
        [jnp.sin((xx + 2 * t) / 4.0), jnp.cos((yy - t) / 5.0), jnp.sin((xx + yy) / 6.0)], axis=-1
    )
    batch = jnp.stack([base, -base])
    opt = optax.adam(3e-3)

    def loss_fn(p, rng):
        recon, mean, logvar = model.apply(p, batch, rngs={"posterior": rng})
        return jnp.abs(recon - batch).mean() + 1e-6 * kl_divergence(mean, logvar).mean()

    @jax.jit
    def step(p, state, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, rng)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    p, losses = params, []
    for i in range(12):
        p, state, loss = step(p, state, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses

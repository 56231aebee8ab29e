"""Parity of sora_jax's Wan VAE with diffusers' PyTorch ``AutoencoderKLWan`` (tiny random models).

Every weight of the reference is perturbed (random, non-zero: zero-initialised parts would hide
mapping bugs), the model is written with ``save_pretrained`` and loaded with ``load_folder``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch", reason="parity tests need torch (test extra)")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers (test extra)")

from sora_jax.models import wan_vae  # noqa: E402
from sora_jax.models import wan_vae_weights as ww  # noqa: E402

TINY = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)
CONFIGS = {
    # Wan 2.1: 4x8x8
    "wan21": TINY,
    # Wan 2.1 with width changes, two res blocks, its own decoder width, non-trivial latent
    # statistics, temporal downsampling from level 0
    "wan21_wide": dict(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=6,
        dim_mult=[1, 2, 2],
        num_res_blocks=2,
        temperal_downsample=[True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0, 0.5, -0.6],
        latents_std=[1.5, 0.5, 2.0, 1.0, 0.8, 1.2],
        scale_factor_spatial=4,
    ),
    # Wan 2.2: residual blocks, 2x2 patchified input, 4x16x16
    "wan22": dict(
        TINY,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
    ),
    # Wan 2.2 with width changes and one temporal downsampler (2x8x8)
    "wan22_wide": dict(
        base_dim=8,
        z_dim=6,
        dim_mult=[1, 2, 2],
        num_res_blocks=2,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 6,
        latents_std=[1.0] * 6,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=2,
        scale_factor_spatial=8,
    ),
}
TOL = 1e-4  # float32 parity with diffusers
CHUNK_TOL = 1e-5  # chunked vs whole (same math, different summation grouping)


def _perturb(module, seed: int) -> None:
    """Every parameter random and non-zero: weights ~ N(0, 1/fan_in), norm gammas ~ 1 +- 0.3,
    biases ~ N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(1, p[0].numel()) ** 0.5)


def _cl(t) -> np.ndarray:
    """torch ``[b c t h w]`` -> numpy ``[b t h w c]``."""
    return t.permute(0, 2, 3, 4, 1).numpy()


@functools.cache
def _reference(name: str, folder: str):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**CONFIGS[name]).eval()
    _perturb(ref, seed=len(name))
    ref.save_pretrained(folder)
    return ref


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_vae")
    return {name: str(root / name) for name in CONFIGS}


def _loaded(name, folders):
    ref = _reference(name, folders[name])
    model, params = ww.load_folder(folders[name])
    return ref, model, params


def _jitted(model):
    enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=wan_vae.WanVAE.encode))
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=wan_vae.WanVAE.decode))
    return enc, dec


def _video(model, frames: int, tiles: int = 2, seed: int = 0) -> np.ndarray:
    s = model.config.spatial_compression * tiles
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (1, frames, s, s, model.config.video_channels)).astype(np.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_diffusers(name, folders):
    ref, model, params = _loaded(name, folders)
    r_t = model.config.temporal_compression
    x = _video(model, 1 + 2 * r_t)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).latent_dist
        recon = ref.decode(post.mean).sample
    enc, dec = _jitted(model)
    mean, logvar = enc(params, jnp.asarray(x))
    video = dec(params, mean)
    assert mean.shape == _cl(post.mean).shape == (1, 3, 2, 2, model.config.z_dim)
    assert video.shape == x.shape
    errs = {
        "mean": float(np.abs(np.asarray(mean) - _cl(post.mean)).max()),
        "logvar": float(np.abs(np.asarray(logvar) - _cl(post.logvar)).max()),
        "decode": float(np.abs(np.asarray(video) - _cl(recon)).max()),
    }
    print(f"{name}: max abs error vs diffusers {errs}")
    assert max(errs.values()) < TOL, errs
    # The comparison is not between near-constants.
    assert float(np.std(_cl(post.mean))) > 0.05 and float(np.std(_cl(recon))) > 0.05


@pytest.mark.parametrize("name", ["wan21_wide", "wan22"])
def test_chunked_equals_whole(name, folders):
    _, model, params = _loaded(name, folders)
    r_t = model.config.temporal_compression
    x = jnp.asarray(_video(model, 1 + 4 * r_t, seed=1))
    enc, dec = _jitted(model)
    mean, logvar = enc(params, x)
    video = dec(params, mean)
    for k in (1, 2):
        cm, cl = jax.jit(functools.partial(wan_vae.chunked_encode, model, chunk_latent_frames=k))(
            params, x
        )
        cv = jax.jit(functools.partial(wan_vae.chunked_decode, model, chunk_latent_frames=k))(
            params, mean
        )
        errs = [float(np.abs(a - b).max()) for a, b in ((cm, mean), (cl, logvar), (cv, video))]
        print(f"{name} chunk {k}: max abs chunked - whole (mean, logvar, decode) {errs}")
        assert max(errs) < CHUNK_TOL, errs
    assert float(jnp.std(video)) > 0.05


@pytest.mark.parametrize("name, axis", [("wan21", "h"), ("wan22", "w")])
def test_tiled_decode_matches_diffusers_tiling(name, axis, folders):
    ref, model, params = _loaded(name, folders)
    r_s = model.config.spatial_compression
    # Latent tiles of 4 every 2 along one axis (three tiles, the last cut at the border), one
    # tile across the other: two tile shapes, so two compiles.
    size, stride = (
        (4 * r_s, 4 * r_s),
        ((2 if axis == "h" else 4) * r_s, (2 if axis == "w" else 4) * r_s),
    )
    hw = (6, 4) if axis == "h" else (4, 6)
    z = np.random.default_rng(3).normal(size=(1, model.config.z_dim, 2, *hw)).astype(np.float32)
    ref.enable_tiling(*size, *stride)
    try:
        with torch.no_grad():
            expect = _cl(ref.decode(torch.from_numpy(z)).sample)
    finally:
        ref.disable_tiling()
    zj = jnp.asarray(_cl(torch.from_numpy(z)))
    tiled = wan_vae.tiled_decode(model, params, zj, size, stride)
    err = float(np.abs(np.asarray(tiled) - expect).max())
    _, dec = _jitted(model)
    whole = dec(params, zj)
    seam = np.abs(np.asarray(tiled) - np.asarray(whole))
    print(
        f"{name}: tiled ({axis}) vs diffusers tiled max {err:.2e}; tiled vs whole max "
        f"{seam.max():.2e} mean {seam.mean():.2e} (random weights)"
    )
    assert tiled.shape == whole.shape
    assert err < TOL
    assert seam.max() > 1e-3  # it did tile
    # A frame within one tile is decoded whole.
    one = jax.jit(
        functools.partial(
            wan_vae.tiled_decode, model, tile_sample_size=6 * r_s, tile_sample_stride=4 * r_s
        )
    )(params, zj)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(whole))


def test_latent_normalisation(folders):
    _, model, _ = _loaded("wan21_wide", folders)
    cfg = model.config
    mean = jax.random.normal(jax.random.key(0), (1, 2, 2, 2, cfg.z_dim))
    lat = wan_vae.normalize_latents(mean, cfg)
    expect = (np.asarray(mean) - np.asarray(cfg.latents_mean)) / np.asarray(cfg.latents_std)
    np.testing.assert_allclose(np.asarray(lat), expect, rtol=1e-6, atol=1e-6)
    back = wan_vae.denormalize_latents(lat, cfg)
    np.testing.assert_allclose(np.asarray(back), np.asarray(mean), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["wan21_wide", "wan22"])
def test_export_round_trip_bit_exact(name, folders, tmp_path):
    ref, model, params = _loaded(name, folders)
    original = safetensors.numpy.load_file(
        os.path.join(folders[name], "diffusion_pytorch_model.safetensors")
    )
    out = str(tmp_path / "export")
    ww.save_folder(out, model, params)
    written = safetensors.numpy.load_file(os.path.join(out, "diffusion_pytorch_model.safetensors"))
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and written[key].shape == value.shape, key
        assert written[key].tobytes() == value.tobytes(), key
    # diffusers reads the export (config included) and computes what the original does.
    again = diffusers.AutoencoderKLWan.from_pretrained(out).eval()
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(ref.config)
    z = torch.randn(1, model.config.z_dim, 2, 2, 2)
    with torch.no_grad():
        np.testing.assert_array_equal(again.decode(z).sample.numpy(), ref.decode(z).sample.numpy())


def test_bf16_and_sharded_folders(folders, tmp_path):
    ref = _reference("wan22", folders["wan22"])
    _, params32 = ww.load_folder(folders["wan22"])
    bf16_dir, sharded_dir = str(tmp_path / "bf16"), str(tmp_path / "sharded")
    ref.save_pretrained(sharded_dir, max_shard_size="20KB")
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(bf16_dir)
    assert os.path.exists(os.path.join(sharded_dir, ww.INDEX_NAME))
    with open(os.path.join(sharded_dir, ww.INDEX_NAME)) as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    # Sharded float32: the same params as the single file.
    model, sharded = ww.load_folder(sharded_dir)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # bfloat16: read without torch, upcast exactly, written back in bf16 bit for bit.
    model, params = ww.load_folder(bf16_dir)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    original = ww.read_state_dict(bf16_dir)
    back = ww.to_state_dict(params, model, dtype=ml_dtypes.bfloat16)
    for key in original.keys():
        assert back[key].dtype == original[key].dtype == ml_dtypes.bfloat16, key
        assert back[key].tobytes() == original[key].tobytes(), key
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params32))
    )
    assert 0 < diff < 0.05  # bf16 rounding of the float32 weights, nothing else


def _rewrite(folder, tmp_path, edit):
    tensors = safetensors.numpy.load_file(
        os.path.join(folder, "diffusion_pytorch_model.safetensors")
    )
    edit(tensors)
    out = tmp_path / "edited"
    out.mkdir(parents=True)
    safetensors.numpy.save_file(tensors, str(out / "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        (out / "config.json").write_text(f.read())
    return str(out)


def test_wrong_shape_missing_and_unexpected_keys_are_named(folders, tmp_path):
    _reference("wan21", folders["wan21"])
    key = "decoder.up_blocks.1.upsamplers.0.time_conv.weight"

    def wrong_shape(t):
        t[key] = t[key][:, :, :2]

    with pytest.raises(ValueError, match=f"'{key}' has shape \\(16, 8, 2, 1, 1\\), expected"):
        ww.load_folder(_rewrite(folders["wan21"], tmp_path / "a", wrong_shape))

    missing = "encoder.mid_block.attentions.0.norm.gamma"
    with pytest.raises(ValueError, match=f"missing tensor '{missing}'"):
        ww.load_folder(_rewrite(folders["wan21"], tmp_path / "b", lambda t: t.pop(missing)))

    def extra(t):
        t["encoder.extra.weight"] = np.zeros((2,), np.float32)

    with pytest.raises(ValueError, match="unexpected tensor 'encoder.extra.weight'"):
        ww.load_folder(_rewrite(folders["wan21"], tmp_path / "c", extra))


def test_bad_inputs_raise_one_clear_error(folders):
    _, model, params = _loaded("wan21", folders)
    with pytest.raises(ValueError, match="num_frames=8 must be 1 \\+ k \\* 4"):
        model.apply({"params": params}, jnp.zeros((1, 8, 16, 16, 3)), method=model.encode)
    with pytest.raises(ValueError, match="encode expects f32\\[b t h w 3\\]"):
        model.apply({"params": params}, jnp.zeros((1, 5, 16, 16, 4)), method=model.encode)
    with pytest.raises(ValueError, match="this chunk needs 4\\*k"):
        model.apply({"params": params}, jnp.zeros((1, 3, 16, 16, 3)), {}, method=model.encode_chunk)
    with pytest.raises(ValueError, match="unknown AutoencoderKLWan field 'base_dims'"):
        ww.config_from_diffusers({"base_dims": 8})
    with pytest.raises(ValueError, match="attn_scales"):
        ww.config_from_diffusers(dict(TINY, attn_scales=[1.0]))


def test_weight_table_documents_every_key(folders):
    ref, model, _ = _loaded("wan21_wide", folders)
    table = ww.weight_table(model)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {e.key: e.torch_shape for e in table} == shapes
    by_key = {e.key: e for e in table}
    # Flat 2.1 encoder numbering: level 0 = res 0, res 1, down 2; level 1 = res 3, res 4,
    # down 5; level 2 = res 6, res 7.
    e = by_key["encoder.down_blocks.5.time_conv.weight"]
    assert e.path == ("encoder", "down_blocks_5", "time_conv", "kernel") and e.kind == "conv3d"
    e = by_key["encoder.mid_block.attentions.0.norm.gamma"]
    assert e.flax_shape == (16,) and e.torch_shape == (16, 1, 1) and e.kind == "gamma"
    e = by_key["decoder.up_blocks.0.upsamplers.0.resample.1.weight"]
    assert e.path[-3:] == ("upsamplers_0", "resample", "kernel") and e.kind == "conv2d"


def test_init_and_logical_axes_cover_the_table(folders):
    _, model, params = _loaded("wan22", folders)
    table = {e.path for e in ww.weight_table(model)}
    # A 1-frame init creates every parameter (the temporal layers too), in the table's shapes.
    fresh = jax.jit(lambda k: wan_vae.init_params(model, k, frames=1))(jax.random.key(0))
    flat = flax.traverse_util.flatten_dict(fresh)
    assert set(flat) == table
    loaded = flax.traverse_util.flatten_dict(params)
    assert all(flat[k].shape == loaded[k].shape for k in table)
    # Every parameter names its axes (conv kernels: in / out channels; gammas: norm).
    specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(wan_vae.param_shapes(model)))
    assert set(specs) == table
    for path, spec in specs.items():
        assert spec is not None and len(spec) == len(flat[path].shape), path
        assert spec[-1] in ("conv_out", "norm"), (path, spec)


def test_bfloat16_compute_close_to_float32(folders):
    _, model, params = _loaded("wan22", folders)
    x = jnp.asarray(_video(model, 5, seed=2))
    bf16 = wan_vae.WanVAE(model.config, dtype=jnp.bfloat16)
    m32, _ = _jitted(model)[0](params, x)
    m16, _ = _jitted(bf16)[0](params, x)
    err = float(jnp.abs(m16 - m32).max())
    print(f"wan22 bf16 compute: encoder mean max abs vs f32 {err:.2e}")
    assert m16.dtype == jnp.float32 and 0 < err < 0.05


def test_sora_jax_does_not_import_torch_or_diffusers():
    code = (
        "import sys; import sora_jax.models.wan_vae_weights; "
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

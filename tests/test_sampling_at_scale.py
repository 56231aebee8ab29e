"""Sampling at scale: the sampler sharded over a mesh of the 8 simulated devices (CFG rows over
the batch axes, rows along their length over 'sequence') and the VAE decode with its tile rows
spread over the devices give the one-device results; the sharded decode's per-device memory
is a fraction of the video's."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_diffusion import random_pipeline
from test_train import micro_config

from sora_jax import config as config_lib
from sora_jax.inference import sampling
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.models import builders
from sora_jax.models import vae_inference as vi
from sora_jax.models.vae import CausalVAE
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PROMPTS = [
    "a large red circle moves right steadily on a grey background",
    "a small blue square moves up quickly on a black background",
]
# 9 frames of 8x16: 3x2x4 latents, 3x1x2 = 6 tokens per video on the micro config (4x4x4
# VAE, 1x2x2 patches): 'sequence' 4 pads the rows to 8 tokens, 'sequence' 2 splits them as
# they are.
KW = {"num_frames": 9, "height": 8, "width": 16, "seed": 3}


@functools.cache
def _pipe():
    """A pipeline of the micro config (4 heads: per tensor shard divisible by the sequence
    split) over random, perturbed params."""
    c = micro_config()
    c.dit.model.num_heads = 4
    c.diffusion.sample_steps = 3
    c.diffusion.guidance_scale = 3.0
    c.diffusion.guidance_rescale = 0.7  # per-row std: padding tokens must not count
    return random_pipeline(config_lib.validate(c))


def _sample(pipe, monkeypatch):
    """(uint8 videos, sampled latent tokens of the call, the sampler's inputs and the
    StableHLO text of its program)."""
    seen = {}
    real = sampling._sample_tokens

    def spy(*a, **kw):
        seen["inputs"] = kw
        seen["hlo"] = real.lower(*a, **kw).as_text()
        return real(*a, **kw)

    got = []
    real_sample = pipe._sample

    def record(*a):
        got.append(real_sample(*a))
        return got[-1]

    monkeypatch.setattr(sampling, "_sample_tokens", spy)
    monkeypatch.setattr(pipe, "_sample", record)
    videos = pipe.generate(PROMPTS, **KW)
    return videos, np.stack(got[0]), seen["inputs"], seen["hlo"]


@functools.cache
def _one_device():
    with pytest.MonkeyPatch.context() as mp:
        return _sample(_pipe(), mp)


@pytest.mark.parametrize(
    "spec, noise_spec",
    [
        # 2 rows over data 2 (4 model rows: conditional on one device, unconditional on the
        # other), 6 tokens padded to 8 over sequence 4.
        ("data:2,sequence:4", (("data", "fsdp"), "sequence")),
        # Params sharded over fsdp and tensor, rows over fsdp, 6 tokens over sequence 2.
        ("fsdp:2,tensor:2,sequence:2", (("data", "fsdp"), "sequence")),
    ],
)
def test_sampling_on_a_mesh_equals_one_device(spec, noise_spec, monkeypatch):
    """f32 latents within 1e-5 of the one-device samples (measured: < 1e-6); uint8 videos
    within 1 (the rounding of that difference)."""
    videos0, tokens0, inputs0, _ = _one_device()
    mesh = mesh_lib.inference_mesh(_pipe().config, spec)
    assert mesh.size == 8
    pipe = pipeline_lib.Pipeline(_pipe().model, mesh=mesh)
    videos, tokens, inputs, hlo = _sample(pipe, monkeypatch)
    # Sharded as the rules say: inputs over the batch and length axes, the DiT's attention
    # per device with the head/sequence all-to-all.
    assert inputs["layout"].mesh is mesh and inputs0.get("layout") is None
    assert partitioning.spec_of(inputs["noise"]) == noise_spec
    assert inputs["noise"].shape[1] % mesh.shape["sequence"] == 0
    assert "all_to_all" in hlo
    specs = {partitioning.spec_of(x) for x in jax.tree.leaves(pipe.model.params)}
    if mesh.shape["tensor"] > 1:
        assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
    assert tokens.shape == tokens0.shape == (2, 6, 16)
    np.testing.assert_allclose(tokens, tokens0, atol=1e-5)
    assert float(np.abs(tokens0).mean()) > 0.3  # not a trivial output
    assert videos.shape == videos0.shape == (2, 9, 8, 16, 3)
    assert np.abs(videos.astype(int) - videos0.astype(int)).max() <= 1


def test_sampling_pads_rows_the_batch_axes_do_not_divide(monkeypatch):
    """Two rows on data 8: padded to 4 (8 model rows), the samples unchanged."""
    _, tokens0, _, _ = _one_device()
    pipe = pipeline_lib.Pipeline(_pipe().model, mesh=mesh_lib.inference_mesh(None, "data:8"))
    _, tokens, inputs, _ = _sample(pipe, monkeypatch)
    assert inputs["noise"].shape[0] == 4 and inputs["text"].shape[0] == 8
    np.testing.assert_allclose(tokens, tokens0, atol=1e-5)


# ---- VAE decode with tile rows over devices ------------------------------------------------

TINY_VAE = {
    "base_channels": 8,
    "channel_mults": (1, 2, 2),
    "num_res_blocks": 0,
    "latent_channels": 4,
    "temporal_downsample": (True, True),
    "norm_groups": 4,
}
# 8 tile rows of 8 latent rows overlapping by 4 over a 36-row latent frame; 2 columns.
TILES = vi.InferenceConfig(
    chunked=True, chunk_latent_frames=1, tiled=True, tile_latent_size=8, tile_latent_overlap=4
)
SHARDED = vi.InferenceConfig(**{**TILES.__dict__, "shard_tiles": True})


@functools.cache
def _vae():
    model = CausalVAE(**TINY_VAE)
    x = jnp.zeros((1, 1, 8, 8, 3))
    init = jax.jit(lambda k: model.init({"params": k}, x, sample_posterior=False))
    params = init(jax.random.key(0))["params"]
    z = jax.random.normal(jax.random.key(1), (1, 3, 36, 12, 4))  # 9 frames of 144x48
    tiled = jax.jit(lambda p, z: vi.decode(model, p, z, TILES))(params, z)
    full = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))(params, z)
    return model, params, z, np.asarray(tiled), np.asarray(full)


@pytest.mark.parametrize("spec", ["data:2,sequence:4", "fsdp:2"])
def test_sharded_tiled_decode_equals_one_device_tiled_decode(spec):
    """Each device keeps its band of 144 / n rows; the video equals the one-device tiled
    decode within 1e-5 (f32; measured 1e-6) and the untiled one within the tiling's blending
    error (measured on this random tiny VAE with 8/4 tiles: mean |tiled - untiled| / std =
    0.073; asserted < 0.1)."""
    model, params, z, tiled, full = _vae()
    mesh = mesh_lib.inference_mesh(None, spec)
    out = jax.jit(lambda p, z: vi.decode(model, p, z, SHARDED, mesh))(params, z)
    n = mesh.size
    assert out.shape == full.shape == (1, 9, 144, 48, 3)
    assert out.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, P(None, None, mesh.axis_names)), out.ndim
    )
    assert {s.data.shape for s in out.addressable_shards} == {(1, 9, 144 // n, 48, 3)}
    np.testing.assert_allclose(np.asarray(out), tiled, atol=1e-5)
    rel = float(np.abs(tiled - full).mean() / full.std())
    assert 0 < rel < 0.1, rel


def test_sharded_decode_memory_per_device_is_a_fraction_of_the_video():
    """Compiled only (nothing allocated): the configs/tiny.py VAE (2x2 stem, base 16, mults
    (1, 2, 2), a residual block per level, 4x4x4) decoding 129 frames of 400x512 (f32, 317 MB) in
    chunks of 4 latent frames and 16/4 tiles (8 tile rows) over 8 devices. Per device temp +
    output must be below half the video and a quarter of the unsharded tiled decode's (measured:
    0.425 of the video: its band, the band and overlaps being summed, one tile's activations;
    0.15 of the unsharded decode, which holds every tile's output and the whole video)."""
    c = config_lib.load(os.path.join(CONFIGS, "tiny.py"))
    model = builders.build_vae(c)
    params = jax.eval_shape(builders.vae_init_fn(c, model), jax.random.key(0))
    z = jax.ShapeDtypeStruct((1, 33, 100, 128, c.vae.model.latent_channels), jnp.float32)
    cfg = vi.InferenceConfig(
        chunked=True, chunk_latent_frames=4, tiled=True, tile_latent_size=16, tile_latent_overlap=4
    )

    def mem(cfg, mesh):
        fn = jax.jit(lambda p, z: vi.decode(model, p, z, cfg, mesh))
        m = fn.lower(params, z).compile().memory_analysis()
        return m.temp_size_in_bytes + m.output_size_in_bytes, m.output_size_in_bytes

    video = 129 * 400 * 512 * 3 * 4
    one, one_out = mem(cfg, None)
    sharded = dataclasses.replace(cfg, shard_tiles=True)
    per_device, out = mem(sharded, mesh_lib.inference_mesh(None, "data:8"))
    assert one_out == video and out == video // 8
    assert per_device < video / 2 and per_device < one / 4, (per_device / video, per_device / one)


def _one_line_error(fn, *words):
    with pytest.raises(ValueError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_bad_meshes_and_tiles_give_one_clear_error():
    model, params, z, _, _ = _vae()

    def decode(cfg, spec):
        return vi.decode(model, params, z, cfg, mesh_lib.inference_mesh(None, spec))

    # 8 tile rows do not split over 3 devices; 7 rows (8/4 tiles over 32 rows) not over 8.
    _one_line_error(lambda: decode(SHARDED, "data:3"), "8 tile rows", "3 devices")
    _one_line_error(
        lambda: vi.sharded_decode(
            model, params, z[:, :, :32], SHARDED, mesh_lib.inference_mesh(None, "data:8")
        ),
        "7 tile rows",
    )
    _one_line_error(
        lambda: decode(dataclasses.replace(SHARDED, tiled=False), "data:2"), "tiled = True"
    )
    _one_line_error(lambda: mesh_lib.parse_sizes("data:2,pipeline:4"), "axes among")
    _one_line_error(lambda: mesh_lib.inference_mesh(None, "data:16"), "only 8 devices")
    c = micro_config()
    c.vae.inference.shard_tiles = True
    _one_line_error(lambda: config_lib.validate(c), "vae.inference.shard_tiles")
    c.vae.inference.shard_tiles, c.sample.mesh = False, "data=2"
    _one_line_error(lambda: config_lib.validate(c), "sample.mesh")
    # 4 heads cannot be split over sequence 8: the sequence-parallel attention says so.
    pipe = pipeline_lib.Pipeline(_pipe().model, mesh=mesh_lib.inference_mesh(None, "sequence:8"))
    _one_line_error(lambda: pipe.generate(PROMPTS[:1], **KW), "divisible by the sequence")

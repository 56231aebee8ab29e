"""Parity of sora_jax's Wan transformer with diffusers' PyTorch ``WanTransformer3DModel`` (tiny
random models), on one video per row and on packed rows.

Every weight of the reference is perturbed (random, non-zero: the modulation tables and norm
scales would otherwise hide mapping bugs), the model is written with ``save_pretrained`` and
loaded with ``load_transformer``.
"""

from __future__ import annotations

import copy
import dataclasses
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

from sora_jax.data import packing  # noqa: E402
from sora_jax.models import lora  # noqa: E402
from sora_jax.models import wan_transformer as wt  # noqa: E402
from sora_jax.models import wan_transformer_weights as ww  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402
from sora_jax.parallel import partitioning  # noqa: E402

CONFIGS = {
    # Wan 2.1 T2V form: affine cross-attention norm, head dim 12 (RoPE t/h/w = 4/4/4).
    "t2v": dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ),
    # Wan 2.2 TI2V-like: 16 latent channels, head dim 8 (RoPE t/h/w = 4/2/2), no cross-attention
    # norm, another eps.
    "ti2v": dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=False,
        eps=1e-5,
        rope_max_seq_len=32,
    ),
    # A patch over time too, out_channels != in_channels, three heads of 14 (RoPE 6/4/4).
    "patch_t": dict(
        patch_size=(2, 1, 2),
        num_attention_heads=3,
        attention_head_dim=14,
        in_channels=4,
        out_channels=6,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    ),
}
TOL = 1e-4  # float32 parity with diffusers
PACK_TOL = 1e-5  # packed row vs each video alone (same math, other summation grouping)


def _perturb(module, seed: int) -> None:
    """Every parameter random and non-zero: weights ~ N(0, 1/fan_in), norm scales ~ 1 +- 0.3,
    biases ~ N(0, 0.1^2), modulation tables ~ N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif "scale_shift_table" in name:
                p.copy_(0.3 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(1, p[0].numel()) ** 0.5)


@functools.cache
def _reference(name: str, folder: str):
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(**CONFIGS[name]).eval()
    _perturb(ref, seed=len(name))
    ref.save_pretrained(folder)
    return ref


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_transformer")
    return {name: str(root / name) for name in CONFIGS}


def _loaded(name, folders, **fields):
    ref = _reference(name, folders[name])
    model, params = ww.load_transformer(folders[name], **fields)
    return ref, model, params


@functools.cache
def _video_fn(model):
    return jax.jit(
        lambda p, x, t, text: model.apply({"params": p}, x, t, text, method=wt.WanTransformer.video)
    )


@functools.cache
def _packed_fn(model):
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a))


def _run_ref(ref, x, t, text) -> np.ndarray:
    """diffusers on channels-last ``x f32[b t h w c]`` -> ``f32[b t h w c_out]``."""
    with torch.no_grad():
        out = ref(
            torch.from_numpy(x).permute(0, 4, 1, 2, 3),
            torch.from_numpy(np.asarray(t, np.float32)),
            torch.from_numpy(text),
        ).sample
    return out.permute(0, 2, 3, 4, 1).numpy()


def _inputs(cfg, b, thw, text_len, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, *thw, cfg["in_channels"])).astype(np.float32)
    text = rng.normal(size=(b, text_len, cfg["text_dim"])).astype(np.float32)
    return x, text


def _err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


SIZES = {"t2v": (3, 4, 6), "ti2v": (2, 6, 4), "patch_t": (4, 3, 4)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_diffusers(name, folders):
    ref, model, params = _loaded(name, folders, attention_impl="xla")
    x, text = _inputs(CONFIGS[name], 1, SIZES[name], 7)
    t = np.array([637.0], np.float32)
    expect = _run_ref(ref, x, t, text)
    out = _video_fn(model)(params, x, t, text)
    err = _err(out, expect)
    print(f"{name}: max abs error vs diffusers {err:.2e} (output std {expect.std():.2f})")
    assert out.shape == expect.shape == (*x.shape[:-1], CONFIGS[name]["out_channels"])
    assert err < TOL
    assert float(np.std(expect)) > 0.05  # the comparison is not between near-constants


def test_batch_of_two(folders):
    ref, model, params = _loaded("t2v", folders, attention_impl="xla")
    x, text = _inputs(CONFIGS["t2v"], 2, (2, 4, 4), 5, seed=1)
    t = np.array([999.0, 20.0], np.float32)
    expect = _run_ref(ref, x, t, text)
    out = _video_fn(model)(params, x, t, text)
    err = _err(out, expect)
    print(f"t2v batch of 2: max abs error vs diffusers {err:.2e}")
    assert err < TOL
    assert _err(expect[0], expect[1]) > 0.1  # the rows differ


def _pack(videos, texts, times, cfg, length):
    """One packed row of ``videos`` (``f32[t h w c]`` each) and their captions: the inputs of
    ``WanTransformer.__call__`` (per-segment times) and each video's token range."""
    tokens, seg, pos, ranges = [], [], [], []
    for j, v in enumerate(videos):
        tk, p = packing.patchify(v, cfg["patch_size"])
        ranges.append((sum(len(a) for a in tokens), len(tk)))
        tokens.append(tk)
        pos.append(p)
        seg.append(np.full(len(tk), j + 1, np.int32))
    n = sum(len(a) for a in tokens)
    pad = ((0, length - n), (0, 0))
    tokens = np.pad(np.concatenate(tokens), pad)[None]
    pos = np.pad(np.concatenate(pos), pad)[None]
    seg = np.pad(np.concatenate(seg), pad[0])[None]
    lt = max(len(t) for t in texts)
    text = np.zeros((1, len(texts), lt, cfg["text_dim"]), np.float32)
    mask = np.zeros((1, len(texts), lt), bool)
    for j, tx in enumerate(texts):
        text[0, j, : len(tx)] = tx
        mask[0, j, : len(tx)] = True
    return (tokens, seg, pos, np.asarray(times, np.float32)[None], text, mask), ranges


def _packed_row(cfg, sizes, text_lens, times, seeds, length):
    """A row of random videos of ``sizes`` (their captions, times): ``(args, ranges, videos)``
    with ``videos`` the ``(x f32[1 t h w c], text f32[1 m text_dim])`` of each."""
    videos = [_inputs(cfg, 1, thw, n, seed) for thw, n, seed in zip(sizes, text_lens, seeds)]
    args, ranges = _pack([x[0] for x, _ in videos], [t[0] for _, t in videos], times, cfg, length)
    return args, ranges, videos


# Two videos of different t, h and w (18 and 12 tokens), captions of 7 and 4 tokens.
PACKED = dict(sizes=((3, 4, 6), (2, 6, 4)), text_lens=(7, 4), times=(700.0, 150.0), seeds=(2, 3))


@functools.cache
def _alone(folder):
    """Each video of ``PACKED`` run alone (one per row, dense attention), checked against
    diffusers: ``f32[t h w c]`` each."""
    ref, model, params = _loaded("t2v", {"t2v": folder}, attention_impl="xla")
    outs = []
    for thw, n, t, seed in zip(*PACKED.values()):
        x, text = _inputs(CONFIGS["t2v"], 1, thw, n, seed)
        alone = np.asarray(_video_fn(model)(params, x, np.array([t]), text))[0]
        err = _err(alone, _run_ref(ref, x, np.array([t]), text)[0])
        print(f"video {thw} alone vs diffusers {err:.2e}")
        assert err < TOL
        outs.append(alone)
    return outs


@pytest.mark.parametrize(
    "impl, blocks", [("xla", (512, 512)), ("blockwise", (8, 8)), ("splash", (8, 8))]
)
def test_packed_row_equals_each_video_alone(impl, blocks, folders):
    _, model, params = _loaded("t2v", folders, attention_impl=impl, attention_blocks=blocks)
    cfg = CONFIGS["t2v"]
    args, ranges, _ = _packed_row(cfg, **PACKED, length=40)
    out = np.asarray(_packed_fn(model)(params, *args))
    assert out.shape == (1, 40, 16)
    np.testing.assert_array_equal(out[0, 30:], 0.0)  # padding
    for (start, n), thw, alone in zip(ranges, PACKED["sizes"], _alone(folders["t2v"])):
        grid = tuple(s // p for s, p in zip(thw, cfg["patch_size"]))
        packed = packing.unpatchify(out[0, start : start + n], grid, cfg["patch_size"], 4)
        err = _err(packed, alone)
        print(f"{impl}: video {thw} packed vs alone {err:.2e}")
        assert err < PACK_TOL


def _first_frame_timesteps(t: float, grid) -> np.ndarray:
    """What diffusers' Wan 2.2 TI2V pipeline passes (``expand_timesteps``): the latent frame
    mask (0 on frame 0) at patch resolution, times ``t``, flattened t-major."""
    mask = np.ones(grid, np.float32)
    mask[0] = 0.0
    return (mask * t).reshape(1, -1)


def test_ti2v_per_token_timestep(folders):
    ref, model, params = _loaded("ti2v", folders, attention_impl="xla")
    cfg = CONFIGS["ti2v"]
    x, text = _inputs(cfg, 1, (3, 4, 6), 6, seed=4)
    grid = (3, 2, 3)
    ts = _first_frame_timesteps(812.0, grid)
    expect = _run_ref(ref, x, ts, text)
    # Per token, as diffusers takes it.
    out = _video_fn(model)(params, x, ts, text)
    # Compact: two time entries for the segment (its time, t = 0 for the given frame).
    tokens = jnp.asarray(packing.patchify(x[0], cfg["patch_size"])[0])[None]
    seg = jnp.ones((1, 18), jnp.int32)
    pos = jnp.asarray(packing.grid_positions(grid))[None]
    timestep, index = wt.token_times(jnp.array([[812.0]]), seg, pos[..., 0] == 0)
    compact = _packed_fn(model)(
        params, tokens, seg, pos, timestep, text[:, None], np.ones((1, 1, 6), bool), index
    )
    compact = packing.unpatchify(np.asarray(compact[0]), grid, cfg["patch_size"], 16)
    errs = (_err(out, expect), _err(compact, expect[0]))
    print(f"ti2v per-token time: max abs error vs diffusers (per token, entries) {errs}")
    assert max(errs) < TOL
    # The per-token time matters: the same call with one time differs.
    assert _err(_run_ref(ref, x, np.array([812.0]), text), expect) > 0.01


def test_ti2v_packed_row(folders):
    """Two TI2V videos in one row, each with its given first frame (per-token time as two
    entries per segment) and its own time, equal diffusers on each video alone."""
    ref, model, params = _loaded(
        "ti2v", folders, attention_impl="blockwise", attention_blocks=(8, 8)
    )
    cfg = CONFIGS["ti2v"]
    sizes, times, lens = ((3, 4, 6), (2, 6, 4)), (812.0, 95.0), (6, 3)
    args, ranges, videos = _packed_row(cfg, sizes, lens, times, (7, 8), length=32)
    tokens, seg, pos, t, text, mask = args
    timestep, index = wt.token_times(jnp.asarray(t), jnp.asarray(seg), pos[..., 0] == 0)
    out = np.asarray(_packed_fn(model)(params, tokens, seg, pos, timestep, text, mask, index))
    for (start, n), thw, (x, tx), tt in zip(ranges, sizes, videos, times):
        grid = tuple(s // p for s, p in zip(thw, cfg["patch_size"]))
        packed = packing.unpatchify(out[0, start : start + n], grid, cfg["patch_size"], 16)
        expect = _run_ref(ref, x, _first_frame_timesteps(tt, grid), tx)[0]
        err = _err(packed, expect)
        print(f"ti2v packed video {thw} vs diffusers alone {err:.2e}")
        assert err < TOL


def _one_block(model, params):
    """The model cut to its first block: every kind of parameter, half the compile time."""
    model = model.clone(config=dataclasses.replace(model.config, num_layers=1))
    return model, {k: v for k, v in params.items() if k != "blocks_1"}


def test_sharded_over_a_mesh_equals_unsharded(folders):
    """Under a data x fsdp x tensor mesh (8 simulated devices) with the default rules: params
    placed by their logical axes, attention per device in shard_map; same output."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    _, model, params = _loaded("t2v", folders, attention_impl="blockwise", attention_blocks=(8, 8))
    model, params = _one_block(model, params)
    cfg = CONFIGS["t2v"]
    rows = [
        _packed_row(cfg, **dict(PACKED, seeds=seeds), length=40)[0] for seeds in ((2, 3), (4, 5))
    ]
    args = [np.concatenate(parts) for parts in zip(*rows)]  # two rows
    plain = _packed_fn(model)(params, *args)
    mesh = mesh_lib.create_mesh(8, ici={"data": 2, "fsdp": 2, "tensor": 2})
    rules = partitioning.DEFAULT_RULES
    with partitioning.activate(mesh, rules):
        placed = jax.device_put(params, partitioning.shardings(wt.param_shapes(model), mesh, rules))
        fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
        split = fn(placed, *args)
    kernel = placed["blocks_0"]["attn1"]["to_q"]["kernel"]
    assert partitioning.spec_of(kernel) == ("fsdp", "tensor")
    err = _err(split, plain)
    print(f"t2v sharded (data 2, fsdp 2, tensor 2) vs one device: {err:.2e}")
    assert err < PACK_TOL


def test_sharded_and_bf16_folders(folders, tmp_path):
    ref = _reference("t2v", folders["t2v"])
    _, params32 = ww.load_transformer(folders["t2v"])
    sharded_dir, bf16_dir = str(tmp_path / "sharded"), str(tmp_path / "bf16")
    ref.save_pretrained(sharded_dir, max_shard_size="10KB")
    with open(os.path.join(sharded_dir, ww.INDEX_NAME)) as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    _, sharded = ww.load_transformer(sharded_dir)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # bfloat16: read without torch, upcast exactly, written back in bf16 bit for bit.
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(bf16_dir)
    model, params = ww.load_transformer(bf16_dir)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    original = ww.read_state_dict(bf16_dir)
    back = ww.to_state_dict(params, model.config, dtype=ml_dtypes.bfloat16)
    assert sorted(back) == sorted(original.keys())
    for key in original.keys():
        assert back[key].dtype == original[key].dtype == ml_dtypes.bfloat16, key
        assert back[key].tobytes() == original[key].tobytes(), key


@pytest.mark.parametrize("shard", [None, 12_000])
def test_export_round_trip_bit_exact(shard, folders, tmp_path):
    ref, model, params = _loaded("t2v", folders)
    original = safetensors.numpy.load_file(
        os.path.join(folders["t2v"], "diffusion_pytorch_model.safetensors")
    )
    out = str(tmp_path / "export")
    ww.export_transformer(params, model.config, out, max_shard_bytes=shard)
    assert os.path.exists(os.path.join(out, ww.INDEX_NAME)) == (shard is not None)
    written = ww.read_state_dict(out)
    assert sorted(written.keys()) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and written[key].shape == value.shape, key
        assert written[key].tobytes() == value.tobytes(), key
    # diffusers reads the export (config included) and computes what the original does.
    again = diffusers.WanTransformer3DModel.from_pretrained(out).eval()
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == json.loads(json.dumps(public(ref.config)))
    x, text = _inputs(CONFIGS["t2v"], 1, (2, 4, 4), 3, seed=5)
    t = np.array([333.0], np.float32)
    # (A model from from_pretrained differs from one built in memory by float rounding, ~1e-6
    # here: compare loaded with loaded for the bits.)
    first = diffusers.WanTransformer3DModel.from_pretrained(folders["t2v"]).eval()
    np.testing.assert_array_equal(_run_ref(again, x, t, text), _run_ref(first, x, t, text))
    assert _err(_run_ref(again, x, t, text), _run_ref(ref, x, t, text)) < TOL
    # ... and so does this port, loading it again.
    model2, params2 = ww.load_transformer(out)
    assert model2.config == model.config
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _rewrite(folder, tmp_path, edit):
    tensors = safetensors.numpy.load_file(
        os.path.join(folder, "diffusion_pytorch_model.safetensors")
    )
    edit(tensors)
    tmp_path.mkdir(parents=True)
    safetensors.numpy.save_file(tensors, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    return str(tmp_path)


def test_wrong_shape_missing_and_unexpected_keys_are_named(folders, tmp_path):
    _reference("t2v", folders["t2v"])
    key = "blocks.1.attn2.to_k.weight"

    def wrong_shape(t):
        t[key] = t[key][:, :20]

    with pytest.raises(ValueError, match=f"'{key}' has shape \\(24, 20\\), expected \\(24, 24\\)"):
        ww.load_transformer(_rewrite(folders["t2v"], tmp_path / "a", wrong_shape))
    missing = "blocks.0.ffn.net.0.proj.bias"
    with pytest.raises(ValueError, match=f"missing tensor '{missing}'"):
        ww.load_transformer(_rewrite(folders["t2v"], tmp_path / "b", lambda t: t.pop(missing)))

    def extra(t):
        t["blocks.0.attn2.add_k_proj.weight"] = np.zeros((2, 2), np.float32)

    with pytest.raises(ValueError, match="unexpected tensor 'blocks.0.attn2.add_k_proj.weight'"):
        ww.load_transformer(_rewrite(folders["t2v"], tmp_path / "c", extra))


def test_config_errors():
    with pytest.raises(ValueError, match="image_dim=1280 is an image-to-video"):
        wt.WanTransformerConfig.from_diffusers(dict(CONFIGS["t2v"], image_dim=1280))
    with pytest.raises(ValueError, match="unknown WanTransformer3DModel field 'num_layer'"):
        wt.WanTransformerConfig.from_diffusers({"num_layer": 2})
    with pytest.raises(ValueError, match="attention_head_dim 4"):
        wt.WanTransformerConfig(attention_head_dim=4)
    cfg = wt.WanTransformerConfig.from_diffusers(dict(CONFIGS["t2v"], out_channels=None))
    assert cfg.out_channels == cfg.in_channels == 4
    assert wt.WanTransformerConfig.from_diffusers(cfg.to_diffusers()) == cfg


def test_weight_table_init_and_logical_axes(folders):
    ref, model, params = _loaded("t2v", folders)
    table = ww.weight_table(model.config)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {e.key: e.torch_shape for e in table} == shapes
    by_key = {e.key: e for e in table}
    e = by_key["patch_embedding.weight"]
    assert e.path == ("patch_embedding", "kernel") and e.flax_shape == (16, 24)
    e = by_key["blocks.1.ffn.net.2.weight"]
    assert e.path == ("blocks_1", "ffn", "proj_out", "kernel") and e.kind == "linear"
    assert by_key["blocks.0.attn1.to_out.0.bias"].path[-2] == "to_out"
    assert by_key["scale_shift_table"].flax_shape == (2, 24)
    # init creates exactly the table's params, each naming its logical axes.
    boxed = wt.param_shapes(model)
    fresh = flax.traverse_util.flatten_dict(nn.unbox(boxed))
    assert {p: v.shape for p, v in fresh.items()} == {e.path: e.flax_shape for e in table}
    specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(boxed))
    assert set(specs) == set(fresh)
    for path, spec in specs.items():
        assert spec is not None and len(spec) == len(fresh[path].shape), path
        assert any(a is not None for a in spec), (path, spec)


def test_bfloat16_compute_close_to_float32(folders):
    _, model, params = _loaded("t2v", folders, attention_impl="xla")
    # The parity test's inputs (and compiled f32 program).
    x, text = _inputs(CONFIGS["t2v"], 1, SIZES["t2v"], 7)
    t = np.array([637.0], np.float32)
    bf16 = model.clone(dtype=jnp.bfloat16)
    o32 = _video_fn(model)(params, x, t, text)
    o16 = _video_fn(bf16)(params, x, t, text)
    err = _err(o16, o32)
    print(f"t2v bf16 compute: max abs vs f32 {err:.2e} (std {float(jnp.std(o32)):.2f})")
    assert o16.dtype == jnp.float32 and 0 < err < 0.1


def test_remat_recomputes_blocks_with_the_same_output_and_gradients(folders):
    _, model, params = _loaded("t2v", folders, attention_impl="xla")
    args, _, _ = _packed_row(CONFIGS["t2v"], **PACKED, length=40)
    remat = model.clone(remat=True)
    out = _packed_fn(model)(params, *args)
    np.testing.assert_array_equal(_packed_fn(remat)(params, *args), out)
    # The backward pass recomputes each block: one remat per block.
    weights = jax.random.normal(jax.random.PRNGKey(3), out.shape)
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, *args) * weights)  # noqa: E731
    count = lambda m: str(jax.make_jaxpr(jax.grad(loss(m)))(params)).count("remat2[")  # noqa: E731
    assert count(model) == 0 and count(remat) == CONFIGS["t2v"]["num_layers"]
    # The backward pass of either remat form (gradients tied per block; LoRA's plain remat)
    # is autodiff's, leaf by leaf.
    spec = lora.LoraSpec(rank=2, alpha=2.0, targets=r"attn1\.to_q|ffn\.proj_in")
    adapted = model.clone(lora=spec)
    # B = 0 at initialisation would zero A's gradient: a trained-looking B instead.
    adapted_params = jax.tree_util.tree_map_with_path(
        lambda k, v: v + 0.05 if k[-1].key == "lora_b" else v,
        wt.init_params(adapted, jax.random.PRNGKey(4)),
    )
    for m, p in ((model, params), (adapted, adapted_params)):
        g_remat, g_plain = (jax.jit(jax.grad(loss(v)))(p) for v in (m.clone(remat=True), m))
        assert jax.tree.structure(g_remat) == jax.tree.structure(g_plain)
        for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g_remat))


def test_bad_inputs_raise_one_clear_error(folders):
    _, model, params = _loaded("t2v", folders)
    with pytest.raises(ValueError, match="token width 12 != pt\\*ph\\*pw\\*in_channels = 16"):
        model.apply(
            {"params": params},
            jnp.zeros((1, 4, 12)),
            jnp.ones((1, 4), jnp.int32),
            jnp.zeros((1, 4, 3), jnp.int32),
            jnp.zeros((1, 1)),
            jnp.zeros((1, 1, 2, 32)),
            jnp.ones((1, 1, 2), bool),
        )
    with pytest.raises(ValueError, match="exceeds rope_max_seq_len"):
        model.apply(
            {"params": params},
            jnp.zeros((1, 33, 2, 2, 4)),
            jnp.zeros((1,)),
            jnp.zeros((1, 2, 32)),
            method=wt.WanTransformer.video,
        )


def test_sora_jax_does_not_import_torch_or_diffusers():
    code = (
        "import sys; import sora_jax.models.wan_transformer_weights; "
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

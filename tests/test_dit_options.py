"""The DiT's options (SwiGLU, joint text attention, factorised attention, remat, bf16) keep
packing invisible; logical axis names on every parameter; FLOPs counter; config checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax import config as config_lib
from sora_jax.data.packing import pack, patchify
from sora_jax.models import flops as flops_lib
from sora_jax.kernels.segments import layout_segments
from sora_jax.models.dit import DiT
from sora_jax.models import builders
from sora_jax.data import batches

PATCH, C = (1, 2, 2), 3
PATCH_DIM, TEXT_DIM, LT, L, S = 12, 16, 4, 24, 2
TOL = 1e-5


def _model(depth=2, **kw):
    return DiT(
        patch_dim=PATCH_DIM,
        hidden=32,
        depth=depth,
        num_heads=4,
        text_dim=TEXT_DIM,
        mlp_ratio=2,
        **kw,
    )


def _noisy_params(model, seed=0):
    """Random non-zero params (zero-initialised adaLN / outputs would hide leaks), plain."""
    args = _inputs([[0]], _examples())[0]

    @jax.jit
    def init():
        boxed = model.init(jax.random.PRNGKey(seed), *args)["params"]
        leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(boxed))
        keys = jax.random.split(jax.random.PRNGKey(42), len(leaves))
        noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
        return boxed, jax.tree_util.tree_unflatten(treedef, noisy)

    return init()


def _examples(seed=0):
    """Two examples: a 2x2x3 video (12 tokens) and a 1x3x2 image (6 tokens), with text."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, n_text in (((2, 4, 6, C), 3), ((1, 6, 4, C), 4)):
        tok, pos = patchify(rng.standard_normal(shape).astype(np.float32), PATCH)
        text = rng.standard_normal((LT, TEXT_DIM)).astype(np.float32)
        out.append(dict(tok=tok, pos=pos, text=text, tmask=np.arange(LT) < n_text, t=0.3))
    return out


def _inputs(rows, examples, seq_len=L):
    """DiT inputs for rows listing example indices, packed in that order."""
    x = np.zeros((len(rows), seq_len, PATCH_DIM), np.float32)
    seg = np.zeros((len(rows), seq_len), np.int32)
    pos = np.zeros((len(rows), seq_len, 3), np.int32)
    t = np.zeros((len(rows), S), np.float32)
    text = np.zeros((len(rows), S, LT, TEXT_DIM), np.float32)
    tmask = np.zeros((len(rows), S, LT), bool)
    placements = []
    for r, row in enumerate(rows):
        b, pl = pack([(examples[i]["tok"], examples[i]["pos"]) for i in row], seq_len, 1, S)
        x[r], seg[r], pos[r] = b["tokens"][0], b["segment_ids"][0], b["positions"][0]
        for i, p in zip(row, pl):
            e = examples[i]
            t[r, p.segment - 1], text[r, p.segment - 1] = e["t"], e["text"]
            tmask[r, p.segment - 1] = e["tmask"]
        placements.append(pl)
    return (x, t, seg, pos, text, tmask), placements


OPTIONS = {
    "swiglu+factorised": dict(mlp="swiglu", attention_layout="factorised"),
    "joint+remat+abs": dict(
        text_attention="joint", remat_policy="nothing_saveable", abs_positions=True
    ),
}


@pytest.fixture(scope="module", params=list(OPTIONS), ids=list(OPTIONS))
def setup(request):
    model = _model(**OPTIONS[request.param])
    boxed, params = _noisy_params(model)
    apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
    return dict(model=model, boxed=boxed, params=params, apply=apply)


def test_segment_isolation_is_bitwise(setup):
    ex = _examples()
    args, _ = _inputs([[0, 1]], ex)
    out = np.asarray(setup["apply"](setup["params"], *args))
    # Perturb everything of example 1 (tokens, caption, time): example 0 bitwise unchanged.
    other = _examples(seed=7)
    ex2 = [ex[0], dict(other[1], t=0.9)]
    out2 = np.asarray(setup["apply"](setup["params"], *_inputs([[0, 1]], ex2)[0]))
    np.testing.assert_array_equal(out2[0, :12], out[0, :12])
    assert np.abs(out2[0, 12:18] - out[0, 12:18]).max() > 1e-3


def test_padding_is_inert(setup):
    x, t, seg, pos, text, tmask = _inputs([[0, 1]], _examples())[0]
    out = np.asarray(setup["apply"](setup["params"], x, t, seg, pos, text, tmask))
    pad = seg == 0
    assert pad.sum() == 6
    rng = np.random.default_rng(3)
    x2 = np.where(pad[..., None], rng.standard_normal(x.shape), x).astype(np.float32)
    pos2 = np.where(pad[..., None], rng.integers(0, 9, pos.shape), pos).astype(np.int32)
    text2 = np.where(tmask[..., None], text, 50.0).astype(np.float32)  # masked caption slots
    out2 = np.asarray(setup["apply"](setup["params"], x2, t, seg, pos2, text2, tmask))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(out[pad], 0.0)


def test_packed_equals_one_at_a_time(setup):
    ex = _examples()
    packed = np.asarray(setup["apply"](setup["params"], *_inputs([[1, 0]], ex)[0]))
    for i, (start, n) in ((0, (6, 12)), (1, (0, 6))):
        alone = np.asarray(setup["apply"](setup["params"], *_inputs([[i]], ex, seq_len=n)[0]))
        # Outputs reach |25|: f32 sums over another sequence length land up to ~1e-5 off
        # near zero (measured: 1.2e-5 at 0.066 in one run), so atol scales with them.
        atol = TOL * np.abs(alone).max()
        np.testing.assert_allclose(packed[0, start : start + n], alone[0], atol=atol, rtol=TOL)


def test_text_packing_changes_outputs_only_past_the_budget(setup):
    """text_tokens=7 packs each row's captions (3 + 4 valid of 2 x 4 slot tokens): the same
    outputs as every slot's tokens. At 5 the second caption loses two tokens: its video
    changes, the first does not."""
    ex = _examples()
    args = _inputs([[0, 1], [1, 0], [1]], ex)[0]
    want = np.asarray(setup["apply"](setup["params"], *args))
    out = {}
    for m in (7, 5):
        model = setup["model"].clone(text_tokens=m)
        out[m] = np.asarray(jax.jit(model.apply)({"params": setup["params"]}, *args))
    np.testing.assert_allclose(out[7], want, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(out[5][0, :12], want[0, :12], atol=TOL, rtol=TOL)
    assert np.abs(out[5][0, 12:18] - want[0, 12:18]).max() > 1e-3


def test_every_param_has_logical_axes(setup):
    flat = jax.tree_util.tree_flatten_with_path(
        setup["boxed"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), name
        assert len(leaf.names) == leaf.value.ndim, name
    specs = nn.get_partition_spec(setup["boxed"])
    b0 = specs["block_0"]
    assert tuple(b0["qkv"]["kernel"]) == ("embed", "heads")
    assert tuple(b0["attn_out"]["kernel"]) == ("heads", "embed")
    assert tuple(b0["mlp_in"]["kernel"]) == ("embed", "mlp")
    assert tuple(b0["mlp_out"]["bias"]) == ("embed",)
    assert tuple(b0["adaln"]["kernel"]) == ("embed", "mlp")
    assert tuple(b0["q_norm"]["scale"]) == ("norm",)
    assert tuple(specs["patch_embed"]["kernel"]) == ("patch", "embed")
    assert tuple(specs["final_out"]["kernel"]) == ("embed", "patch")
    assert tuple(specs["text_proj"]["kernel"]) == ("text_embed", "embed")


@pytest.fixture(scope="module")
def base():
    """(boxed params, noisy plain params) of the default model: one init for the tests below
    (remat, bf16 and the option-free model share the parameter tree)."""
    return _noisy_params(_model())


def test_default_param_paths_are_unchanged(base):
    """Checkpoints from before the options load: the default model's names are the old ones."""
    boxed, _ = base
    block = set(boxed["block_0"])
    assert block == {
        "adaln", "qkv", "q_norm", "k_norm", "attn_out", "norm_cross", "cross_q", "cross_kv",
        "cross_q_norm", "cross_k_norm", "cross_out", "mlp_in", "mlp_out",
    }  # fmt: skip
    assert set(boxed) == {
        "time_mlp_in", "time_mlp_out", "text_pool_proj", "text_proj", "patch_embed",
        "block_0", "block_1", "final_adaln", "final_out",
    }  # fmt: skip
    assert boxed["block_0"]["mlp_in"]["kernel"].value.shape == (32, 64)


def test_factorised_masks_are_spatial_then_temporal():
    seg = jnp.array([[1, 1, 1, 1, 2, 0]])
    pos = jnp.array([[[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]]])

    def mask(layout):  # who token i attends to, in the row's own order
        s = layout_segments(seg, pos, layout)
        ids = np.asarray(s.q[0])
        if s.order is not None:
            ids = ids[np.argsort(np.asarray(s.order[0]))]
        return (ids[:, None] == ids[None, :]) & (ids[:, None] > 0)

    spatial, temporal, full = mask("hw"), mask("t"), mask("thw")
    assert spatial[0].tolist() == [1, 1, 0, 0, 0, 0]  # same frame only
    assert temporal[0].tolist() == [1, 0, 1, 0, 0, 0]  # same (h, w) only
    assert full[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert not spatial[5].any() and not temporal[5].any()  # padding sees nothing


def test_remat_gives_the_same_gradients(base):
    ex = _examples()
    args, _ = _inputs([[0, 1]], ex)
    params = base[1]
    grads = []
    for policy in ("none", "dots_saveable"):
        model = _model(remat_policy=policy)
        loss = lambda p: jnp.sum(model.apply({"params": p}, *args) ** 2)
        grads.append(jax.jit(jax.grad(loss))(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


def test_bf16_compute_with_f32_params(base):
    ex = _examples()
    args, _ = _inputs([[0, 1]], ex)
    f32, bf16 = _model(), _model(dtype=jnp.bfloat16)
    params = base[1]
    boxed = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), *args)["params"])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(boxed)))
    ref = np.asarray(jax.jit(f32.apply)({"params": params}, *args))
    out = jax.jit(bf16.apply)({"params": params}, *args)
    assert out.dtype == jnp.float32
    err = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.05, err  # bf16 rounding: close to, not equal to, float32
    np.testing.assert_array_equal(np.asarray(out)[args[2] == 0], 0.0)


def test_bad_options_are_rejected():
    args, _ = _inputs([[0]], _examples())
    with pytest.raises(ValueError, match="mlp='relu'"):
        _model(mlp="relu").init(jax.random.PRNGKey(0), *args)
    with pytest.raises(ValueError, match="remat_policy"):
        _model(remat_policy="sometimes").init(jax.random.PRNGKey(0), *args)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"text_attention": "joint", "mlp": "swiglu"},
        {"text_tokens": 6},
        {"modulation": "token"},
        {"modulation": "shared", "text_attention": "joint"},
    ],
    ids=["cross", "joint", "packed-text", "per-token-adaln", "shared-adaln"],
)
def test_flops_counter_matches_xla_cost_analysis(kw):
    model = DiT(patch_dim=16, hidden=128, depth=2, num_heads=4, text_dim=32, **kw)
    b, l, s, lt = 1, 128, 2, 8
    args = (
        jnp.zeros((b, l, 16)),
        jnp.zeros((b, s)),
        jnp.ones((b, l), jnp.int32),
        jnp.zeros((b, l, 3), jnp.int32),
        jnp.zeros((b, s, lt, 32)),
        jnp.ones((b, s, lt), bool),
    )
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), *args)))
    cost = jax.jit(model.apply).lower(params, *args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla = cost["flops"] / (b * l)
    ours = flops_lib.dit_flops_per_token(model, l, model.text_tokens or s * lt, entries=s)
    ours = ours["forward"]
    # Matmuls only: a little below XLA's count, which includes elementwise ops.
    assert 0.9 * xla < ours <= xla, (ours, xla)
    assert flops_lib.param_count(params) == sum(x.size for x in jax.tree.leaves(params))


def test_config_rejects_bad_dit_options():
    from test_train import micro_config

    for key, value, match in (
        ("model.mlp", "relu", "dit.model.mlp"),
        ("model.dtype", "float16", "dit.model.dtype"),
        ("model.remat_policy", "all", "dit.model.remat_policy"),
        ("token_drop.rate", 0.95, "dit.token_drop.rate"),
        ("token_drop.schedule", "cosine", "dit.token_drop.schedule"),
        ("model.attention_impl", "flash9", "dit.model.attention_impl"),
    ):
        c = micro_config()
        node, leaf = c.dit, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        node[leaf[-1]] = value
        with pytest.raises(ValueError, match=match):
            config_lib.validate(c)


def _tagged_latents(shapes, c):
    """Random f32[t h w 4] latents patchified; feature 0 of every token is its video's index."""
    rng = np.random.default_rng(0)
    tokens, positions = [], []
    for i, shape in enumerate(shapes):
        lat = rng.standard_normal((*shape, 4)).astype(np.float32)
        lat[..., 0] = i
        tok, pos = patchify(lat, tuple(c.dit.patch))
        tokens.append(tok)
        positions.append(pos)
    return tokens, positions


def test_dropped_tokens_never_reach_the_batch_or_the_loss():
    from test_train import micro_config

    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.training import dit_trainer
    from sora_jax.training import train_state as ts

    c = micro_config()
    c.dit.token_drop.rate = 0.5
    c.diffusion.shift_mode, c.diffusion.shift_in_training = "tokens", True
    tokens, positions = _tagged_latents([(2, 4, 6), (1, 4, 4), (2, 4, 4), (1, 6, 4)] * 4, c)
    text = builders.build_text_encoder(c)
    ids, mask = text.tokenize(["a small red circle on a grey background"] * len(tokens))
    null = [a[0] for a in text.tokenize([""])]

    def batch_for(toks):
        cache = batches.LatentCache(toks, positions, ids, mask, np.zeros(4), np.ones(4))
        return batches.dit_batch(c, cache, *null, 0)

    batch = batch_for(tokens)
    seg, pos = batch["segment_ids"], batch["positions"]
    kept = [np.zeros(len(t), bool) for t in tokens]
    for r, j in zip(*np.nonzero(batch["num_tokens"])):
        where = seg[r] == j + 1
        i = int(round(batch["tokens"][r, where][0, 0]))
        grid = positions[i].max(0) + 1
        flat = (pos[r, where] * [grid[1] * grid[2], grid[2], 1]).sum(-1)
        kept[i][flat] = True
        n = len(tokens[i])
        assert batch["num_tokens"][r, j] == n and where.sum() == max(1, round(n * 0.5))
        np.testing.assert_array_equal(batch["tokens"][r, where], tokens[i][flat])
    assert sum(k.any() for k in kept) >= 8
    # Changing every dropped token leaves the batch bitwise equal; changing a kept one does not.
    perturbed = [np.where(k[:, None], t, t + 5.0).astype(np.float32) for k, t in zip(kept, tokens)]
    b2 = batch_for(perturbed)
    for key in batch:
        np.testing.assert_array_equal(b2[key], batch[key], err_msg=key)
    i = next(i for i, k in enumerate(kept) if k.sum() > 1)
    one = [t.copy() for t in tokens]
    one[i][np.flatnonzero(kept[i])[-1]] += 5.0
    b3 = batch_for(one)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
    loss = lambda b: float(step(state, b, jax.random.PRNGKey(0))[1]["loss"])
    l1, l3 = loss(batch), loss(b3)
    assert np.isfinite(l1) and l1 != l3


def test_dry_run_counts_without_allocating(capsys):
    import os

    from sora_jax import train

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_lib.load_with_arg(os.path.join(root, "configs", "dit.py"), "XL")
    summary = train.dry_run(c)  # an 823 M-parameter model: only shapes are built
    h, depth, d = 1152, 28, 1152 // 16
    # Independent count of the default (GELU, cross-attention) block and embeddings.
    block = (h * 6 * h + 6 * h) + (3 * h * h + 3 * h) + 4 * d + 2 * h + (h * h + h)
    block += (h * h + h) + (2 * h * h + 2 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
    patch, text = 1 * 2 * 2 * c.vae.model.latent_channels, c.text.width
    rest = (256 * h + h) + (h * h + h) + 2 * (text * h + h) + (patch * h + h)
    rest += (h * 2 * h + 2 * h) + (h * patch + patch)
    assert summary["dit_params"] == depth * block + rest
    out = capsys.readouterr().out
    assert f"DiT {depth * block + rest:,}" in out and "GFLOP" in out


def test_text_budget_in_the_trainer():
    """dit.text_tokens: batches keep each row's captions within it, and the train step's loss
    is the one of the model that sees every caption slot."""
    from test_train import micro_config

    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.training import dit_trainer
    from sora_jax.training import train_state as ts

    c = micro_config()
    c.dit.text_tokens = 20
    c = config_lib.validate(c)
    grids = [(1, 2, 2), (2, 2, 3), (1, 1, 2)] * 10
    tokens, positions = _tagged_latents([(t, 2 * h, 2 * w) for t, h, w in grids], c)
    text = builders.build_text_encoder(c)
    captions = ["a small red circle", "a big blue square moves left on a grey background"]
    ids, mask = text.tokenize([captions[i % 2] for i in range(len(tokens))])
    assert 4 <= mask.sum(-1).min() and mask.sum(-1).max() <= 16
    cache = batches.LatentCache(tokens, positions, ids, mask, np.zeros(4), np.ones(4))
    null = [a[0] for a in text.tokenize([""])]
    batch = batches.dit_batch(c, cache, *null, 0)
    per_row = batch["caption_mask"].sum((1, 2))
    assert per_row.max() <= 20 and (batch["segment_ids"] > 0).sum() > 0
    # Without the budget the same draw packs more caption tokens into some row.
    c0 = c.copy_and_resolve_references()
    c0.dit.text_tokens = 0
    assert batches.dit_batch(c0, cache, *null, 0)["caption_mask"].sum((1, 2)).max() > 20
    losses = []
    mesh = mesh_lib.create_mesh(1)
    for m in (20, 0):
        cm = c.copy_and_resolve_references()
        cm.dit.text_tokens = m
        dit = builders.build_dit(cm, text.dim)
        tx = ts.make_optimizer(cm.dit.train)
        state = dit_trainer.init_state(cm, dit, text, tx, mesh, None)
        step_fn = jax.jit(dit_trainer.make_train_step(cm, dit, text, tx))
        losses.append(float(step_fn(state, batch, jax.random.PRNGKey(0))[1]["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
    c.dit.text_tokens = 15
    with pytest.raises(ValueError, match=r"dit.text_tokens.*text.max_length=16"):
        config_lib.validate(c)


def test_length_bucketed_batches_in_the_trainer():
    from test_train import micro_config

    from sora_jax.data import packing
    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.training import dit_trainer
    from sora_jax.training import train_state as ts

    c = micro_config()
    c.dit.pack_lengths = (16, 32)
    c = config_lib.validate(c)
    shapes = packing.row_shapes(32, 8, 4, (16, 32))
    assert shapes == {16: (16, 4), 32: (8, 4)}
    grids = [(1, 2, 2), (2, 2, 3), (1, 4, 4), (2, 3, 4), (3, 2, 5)] * 6
    tokens, positions = _tagged_latents([(t, 2 * h, 2 * w) for t, h, w in grids], c)
    text = builders.build_text_encoder(c)
    ids, mask = text.tokenize(["a small red circle on a grey background"] * len(tokens))
    cache = batches.LatentCache(tokens, positions, ids, mask, np.zeros(4), np.ones(4))
    null = [a[0] for a in text.tokenize([""])]
    seen = {}
    plan = batches.length_plan(c, cache)  # what the trainer computes once
    for step in range(8):
        batch = batches.dit_batch(c, cache, *null, step)
        for k, v in batches.dit_batch(c, cache, *null, step, plan=plan).items():
            np.testing.assert_array_equal(v, batch[k])
        seg = batch["segment_ids"]
        rows, length = seg.shape
        assert (rows, batch["caption_ids"].shape[1]) == shapes[length]
        sizes = []
        for r in range(rows):
            for s in range(1, seg[r].max() + 1):
                where = seg[r] == s
                i = int(batch["tokens"][r, where][0, 0])
                np.testing.assert_array_equal(batch["tokens"][r, where], tokens[i])
                np.testing.assert_array_equal(batch["positions"][r, where], positions[i])
                sizes.append(len(tokens[i]))
        # A 32-token batch is one of videos over 16 tokens (short ones only fill its gaps).
        assert max(sizes) <= length and (length == 16 or max(sizes) > 16), (length, sizes)
        seen[length] = batch
    assert set(seen) == {16, 32}
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    step_fn = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
    _, m = step_fn(state, seen[16], jax.random.PRNGKey(0))
    assert np.isfinite(float(m["loss"])) and float(m["loss"]) > 0
    pad = packing.padding_fraction(seen[16]["segment_ids"])
    assert float(m["padding_fraction"]) == pytest.approx(pad, abs=1e-6)
    c.dit.pack_lengths = (12, 32)
    with pytest.raises(ValueError, match=r"dit.pack_lengths.*\[12\] do not divide"):
        config_lib.validate(c)
    c.dit.pack_lengths, c.data.source, c.data.cache_dir = (16, 32), "latent_cache", "/x"
    c.data.target_area, c.data.max_frames = 16 * 16, 5
    with pytest.raises(ValueError, match="dit.pack_lengths.*moving_shapes"):
        config_lib.validate(c)


def test_flops_count_attention_as_the_kernel_executes_it():
    kw = dict(patch_dim=16, hidden=64, depth=2, num_heads=4, text_dim=32)
    blockwise = DiT(attention_impl="blockwise", attention_blocks=(512, 512), **kw)
    dense = DiT(attention_impl="xla", **kw)
    four = [(4, 16, 16)] * 4  # 4 videos of 1024 tokens = 2 blocks each
    assert flops_lib.attention_pairs(blockwise, 4096, four) == 4096**2 / 4
    assert flops_lib.attention_pairs(dense, 4096, four) == 4096**2
    assert flops_lib.attention_pairs(blockwise, 4096) == 4096**2  # one video fills the row
    # Factorised, 64-token blocks: frames of 256 tokens (4 x 4 blocks each) and columns of 4
    # tokens (16 to a block, so only the diagonal blocks).
    fact = DiT(
        attention_impl="blockwise", attention_blocks=(64, 64), attention_layout="factorised", **kw
    )
    assert flops_lib.attention_pairs(fact, 1024, [(4, 16, 16)]) == (4 * 16 + 16) * 64 * 64 / 2
    f4, f1 = (flops_lib.dit_flops_per_token(blockwise, 4096, 0, v) for v in (four, None))
    assert f4["forward"] < f1["forward"] and f4["attention_pairs"] == 4096**2 / 4
    # A platform's 'auto' kernel: splash computes every pair of the row.
    auto = DiT(attention_impl="auto", **kw)
    assert flops_lib.attention_pairs(auto, 4096, four, platform="tpu") == 4096**2
    assert flops_lib.attention_pairs(auto, 4096, four, platform="cpu") == 4096**2 / 4

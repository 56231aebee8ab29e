"""The DiT at scale: adaLN per (segment, time), scanned blocks and their checkpoint
conversion, block-input remat / offload, and no replicated activations under fsdp."""

import importlib.util
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import micro_config

from sora_jax import config as config_lib
from sora_jax.models import block_stack
from sora_jax.models.dit import DiT
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import planning

TOL = 1e-5
TEXT_DIM = 8


def _inputs():
    """Two packed rows: segments of 2 x 2 x 2 / 1 x 2 x 2 / 3 x 2 x 2 tokens and padding,
    a masked caption token, and given first frames in every video."""
    rng = np.random.default_rng(0)
    b, l, s, lt = 2, 24, 2, 3
    seg = np.array([[1] * 8 + [2] * 4 + [0] * 12, [1] * 12 + [2] * 8 + [0] * 4], np.int32)
    pos = np.zeros((b, l, 3), np.int32)
    for r in range(b):
        for j in (1, 2):
            k = np.arange((seg[r] == j).sum())
            pos[r, seg[r] == j] = np.stack([k // 4, (k % 4) // 2, k % 2], -1)
    x = rng.normal(size=(b, l, 4)).astype(np.float32)
    t = rng.uniform(size=(b, s)).astype(np.float32)
    text = rng.normal(size=(b, s, lt, TEXT_DIM)).astype(np.float32)
    tmask = np.ones((b, s, lt), bool)
    tmask[0, 1, 2] = False
    cond = (pos[..., 0] == 0) & (seg > 0)
    t_given = (0.1 * rng.uniform(size=(b, s))).astype(np.float32)
    return (x, t, seg, pos, text, tmask), cond, t_given


def _model(**kw):
    base = dict(
        patch_dim=4,
        hidden=32,
        depth=2,
        num_heads=2,
        text_dim=TEXT_DIM,
        attention_impl="blockwise",
        attention_blocks=(8, 8),
        cond_embedding=True,
    )
    return DiT(**{**base, **kw})


def _params(model, args):
    """Random (non-zero) params: zero-initialised gates would hide the modulation."""
    boxed = model.init(jax.random.PRNGKey(0), *args)["params"]
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(
        tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
    )


def _loss_and_grad(model, params, args, **kw):
    f = lambda p: jnp.sum(model.apply({"params": p}, *args, **kw) ** 2)  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)


def _close(a, b, tol=TOL):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


# ------------------------------------------------------------------------ modulation


@pytest.mark.parametrize("given", [False, True], ids=["no-given-frames", "given-frames"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"text_attention": "joint", "attention_layout": "factorised"}],
    ids=["cross", "joint-factorised"],
)
def test_per_segment_modulation_equals_per_token(kw, given):
    args, cond, t_given = _inputs()
    extra = {"cond_mask": cond, "t_given": t_given} if given else {}
    per_token = _model(modulation="token", **kw)
    params = _params(per_token, args)
    ref = per_token.apply({"params": params}, *args, **extra)
    out = _model(modulation="segment", **kw).apply({"params": params}, *args, **extra)
    _close(out, ref)
    assert np.abs(ref).max() > 0.1  # a real signal
    if given:  # the given frames' own time matters
        other = per_token.apply({"params": params}, *args, cond_mask=cond)
        assert np.abs(other - ref).max() > 1e-3


def test_shared_modulation_is_one_projection_plus_a_table_per_block():
    """'shared' equals per-block projections whose kernel is the shared one and whose bias
    adds the block's table (so a Wan-style checkpoint maps onto the per-block form)."""
    args, cond, t_given = _inputs()
    shared = _model(modulation="shared", text_attention="joint")
    params = _params(shared, args)
    assert "time_proj" in params and "adaln" not in params["block_0"]
    assert params["block_0"]["modulation"].shape == (6, 32)
    proj = params["time_proj"]
    per_block = {k: v for k, v in params.items() if k != "time_proj"}
    for i in range(shared.depth):
        block = dict(per_block[f"block_{i}"])
        for prefix in ("", "text_"):
            table = block.pop(prefix + "modulation").reshape(-1)
            block[prefix + "adaln"] = {"kernel": proj["kernel"], "bias": proj["bias"] + table}
        per_block[f"block_{i}"] = block
    segment = _model(modulation="segment", text_attention="joint")
    for extra in ({}, {"cond_mask": cond, "t_given": t_given}):
        ref = segment.apply({"params": per_block}, *args, **extra)
        out = shared.apply({"params": params}, *args, **extra)
        _close(out, ref)
    # adaLN-Zero at init: a fresh model changes nothing (zero gates).
    fresh = shared.init(jax.random.PRNGKey(0), *args)["params"]
    assert not np.any(np.asarray(nn.unbox(fresh)["block_1"]["modulation"]))


def test_old_checkpoints_keep_their_tree():
    args, _, _ = _inputs()
    old = _model(modulation="token")
    new = _model()
    shapes = lambda m: jax.tree.map(  # noqa: E731
        lambda a: a.shape, nn.unbox(jax.eval_shape(m.init, jax.random.PRNGKey(0), *args))
    )
    assert shapes(old) == shapes(new)


# ------------------------------------------------------------------- scanned blocks


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"text_attention": "joint", "attention_layout": "factorised", "depth": 4},
        {"modulation": "shared", "remat_policy": "save_block_inputs", "mlp": "swiglu"},
        {"attention_layout": "factorised", "remat_policy": "offload_block_inputs", "depth": 4},
    ],
    ids=["full", "joint-factorised", "shared-remat", "factorised-offload"],
)
def test_scanned_blocks_equal_unrolled_outputs_and_gradients(kw):
    args, cond, t_given = _inputs()
    # The reference runs without remat: the policies change memory, not values.
    plain = {k: v for k, v in kw.items() if k != "remat_policy"}
    unrolled, scanned = _model(**plain), _model(scan_blocks=True, **kw)
    params = _params(unrolled, args)
    stacked = block_stack.scan_blocks(params, unrolled.attention_layout)
    # The conversion gives the scanned model's own tree, its blocks on a 'layers' axis.
    boxed = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), *args)["params"]
    assert jax.tree.map(lambda a: a.shape, nn.unbox(boxed)) == jax.tree.map(
        lambda a: a.shape, stacked
    )
    specs = jax.tree.leaves(
        nn.get_partition_spec(boxed["blocks"]),
        is_leaf=lambda p: isinstance(p, jax.sharding.PartitionSpec),
    )
    assert all(p[0] == "layers" for p in specs)
    extra = {"cond_mask": cond, "t_given": t_given}
    loss, grads = _loss_and_grad(unrolled, params, args, **extra)
    loss_s, grads_s = _loss_and_grad(scanned, stacked, args, **extra)
    np.testing.assert_allclose(loss_s, loss, rtol=TOL)
    assert float(loss) > 1.0
    _close(block_stack.unscan_blocks(grads_s, unrolled.attention_layout), grads)


def test_block_conversion_round_trips_any_state_tree():
    args, _, _ = _inputs()
    for layout in ("full", "factorised"):
        params = _params(_model(attention_layout=layout, depth=4), args)
        # A train state's trees: params, EMA and the optimizer's moments share the structure.
        state = {"params": params, "ema": params, "opt": ({"mu": params, "nu": params}, ())}
        stacked = block_stack.convert(state, layout, scanned=True)
        assert block_stack.is_scanned(stacked) and not block_stack.is_scanned(state)
        assert "block_0" not in stacked["opt"][0]["nu"]
        names = ("block",) if layout == "full" else ("spatial", "temporal")
        assert set(stacked["params"]["blocks"]) == set(names)
        periods = 4 // len(names)
        assert stacked["ema"]["blocks"][names[-1]]["qkv"]["kernel"].shape[0] == periods
        # Block 1 of a factorised DiT is the first temporal block.
        np.testing.assert_array_equal(
            stacked["params"]["blocks"][names[-1]]["qkv"]["kernel"][0],
            params[f"block_{len(names) - 1}"]["qkv"]["kernel"],
        )
        back = block_stack.convert(stacked, layout, scanned=False)
        assert jax.tree.structure(back) == jax.tree.structure(state)
        jax.tree.map(np.testing.assert_array_equal, back, state)
        # Converting to the form a tree already has changes nothing.
        assert block_stack.convert(state, layout, scanned=False) is not None
    with pytest.raises(ValueError, match="periods of 2"):
        block_stack.scan_blocks({"block_0": {}, "block_1": {}, "block_2": {}}, "factorised")
    with pytest.raises(ValueError, match="not the periods"):
        block_stack.unscan_blocks({"blocks": {"block": {}}}, "factorised")
    with pytest.raises(ValueError, match="no DiT parameters"):
        block_stack.is_scanned({"vae": {}})


def test_bad_scan_and_modulation_options_are_rejected():
    args, _, _ = _inputs()
    with pytest.raises(ValueError, match="depth 3 is not a multiple"):
        _model(depth=3, attention_layout="factorised", scan_blocks=True).init(
            jax.random.PRNGKey(0), *args
        )
    with pytest.raises(ValueError, match="modulation='wan'"):
        _model(modulation="wan").init(jax.random.PRNGKey(0), *args)
    c = micro_config()
    c.dit.model.attention_layout, c.dit.model.scan_blocks = "factorised", True
    c.dit.model.depth = 3
    with pytest.raises(ValueError, match="dit.model.scan_blocks.*depth=3 must be a multiple"):
        config_lib.validate(c)
    c = micro_config()
    c.dit.model.modulation = "per_layer"
    with pytest.raises(ValueError, match="dit.model.modulation"):
        config_lib.validate(c)


# --------------------------------------------------------- sharding of the activations


def _row_all_gathers(hlo: str, rows: int, length: int) -> list[str]:
    """Result shapes of all-gathers of [rows, length, ...] activations in an HLO text."""
    shapes = re.findall(r"= (\w+\[[0-9,]*\])[^\n]*? all-gather\(", hlo)
    return [s for s in shapes if re.search(rf"\[{rows},{length}[,\]]", s)]


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler here",
)
def test_fsdp_step_gathers_no_activation_rows_on_a_tpu_slice():
    """Under fsdp the weights' embed axis and the rows share the mesh axis: per-token adaLN
    made the compiler all-gather [rows, L, 6 hidden] across it; per-segment adaLN does not."""
    devices = planning.topology_devices("v5p:2x2x1")
    ici = {"data": 1, "fsdp": 4, "tensor": 1, "sequence": 1}
    mesh = mesh_lib.create_mesh(4, ici=ici, devices=devices)
    found = {}
    for modulation in ("token", "segment"):
        c = micro_config()
        c.dit.model.modulation = modulation
        c.dit.model.hidden, c.dit.model.num_heads, c.dit.model.depth = 256, 2, 1
        c.dit.model.dtype = "bfloat16"
        c.dit.rows, c.mesh.fsdp, c.mesh.num_devices = 4, 4, 4
        c = config_lib.validate(c)
        hlo = planning.compiled_step(c, mesh)["hlo"]
        found[modulation] = _row_all_gathers(hlo, 4, c.dit.seq_len)
    assert found["token"], "the per-token modulation's all-gather is no longer detected"
    assert found["segment"] == []

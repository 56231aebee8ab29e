"""LoRA on the DiT: fresh adapters change nothing, merged export equals base + adapters, targets
by name, dropout only in training, and a fine-tune that trains (and keeps state for) adapters
only."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_dit_scale import _inputs, _model, _params

from sora_jax.models import lora
from sora_jax.training import finetune

SPEC = lora.LoraSpec(rank=4, alpha=8.0)


def _paths(tree):
    return {"/".join(k) for k in flax.traverse_util.flatten_dict(tree)}


def _lora_params(base_model, spec, args, seed=2, scale=0.0, **kw):
    """(LoRA model, base params, LoRA params = base + adapters (random when scale > 0))."""
    base = _params(base_model, args)
    model = _model(lora=spec, **kw)
    fresh = nn.unbox(model.init(jax.random.PRNGKey(seed), *args)["params"])
    _, adapters = lora.split(fresh)
    if scale:
        leaves, tree = jax.tree.flatten(adapters)
        keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
        adapters = jax.tree.unflatten(
            tree, [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
        )
    return model, base, lora.combine(base, adapters)


@pytest.mark.parametrize("scan", [False, True])
def test_fresh_adapters_leave_the_model_unchanged(scan):
    args, _, _ = _inputs()
    base_model = _model(scan_blocks=scan)
    model, base, params = _lora_params(base_model, SPEC, args, scan_blocks=scan)
    want = base_model.apply({"params": base}, *args)
    got = model.apply({"params": params}, *args)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Adapters sit beside the kernels they adapt, A [in r] and B [r out] (a leading layer
    # axis when scanned), on every targeted layer and nowhere else.
    _, adapters = lora.split(params)
    flat = flax.traverse_util.flatten_dict(adapters)
    layers = {k[-2] for k in flat}
    assert layers == {"qkv", "attn_out", "cross_q", "cross_kv", "cross_out", "mlp_in", "mlp_out"}
    for k, v in flat.items():
        kernel = flax.traverse_util.flatten_dict(base)[k[:-1] + ("kernel",)]
        lead = kernel.shape[:-2]
        want_shape = (
            (*lead, kernel.shape[-2], 4) if k[-1] == "lora_a" else (*lead, 4, kernel.shape[-1])
        )
        assert v.shape == want_shape, (k, v.shape)
    assert _paths(lora.split(params)[0]) == _paths(base)


@pytest.mark.parametrize("scan", [False, True])
def test_merged_params_equal_base_plus_adapters(scan):
    args, cond, t_given = _inputs()
    base_model = _model(scan_blocks=scan)
    model, base, params = _lora_params(base_model, SPEC, args, scale=0.3, scan_blocks=scan)
    got = model.apply({"params": params}, *args, cond, t_given)
    unchanged = base_model.apply({"params": base}, *args, cond, t_given)
    assert np.abs(np.asarray(got) - np.asarray(unchanged)).max() > 1e-2  # the adapters act
    merged = lora.merge(params, SPEC)
    assert _paths(merged) == _paths(base)
    want = base_model.apply({"params": merged}, *args, cond, t_given)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_targets_select_layers_by_name():
    args, _, _ = _inputs()
    spec = lora.LoraSpec(rank=2, alpha=2.0, targets="cross_.*")
    params = _model(lora=spec).init(jax.random.PRNGKey(0), *args)["params"]
    _, adapters = lora.split(params)
    layers = {k[-2] for k in flax.traverse_util.flatten_dict(adapters)}
    assert layers == {"cross_q", "cross_kv", "cross_out"}
    # Logical axes on the adapters: A keeps the kernel's input axis, B its output axis.
    boxed = flax.traverse_util.flatten_dict(adapters)
    a = boxed[("block_0", "cross_q", "lora_a")]
    b = boxed[("block_0", "cross_q", "lora_b")]
    assert a.names == ("embed", None) and b.names == (None, "heads")


def test_dropout_only_with_a_dropout_rng():
    args, _, _ = _inputs()
    spec = lora.LoraSpec(rank=4, alpha=8.0, dropout=0.5)
    model, _, params = _lora_params(_model(), spec, args, scale=0.3)
    plain = model.apply({"params": params}, *args)
    again = model.apply({"params": params}, *args)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(again))
    r1 = model.apply({"params": params}, *args, rngs={"dropout": jax.random.PRNGKey(1)})
    r2 = model.apply({"params": params}, *args, rngs={"dropout": jax.random.PRNGKey(2)})
    assert np.abs(np.asarray(r1) - np.asarray(plain)).max() > 1e-3
    assert np.abs(np.asarray(r1) - np.asarray(r2)).max() > 1e-3
    # Scanned blocks draw a different mask per layer and still run.
    model_s, _, params_s = _lora_params(
        _model(scan_blocks=True), spec, args, scale=0.3, scan_blocks=True
    )
    out = model_s.apply({"params": params_s}, *args, rngs={"dropout": jax.random.PRNGKey(1)})
    assert np.all(np.isfinite(np.asarray(out)))


def test_only_adapters_train_and_hold_optimizer_state():
    args, _, _ = _inputs()
    model, base, params = _lora_params(_model(), SPEC, args)
    target = jnp.asarray(np.random.default_rng(0).normal(size=args[0].shape), jnp.float32)
    tx = finetune.only_trainable(optax.adam(1e-2), lora.trainable_mask(params))
    state = tx.init(params)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) >= 1]
    n_adapter = len(jax.tree.leaves(lora.split(params)[1]))
    assert len(moments) == 2 * n_adapter  # Adam's mu and nu, adapters only

    def loss(p):
        return jnp.mean((model.apply({"params": p}, *args) - target) ** 2)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    p, losses = params, []
    for _ in range(5):
        p, state, value = step(p, state)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    new_base, new_adapters = lora.split(p)
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, v), new_base, base)
    changed = jax.tree.map(lambda u, v: bool(np.any(u != v)), new_adapters, lora.split(params)[1])
    assert any(jax.tree.leaves(changed))


def test_frozen_mask_by_pattern():
    args, _, _ = _inputs()
    params = _params(_model(), args)
    frozen = lora.frozen_mask(params, "text_proj|cross_kv")
    flat = flax.traverse_util.flatten_dict(frozen)
    assert flat[("text_proj", "kernel")] and flat[("block_1", "cross_kv", "bias")]
    assert not flat[("block_0", "qkv", "kernel")]
    assert not any(jax.tree.leaves(lora.frozen_mask(params, "")))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(rank=0, alpha=1.0), "rank must be >= 1"),
        (dict(rank=2, alpha=0.0), "alpha must be > 0"),
        (dict(rank=2, alpha=1.0, dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(rank=2, alpha=1.0, targets="qkv("), "is not a regular expression"),
    ],
)
def test_bad_specs_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        lora.LoraSpec(**kw)

"""Meshes, logical sharding, sequence-parallel attention and gradient accumulation on 8
simulated CPU devices: every parallel layout gives the single-device result."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dit_setup import MESHES, fixed_batch, mesh_config, run_steps, tiny_config

from sora_jax import config as config_lib
from sora_jax.common import checkpoint
from sora_jax.kernels.segments import Segments, layout_segments
from sora_jax.models import attention as attention_lib
from sora_jax.parallel import axes, partitioning
from sora_jax.parallel import mesh as mesh_lib

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_mesh_shapes_fill_and_errors():
    assert mesh_lib.resolve_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 2, 1)
    m = mesh_lib.create_mesh(ici={"data": 2, "fsdp": -1, "sequence": 2})
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 1, "sequence": 2}
    assert m.devices.size == 8 and len(set(d.id for d in m.devices.flat)) == 8
    with pytest.raises(ValueError, match="product 6 does not match the 8 devices"):
        mesh_lib.create_mesh(ici={"data": 3, "tensor": 2})
    with pytest.raises(ValueError, match="not divisible by the fixed axes' product 3"):
        mesh_lib.create_mesh(ici={"data": -1, "tensor": 3})
    with pytest.raises(ValueError, match="one may be -1"):
        mesh_lib.create_mesh(ici={"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_lib.create_mesh(ici={"model": 8})
    with pytest.raises(ValueError, match="only 8 devices exist"):
        mesh_lib.create_mesh(16)
    # An old config (mesh.num_devices alone) still gives a data-parallel mesh.
    old = config_lib.fill_added_keys({"mesh": {"num_devices": 4}})["mesh"]
    old = config_lib.ml_collections.ConfigDict(old)
    assert dict(mesh_lib.from_config(old).shape) == {
        "data": 4,
        "fsdp": 1,
        "tensor": 1,
        "sequence": 1,
    }
    c = tiny_config()
    c.mesh.tensor = 0
    with pytest.raises(ValueError, match="config.mesh="):
        config_lib.validate(c)


def test_hybrid_mesh_puts_dcn_axis_across_granules():
    # Four fake 'slices' of two devices: data crosses slices, fsdp stays inside each.
    class Dev:
        def __init__(self, i):
            self.id, self.slice_index, self.process_index = i, i // 2, 0
            self.platform, self.device_kind = "cpu", "cpu"

    devs = [Dev(i) for i in range(8)]
    arr = mesh_lib.mesh_utils.create_hybrid_device_mesh((1, 2, 1, 1), (4, 1, 1, 1), devs)
    assert arr.shape == (4, 2, 1, 1)
    for row in arr[:, :, 0, 0]:
        assert len({d.slice_index for d in row}) == 1  # an fsdp group lives in one slice


@pytest.fixture(scope="module")
def reference():
    c = tiny_config()
    batch = fixed_batch(c)
    losses, state = run_steps(c, mesh_lib.create_mesh(1), batch)
    return batch, losses, jax.device_get(state)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_train_step_equals_single_device(reference, shape):
    batch, ref_losses, ref_state = reference
    c = mesh_config(shape)
    mesh = mesh_lib.from_config(c.mesh)
    assert tuple(mesh.shape.values()) == shape
    losses, state = run_steps(c, mesh, batch)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name in ("params", "ema_params", "opt_state"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
            jax.device_get(getattr(state, name)),
            getattr(ref_state, name),
        )
    # Placed as the rules say: FSDP over the embedding, tensor over heads and MLP.
    block = state.params["dit"]["block_0"]
    expected = {
        ("qkv", "kernel"): ("fsdp", "tensor"),
        ("qkv", "bias"): ("tensor",),
        ("attn_out", "kernel"): ("tensor", "fsdp"),
        ("mlp_in", "kernel"): ("fsdp", "tensor"),
        ("mlp_out", "kernel"): ("tensor", "fsdp"),
        ("mlp_out", "bias"): ("fsdp",),
        ("adaln", "kernel"): ("fsdp", "tensor"),
        ("q_norm", "scale"): (),
    }
    mu = state.opt_state[1][0].mu["dit"]["block_0"]
    for (layer, leaf), spec in expected.items():
        for tree in (block, mu, state.ema_params["dit"]["block_0"]):
            x = tree[layer][leaf]
            assert partitioning.spec_of(x) == spec, f"{layer}/{leaf}: {x.sharding.spec}"
            # Really split: each device holds 1 / (axis size) of each split dimension.
            splits = [mesh.shape[a] for a in spec] + [1] * (x.ndim - len(spec))
            shard = x.addressable_shards[0].data.shape
            assert shard == tuple(n // s for n, s in zip(x.shape, splits)), (layer, leaf, shard)
    dit = state.params["dit"]
    assert partitioning.spec_of(dit["patch_embed"]["kernel"]) == (None, "fsdp")
    assert partitioning.spec_of(dit["final_out"]["kernel"]) == ("fsdp",)
    assert partitioning.spec_of(dit["text_proj"]["kernel"]) == (None, "fsdp")
    assert partitioning.spec_of(state.step) == ()
    # With fsdp or tensor > 1, most of the DiT's arrays are split, not replicated.
    split = [x.addressable_shards[0].data.size < x.size for x in jax.tree.leaves(dit)]
    _, fsdp, tensor, _ = shape
    assert (np.mean(split) > 0.5) == (fsdp > 1 or tensor > 1), np.mean(split)


@pytest.mark.parametrize("sp", [2, 4])
@pytest.mark.parametrize("kernel", ["blockwise", "xla"])
def test_sequence_parallel_attention_equals_plain(sp, kernel):
    b, l, h, d, m = 2, 16, 4, 8, 6
    r = np.random.default_rng(sp)
    q, k, v = (jnp.asarray(r.normal(size=(b, l, h, d)), jnp.float32) for _ in range(3))
    seg = np.zeros((b, l), np.int32)
    seg[0, :5], seg[0, 5:13] = 1, 2  # two videos and padding
    seg[1, :9], seg[1, 9:] = 1, 3
    seg = jnp.asarray(seg)
    text = jnp.asarray(r.normal(size=(b, m, h, d)), jnp.float32)
    text_ids = jnp.asarray([[1, 1, 2, 2, 0, 0], [1, 3, 3, 3, 0, 0]], jnp.int32)
    pos = jnp.asarray(np.stack([np.arange(l) // 4, np.arange(l) % 4 // 2, np.arange(l) % 2], -1))
    pos = jnp.broadcast_to(pos, (b, l, 3))
    temporal = layout_segments(seg, pos, "t")  # a layout: tokens reordered, then put back
    attend = lambda *a: attention_lib.attention(*a, kernel, block_q=4, block_kv=4)
    mesh = mesh_lib.create_mesh(2 * sp, ici={"data": 2, "sequence": sp})

    def all_three(q, k, v, text):
        return (
            attend(q, k, v, Segments(seg)),
            attend(q, text, text, Segments(seg, text_ids)),
            attend(q, k, v, temporal),
        )

    plain = all_three(q, k, v, text)
    with partitioning.activate(mesh, partitioning.DEFAULT_RULES):
        fn = jax.jit(all_three)
        hlo = fn.lower(q, k, v, text).compile().as_text()
        split = fn(q, k, v, text)
    assert "all-to-all" in hlo  # the head/sequence swap really happens
    for got, want in zip(split, plain):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert float(jnp.abs(split[0][0, 13:]).max()) == 0.0  # padding rows stay zero
    with partitioning.activate(mesh, partitioning.DEFAULT_RULES):
        q3 = jnp.zeros((b, l, 2 * sp - 1, d))
        with pytest.raises(ValueError, match="must both be divisible by the sequence split"):
            jax.jit(lambda x: attend(x, x, x, Segments(seg)))(q3)


def test_gradient_accumulation_equals_the_big_batch(reference):
    batch, ref_losses, ref_state = reference
    c = mesh_config((2, 1, 1, 1))
    c.mesh.num_devices = 2
    c.dit.train.grad_accum_steps = 4
    losses, state = run_steps(c, mesh_lib.from_config(c.mesh), batch)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        jax.device_get(state.params),
        ref_state.params,
    )
    c.dit.train.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the batch axis 8"):
        run_steps(c, mesh_lib.from_config(c.mesh), batch)


def test_logical_rules_map_names_to_mesh_axes():
    rules = partitioning.rules_from_config(tiny_config().mesh.rules)
    to_mesh = lambda names: tuple(nn.logical_to_mesh_axes(names, rules))
    assert to_mesh(("batch", "length", "embed")) == (("data", "fsdp"), "sequence", None)
    assert to_mesh(("embed", "heads")) == ("fsdp", "tensor")
    assert to_mesh(("mlp", "embed")) == ("tensor", "fsdp")
    with pytest.raises(ValueError, match="not a \\(logical name, mesh axes\\) pair"):
        partitioning.rules_from_config(((axes.EMBED, "fsdp", "x"),))
    c = tiny_config()
    c.mesh.rules = ((axes.EMBED, "model"),)
    with pytest.raises(ValueError, match="mesh axes must be among"):
        config_lib.validate(c)


def test_plan_counts_params_memory_and_flops_without_allocating():
    from sora_jax.training import planning as plan_lib

    c = tiny_config()
    replicated = plan_lib.plan(c, plan_lib.parse_mesh("data:8"), "h100", count_xla=False)
    split = plan_lib.plan(c, plan_lib.parse_mesh("data:2,fsdp:4,tensor:2"), count_xla=False)
    _, state = run_steps(c, mesh_lib.create_mesh(1), fixed_batch(c), steps=0)
    n = sum(x.size for x in jax.tree.leaves(state.params))
    assert replicated["params"] == n and replicated["param_bytes"] == 4 * n
    # Adam's mu and nu, and two int32 step counters.
    assert replicated["optimizer_bytes"] == 2 * replicated["param_bytes"] + 8
    assert replicated["per_device"]["param_bytes"] == replicated["param_bytes"]
    # fsdp 4 x tensor 2: big kernels split 8 ways; small vectors and the text encoder not.
    ratio = split["per_device"]["param_bytes"] / split["param_bytes"]
    assert 1 / 8 < ratio < 1 / 3, ratio
    # Same 8-way batch split; tensor parallelism splits the heads' and MLP's activations
    # (half of a GELU block's tensors), not the residual stream's: 3/4 of them remain.
    act = lambda p: p["per_device"]["activation_bytes_estimate"]
    assert act(split) == pytest.approx(0.75 * act(replicated), rel=0.02)
    assert replicated["device"]["fits"]
    # The analytic count agrees with XLA's count of the lowered step (once matmuls dominate).
    c.dit.model.hidden = 256
    wide = plan_lib.plan(c, plan_lib.parse_mesh("data:8"))
    assert abs(wide["flops_per_step_analytic"] / wide["flops_per_step_xla"] - 1) < 0.1, wide
    with pytest.raises(ValueError, match="axis:size pairs"):
        plan_lib.parse_mesh("model:8")


def test_replicated_state_saves_without_a_program_per_replica_and_restores(tmp_path):
    """A state replicated over the 8 devices: its small arrays are written by one replica
    (split, each of the 4 shapes compiled a slice program per device at the first save: 32
    here); a large one may still be written in slices, at most one program per device; all
    restore bit-exactly."""
    replicated = mesh_lib.replicated(mesh_lib.create_mesh(ici={"data": 8}))
    rng = np.random.default_rng(0)
    # Leading sizes divisible by the 8 replicas: the arrays orbax would split.
    shapes = [(8,), (16, 4), (32, 3, 3), (64, 2)] * 5 + [(2 * checkpoint.MIN_REPLICA_SLICE_BYTES,)]
    state = {
        f"a{i}": jax.device_put(rng.standard_normal(s).astype(np.float32), replicated)
        for i, s in enumerate(shapes)
    }
    compiles = []

    def on_event(event, secs, **kw):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(secs)

    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        ckpt.save(1, state, force=True)
        ckpt.wait()
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    # At most the large array's 8 slices (one program per device), nothing per small array.
    assert len(compiles) <= 8, len(compiles)
    restored = ckpt.restore(state)
    for k, v in state.items():
        assert restored[k].sharding == replicated
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v))

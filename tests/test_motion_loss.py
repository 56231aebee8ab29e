"""The temporal-difference loss: neighbour lookup in packed rows, and its values."""

import jax
import jax.numpy as jnp
import numpy as np
from test_train import _fixed_dit_batch, micro_config

from sora_jax.data import packing
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, motion_loss
from sora_jax.training import train_state as ts


def _packed(grids, seq_len=40, dim=2):
    rng = np.random.default_rng(0)
    items = [packing.patchify(rng.normal(size=g + (dim,)), (1, 1, 1)) for g in grids]
    batch, placements = packing.pack(items, seq_len, 1, 4)
    return batch, placements


def test_next_frame_index_finds_the_same_place_one_frame_later():
    grids = [(3, 2, 3), (1, 2, 2), (2, 1, 2)]
    batch, placements = _packed(grids)
    nxt = np.asarray(motion_loss.next_frame_index(batch["segment_ids"], batch["positions"]))
    expected = np.full(batch["segment_ids"].shape, -1)
    for (t, h, w), p in zip(grids, placements):
        for i in range(t * h * w):
            if i // (h * w) < t - 1:
                expected[0, p.start + i] = p.start + i + h * w
    np.testing.assert_array_equal(nxt, expected)
    # A dropped token (here: marked as padding) is nobody's neighbour.
    seg = batch["segment_ids"].copy()
    seg[0, placements[0].start + 7] = 0
    nxt = np.asarray(motion_loss.next_frame_index(seg, batch["positions"]))
    assert nxt[0, placements[0].start + 1] == -1 and nxt[0, placements[0].start + 7] == -1


def test_motion_loss_ignores_errors_shared_by_all_frames():
    batch, _ = _packed([(3, 2, 2), (2, 2, 1)])
    seg, pos = batch["segment_ids"], batch["positions"]
    nxt = motion_loss.next_frame_index(seg, pos)
    valid = jnp.asarray(seg > 0)
    # An error that depends only on (h, w): the same in every frame -> no motion loss.
    static = jnp.asarray(np.stack([pos[..., 1] * 1.5 - pos[..., 2], pos[..., 2] + 0.5], -1))
    np.testing.assert_allclose(motion_loss.motion_loss(static, valid, nxt), 0.0, atol=1e-7)
    # An error growing by 1 per frame in one channel: every pair contributes 1 / dim.
    moving = static + jnp.asarray(np.stack([pos[..., 0], 0 * pos[..., 0]], -1), jnp.float32)
    np.testing.assert_allclose(motion_loss.motion_loss(moving, valid, nxt), 0.5, rtol=1e-6)
    # Pairs with an invalid token (e.g. a given frame) do not count.
    frame0 = valid & jnp.asarray(pos[..., 0] > 0)
    only_late = moving.at[..., 0].add(jnp.where(pos[..., 0] == 0, 100.0, 0.0))
    np.testing.assert_allclose(motion_loss.motion_loss(only_late, frame0, nxt), 0.5, rtol=1e-6)


def test_train_step_adds_the_weighted_motion_loss():
    metrics = {}
    for w in (0.0, 2.0):
        c = micro_config()
        c.diffusion.motion_loss_weight = w
        text, batch = _fixed_dit_batch(c)
        dit = dit_trainer.build_dit(c, text.dim)
        tx = ts.make_optimizer(c.dit.train)
        state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
        step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
        _, metrics[w] = step(state, batch, jax.random.PRNGKey(0))
    assert "motion_loss" not in metrics[0.0] and float(metrics[2.0]["motion_loss"]) > 0
    np.testing.assert_allclose(
        metrics[2.0]["loss"], metrics[0.0]["loss"] + 2.0 * metrics[2.0]["motion_loss"], rtol=1e-5
    )


def test_motion_loss_under_gradient_accumulation_equals_the_whole_batch():
    c = micro_config()
    c.diffusion.motion_loss_weight = 1.5
    text, batch = _fixed_dit_batch(c)
    dit = dit_trainer.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    out = {}
    for k in (1, 2):
        c.dit.train.grad_accum_steps = k
        step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
        out[k] = step(state, batch, jax.random.PRNGKey(0))
    for key in ("loss", "motion_loss"):
        np.testing.assert_allclose(out[2][1][key], out[1][1][key], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        out[2][0].params,
        out[1][0].params,
    )

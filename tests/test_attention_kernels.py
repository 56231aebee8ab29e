"""Every attention kernel equals the dense masked reference (forward and gradients, float32).

Rows are packed like training rows: random segment sizes, padding at the end, dropped tokens
(holes in the positions), 1-frame images, factorised layouts, cross and joint text. The Pallas
kernels run in interpret mode on CPU.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.kernels import blockwise, dense
from sora_jax.kernels.segments import Segments, block_overlap, has_key, layout_segments
from sora_jax.models import attention as attention_lib
from sora_jax.models import dit as dit_lib
from sora_jax.parallel import partitioning
from sora_jax.training import planning

TOL = 1e-5
KERNELS = ["blockwise", "splash", "flash_gpu", "xla"]


def packed_row(rng, length, videos, drop=0.0):
    """(segment_ids i32[length], positions i32[length 3]): videos (t, h, w) packed in order,
    a fraction ``drop`` of each video's tokens dropped, padding (id 0) after them."""
    ids, pos = [], []
    for s, (t, h, w) in enumerate(videos, start=1):
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1)
        grid = grid.reshape(-1, 3)
        keep = rng.random(len(grid)) >= drop
        keep[0] = True
        pos.append(grid[keep])
        ids.append(np.full(keep.sum(), s))
    ids, pos = np.concatenate(ids), np.concatenate(pos)
    assert len(ids) <= length
    pad = length - len(ids)
    return np.pad(ids, (0, pad)).astype(np.int32), np.pad(pos, ((0, pad), (0, 0))).astype(np.int32)


def rows(seed=0, length=96):
    """Two packed rows: four videos with an image and dropped tokens; one video and padding."""
    rng = np.random.default_rng(seed)
    a = packed_row(rng, length, [(3, 2, 4), (1, 3, 3), (2, 3, 4), (2, 2, 2)], drop=0.2)
    b = packed_row(rng, length, [(4, 3, 5)])
    ids, pos = (jnp.asarray(np.stack(x)) for x in zip(a, b))
    return ids, pos


def qkv(seed, b, lq, lk, h=2, d=8):
    r = np.random.default_rng(seed)
    q = r.normal(size=(b, lq, h, d))
    k, v = r.normal(size=(2, b, lk, h, d))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def text_ids(num_segments, per_segment=3, length=14):
    """Caption tokens of each row: segment j's tokens carry id j, then padding."""
    out = np.zeros((len(num_segments), length), np.int32)
    for r, n in enumerate(num_segments):
        out[r, : n * per_segment] = np.repeat(np.arange(1, n + 1), per_segment)
    return jnp.asarray(out)


def layout_mask(ids, pos, layout):
    """The dense reference mask of a layout, from positions (what the grouping must equal)."""
    m = dense.mask(ids, ids)
    for a in {"thw": (), "hw": (0,), "t": (1, 2)}[layout]:
        m = m & (pos[..., a][:, :, None] == pos[..., a][:, None, :])[:, None]
    return m


def masked_reference(q, k, v, mask):
    """Softmax attention with a boolean mask, zero for queries with no key."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(mask, s, -jnp.inf)
    p = jnp.nan_to_num(jnp.exp(s - jax.nn.logsumexp(s, axis=-1, keepdims=True)))
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def run(kernel, q, k, v, segments, blocks=(16, 16)):
    return attention_lib.attention(q, k, v, segments, kernel, block_q=blocks[0], block_kv=blocks[1])


def grads(fn, q, k, v):
    loss = lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)) * jnp.cos(q[..., :1]))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def assert_same(fn, ref, q, k, v):
    np.testing.assert_allclose(fn(q, k, v), ref(q, k, v), atol=TOL, rtol=0)
    for got, want in zip(grads(fn, q, k, v), grads(ref, q, k, v)):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["thw", "hw", "t"])
def test_self_attention_equals_dense_reference(kernel, layout):
    ids, pos = rows()
    q, k, v = qkv(1, *ids.shape, ids.shape[1])
    segments = layout_segments(ids, pos, layout)
    mask = layout_mask(ids, pos, layout)
    assert_same(
        lambda q, k, v: run(kernel, q, k, v, segments),
        lambda q, k, v: masked_reference(q, k, v, mask),
        q, k, v,
    )  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
def test_cross_attention_to_text_equals_dense_reference(kernel):
    ids, _ = rows()
    tids = text_ids([4, 1])
    q, k, v = qkv(2, ids.shape[0], ids.shape[1], tids.shape[1])
    mask = dense.mask(ids, tids)
    assert_same(
        lambda q, k, v: run(kernel, q, k, v, Segments(ids, tids)),
        lambda q, k, v: masked_reference(q, k, v, mask),
        q, k, v,
    )  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
def test_fully_padded_rows_give_zeros_not_nan(kernel):
    ids = jnp.zeros((2, 40), jnp.int32).at[1, :7].set(1)
    q, k, v = qkv(3, 2, 40, 40)
    out = run(kernel, q, k, v, Segments(ids))
    gq = grads(lambda q, k, v: run(kernel, q, k, v, Segments(ids)), q, k, v)[0]
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(gq)))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1, 7:], 0.0)
    np.testing.assert_array_equal(gq[0], 0.0)


@pytest.mark.parametrize("layout", ["thw", "hw", "t"])
def test_joint_text_blocks_equal_the_dense_masked_block(layout):
    """A 'joint' DiT block with any kernel equals the same block on dense masks (the text
    stream attends to its segment's video and text, video tokens to their group and text)."""
    ids, pos = rows(seed=4, length=64)
    tids = text_ids([4, 1], length=16)
    b, l, m, hidden = ids.shape[0], ids.shape[1], tids.shape[1], 16
    r = np.random.default_rng(5)
    x = jnp.asarray(r.normal(size=(b, l, hidden)), jnp.float32)
    text = jnp.asarray(r.normal(size=(b, m, hidden)), jnp.float32)
    # One conditioning entry per token (video then text): the block sees arbitrary modulation.
    cond = dit_lib.Conditioning(
        table=jnp.asarray(r.normal(size=(b, l + m, hidden)), jnp.float32),
        video=jnp.broadcast_to(jnp.arange(l), (b, l)),
        text=jnp.broadcast_to(l + jnp.arange(m), (b, m)),
    )
    block = lambda impl: dit_lib.DiTBlock(
        hidden, 2, text_attention="joint", attention_impl=impl, attention_blocks=(16, 16)
    )
    segments = dit_lib.block_segments(ids, tids, pos, layout, "joint")
    params = block("blockwise").init(jax.random.PRNGKey(0), x, cond, pos, segments, text)
    # Perturb every weight (adaLN is zero-initialised and would hide the attention).
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.1 * jax.random.normal(kk, p.shape) for p, kk in zip(leaves, keys)]
    )

    # Dense reference: the same block with attention replaced by masked softmax over
    # [video, text] tokens, the mask built from positions.
    video_mask = layout_mask(ids, pos, layout)
    cross = dense.mask(ids, tids)
    top = jnp.concatenate([video_mask, cross], -1)
    bottom = jnp.concatenate([jnp.swapaxes(cross, -1, -2), dense.mask(tids, tids)], -1)
    full_mask = jnp.concatenate([top, bottom], -2)

    def dense_block_attention(self, q, k, v, segments, return_lse=False):
        if q.shape[1] == l + m:  # full layout: one call over video + text
            return masked_reference(q, k, v, full_mask)
        if q.shape[1] == m:  # text queries over video + text keys
            return masked_reference(q, k, v, full_mask[:, :, l:])
        # video queries (factorised): the two partial attentions of the block, merged
        sub = video_mask if k.shape[1] == l else cross
        out = masked_reference(q, k, v, sub)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        lse = jnp.swapaxes(jax.nn.logsumexp(jnp.where(sub, s, -jnp.inf), axis=-1), 1, 2)
        return out, lse

    def apply(impl, params, x, text):
        return block(impl).apply(params, x, cond, pos, segments, text)

    for impl in ("blockwise", "splash"):
        got = lambda p, x, t: apply(impl, p, x, t)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dit_lib.DiTBlock, "_attend", dense_block_attention)
            want_out = apply(impl, params, x, text)
            want_grad = jax.grad(
                lambda p: sum(jnp.sum(jnp.sin(o)) for o in apply(impl, p, x, text))
            )(params)
        got_out = got(params, x, text)
        got_grad = jax.grad(lambda p: sum(jnp.sum(jnp.sin(o)) for o in got(p, x, text)))(params)
        # Block outputs and weight gradients (sums over every token): 1e-5 of their scale.
        for a, w in zip(got_out, want_out):
            np.testing.assert_allclose(a, w, atol=TOL * float(jnp.abs(w).max()), rtol=0)
        for a, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
            np.testing.assert_allclose(a, w, atol=TOL * float(jnp.abs(w).max()), rtol=0)


def test_merge_of_partial_attentions_is_exact():
    ids, _ = rows()
    q, k, v = qkv(6, *ids.shape, ids.shape[1])
    half = ids.shape[1] // 2
    whole = lambda q, k, v: blockwise.attention(q, k, v, ids, ids, block_q=16, block_kv=16)[0]

    def merged(q, k, v):
        parts = [
            blockwise.attention(q, k[:, s], v[:, s], ids, ids[:, s], block_q=16, block_kv=16)
            for s in (slice(0, half), slice(half, None))
        ]
        return blockwise.merge(parts)[0]

    assert_same(merged, whole, q, k, v)


def test_layout_groups_are_contiguous_runs_and_skip_blocks():
    ids, pos = rows(length=128)
    for layout in ("hw", "t"):
        s = layout_segments(ids, pos, layout)
        sorted_ids = np.asarray(s.q)
        for row in sorted_ids:
            real = row[row > 0]
            assert np.all(np.diff(real) >= 0) and np.all(
                row[len(real) :] == 0
            )  # runs, padding last
        # Each id is one (segment, frame) or (segment, column) group.
        p = np.asarray(jnp.take_along_axis(pos, s.order[..., None], axis=1))
        seg = np.asarray(jnp.take_along_axis(ids, s.order, axis=1))
        shared = {"hw": [0], "t": [1, 2]}[layout]
        for r in range(ids.shape[0]):
            groups = {}
            for i, g in enumerate(sorted_ids[r]):
                if g:
                    groups.setdefault(g, set()).add((seg[r, i], *p[r, i, shared]))
            assert all(len(v) == 1 for v in groups.values())
            assert len(set().union(*groups.values())) == len(groups)
        # Many small groups: most block pairs are skipped.
        overlap = np.asarray(block_overlap(s.q, s.q, 16, 16))
        assert overlap.mean() < 0.35, (layout, overlap.mean())


def test_has_key_and_overlap_values():
    seg = Segments(jnp.array([[1, 1, 2, 3, 0, 0]]), jnp.array([[1, 2, 2, 0]]))
    np.testing.assert_array_equal(has_key(seg), [[True, True, True, False, False, False]])
    ov = block_overlap(jnp.array([[1, 1, 2, 2, 0, 0]]), jnp.array([[1, 1, 3, 3]]), 2, 2)
    np.testing.assert_array_equal(ov[0], [[True, False], [False, False], [False, False]])


def test_bad_input_is_one_clear_error():
    ids, _ = rows()
    q, k, v = qkv(0, *ids.shape, ids.shape[1])
    with pytest.raises(ValueError, match="unknown attention implementation 'flash9'"):
        run("flash9", q, k, v, Segments(ids))
    with pytest.raises(ValueError, match="do not match"):
        run("blockwise", q, k, v, Segments(ids[:, :5]))
    with pytest.raises(ValueError, match="attention layout"):
        layout_segments(ids, jnp.zeros((*ids.shape, 3), jnp.int32), "diagonal")


def test_auto_picks_the_platform_kernel():
    assert attention_lib.resolve("auto", "tpu") == "splash"
    assert attention_lib.resolve("auto", "gpu") == "flash_gpu"
    assert attention_lib.resolve("auto", "cpu") == "blockwise"
    assert attention_lib.resolve("sequence_parallel", "cpu") == "xla"


def test_splash_lowers_and_compiles_for_a_tpu_topology():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler here")
    devices = planning.topology_devices("v5e:2x2")
    mesh = jax.sharding.Mesh(
        np.asarray(devices).reshape(1, 2, 2, 1), ("data", "fsdp", "tensor", "sequence")
    )
    b, l, h, d = 4, 1024, 4, 64
    spec = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((b, l), jnp.int32)

    def loss(q, k, v, ids):
        out = attention_lib.attention(q, k, v, Segments(ids), "auto", block_q=512, block_kv=512)
        return jnp.sum(out.astype(jnp.float32))

    with partitioning.activate(mesh, partitioning.DEFAULT_RULES):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec, ids).compile()
    hlo = compiled.as_text()
    assert "splash" in hlo  # the Mosaic kernel, not a dense fallback
    assert f"f32[{b // 2},{h // 2},{l},{l}]" not in hlo and f"[{l},{l}]" not in hlo


@pytest.mark.parametrize("layout", ["full", "factorised"])
def test_whole_dit_equals_the_dense_kernel(layout):
    """The DiT's output and parameter gradients on packed rows are the same with every kernel."""
    ids, pos = rows(seed=7, length=64)
    b, l, s, lt, dim = ids.shape[0], ids.shape[1], 4, 3, 8
    r = np.random.default_rng(8)
    x = jnp.asarray(r.normal(size=(b, l, 12)), jnp.float32)
    t = jnp.asarray(r.uniform(size=(b, s)), jnp.float32)
    text = jnp.asarray(r.normal(size=(b, s, lt, dim)), jnp.float32)
    text_mask = jnp.asarray(r.uniform(size=(b, s, lt)) < 0.8).at[:, :, 0].set(True)
    args = (x, t, ids, pos, text, text_mask)
    model = lambda impl: dit_lib.DiT(
        patch_dim=12, hidden=32, depth=2, num_heads=2, text_dim=dim, attention_layout=layout,
        attention_impl=impl, attention_blocks=(16, 16),
    )  # fmt: skip
    params = model("xla").init(jax.random.PRNGKey(0), *args)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.1 * jax.random.normal(kk, p.shape) for p, kk in zip(leaves, keys)]
    )

    def out_and_grad(impl):
        loss = lambda p: jnp.sum(jnp.sin(model(impl).apply(p, *args)))
        return model(impl).apply(params, *args), jax.grad(loss)(params)

    want_out, want_grad = out_and_grad("xla")
    for impl in ("blockwise", "splash"):  # flash_gpu: kernel-level tests above
        got_out, got_grad = out_and_grad(impl)
        np.testing.assert_allclose(got_out, want_out, atol=TOL * float(jnp.abs(want_out).max()))
        for a, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
            np.testing.assert_allclose(a, w, atol=TOL * float(jnp.abs(w).max()), rtol=0)
        np.testing.assert_array_equal(got_out[ids == 0], 0.0)

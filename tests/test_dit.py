"""Tests for 3D RoPE, masked attention and the packed DiT (no leakage between segments)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.data.packing import grid_positions, pack, patchify
from sora_jax.kernels.dense import mask as segment_mask
from sora_jax.kernels.segments import Segments
from sora_jax.models.attention import attention
from sora_jax.models.dit import DiT, absolute_position_features, timestep_embedding
from sora_jax.models.rope import axis_dims, rope_3d

TOL = 1e-5


# ----------------------------------------------------------------------------- RoPE


def test_rope_relative_and_norm_preserving():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(k1, (1, 5, 2, 16))
    k = jax.random.normal(k2, (1, 5, 2, 16))
    pos = jax.random.randint(k3, (1, 5, 3), 0, 20)
    shift = jnp.array([3, -7, 11])

    def scores(p):
        return jnp.einsum("bqhd,bkhd->bhqk", rope_3d(q, p), rope_3d(k, p))

    s0 = scores(pos)
    np.testing.assert_allclose(scores(pos + shift), s0, atol=1e-4)
    # Norms are preserved, and positions matter (scores change when one axis moves alone).
    np.testing.assert_allclose(
        jnp.linalg.norm(rope_3d(q, pos), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
    )
    for axis in range(3):
        moved = pos.at[0, 0, axis].add(1)
        assert float(jnp.max(jnp.abs(scores(moved) - s0))) > 1e-3
    # Position 0 is the identity.
    np.testing.assert_allclose(rope_3d(q, jnp.zeros_like(pos)), q, atol=1e-6)


def test_rope_axis_dims():
    assert axis_dims(64) == (16, 24, 24)
    assert sum(axis_dims(8)) == 8 and all(d % 2 == 0 for d in axis_dims(8))
    with pytest.raises(ValueError, match="even"):
        axis_dims(7)


# ------------------------------------------------------------------------ attention


def test_segment_mask_values():
    m = segment_mask(jnp.array([[1, 1, 2, 0]]), jnp.array([[1, 2, 2, 0, 1]]))
    assert m.shape == (1, 1, 4, 5)
    expected = np.array([[1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(m[0, 0], expected)


def test_attention_isolates_segments_and_zeroes_padding():
    ks = jax.random.split(jax.random.PRNGKey(1), 4)
    b, l, h, d = 1, 7, 2, 8
    q, k, v = (jax.random.normal(kk, (b, l, h, d)) for kk in ks[:3])
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 0]])
    mask = Segments(seg)
    out = attention(q, k, v, mask)
    # Reference for segment 1 alone.
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q[:, :3], k[:, :3]) / np.sqrt(d), -1)
    ref = jnp.einsum("bhqk,bkhd->bqhd", w, v[:, :3])
    np.testing.assert_allclose(out[:, :3], ref, atol=1e-5)
    # Changing every segment-2 key/value leaves segment-1 outputs identical.
    noise = jax.random.normal(ks[3], (b, l, h, d)) * (seg == 2)[..., None, None]
    out2 = attention(q, k + noise, v + 3 * noise, mask)
    np.testing.assert_array_equal(out2[:, :3], out[:, :3])
    assert float(jnp.max(jnp.abs(out2[:, 3:6] - out[:, 3:6]))) > 1e-3
    # The padding query (no allowed key) gives exact zeros.
    np.testing.assert_array_equal(out[:, 6], 0.0)
    assert bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(ValueError, match="implementation"):
        attention(q, k, v, mask, implementation="flash9")


# ------------------------------------------------------------------------------ DiT

PATCH, C = (1, 2, 2), 3
PATCH_DIM, TEXT_DIM, LT, L, S = 12, 16, 5, 24, 2


def test_absolute_position_features_are_per_segment_and_centred():
    grid_a, grid_b = (2, 2, 3), (1, 3, 2)
    pos = np.concatenate([grid_positions(grid_b), grid_positions(grid_a), np.zeros((3, 3))])
    seg = np.repeat([1, 2, 0], [6, 12, 3])
    got = np.asarray(absolute_position_features(jnp.asarray(seg[None]), jnp.asarray(pos[None])))
    for start, grid in ((0, grid_b), (6, grid_a)):
        p = grid_positions(grid).astype(np.float32)
        coords = (p[:, 0], p[:, 1] - (grid[1] - 1) / 2, p[:, 2] - (grid[2] - 1) / 2)
        want = np.concatenate([timestep_embedding(c, 32, max_period=100.0) for c in coords], -1)
        np.testing.assert_allclose(got[0, start : start + len(p)], want, atol=1e-6)


@pytest.fixture(scope="module", params=[False, True], ids=["rope", "rope+abs"])
def dit_setup(request):
    model = DiT(
        patch_dim=PATCH_DIM,
        hidden=32,
        depth=2,
        num_heads=4,
        text_dim=TEXT_DIM,
        abs_positions=request.param,
    )
    rng = np.random.default_rng(0)
    lat_a = rng.standard_normal((2, 4, 6, C)).astype(np.float32)  # video: 2x2x3 = 12 tokens
    lat_b = rng.standard_normal((1, 6, 4, C)).astype(np.float32)  # image: 1x3x2 = 6 tokens
    a, b = patchify(lat_a, PATCH), patchify(lat_b, PATCH)
    text_a = rng.standard_normal((LT, TEXT_DIM)).astype(np.float32)
    text_b = rng.standard_normal((LT, TEXT_DIM)).astype(np.float32)
    mask_a = np.array([1, 1, 1, 0, 0], bool)
    mask_b = np.array([1, 1, 1, 1, 0], bool)
    zeros = jnp.zeros((1, L, PATCH_DIM))

    @jax.jit
    def init():
        variables = model.init(
            jax.random.PRNGKey(0),
            zeros,
            jnp.zeros((1, S)),
            jnp.ones((1, L), jnp.int32),
            jnp.zeros((1, L, 3), jnp.int32),
            jnp.zeros((1, S, LT, TEXT_DIM)),
            jnp.ones((1, S, LT), bool),
        )
        params = variables["params"]
        # Non-zero everywhere: zero-initialised adaLN / output layers would hide leaks.
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(42), len(leaves))
        noisy = jax.tree_util.tree_unflatten(
            treedef, [x + 0.3 * jax.random.normal(k_, x.shape) for x, k_ in zip(leaves, keys)]
        )
        return params, noisy

    params, noisy = init()
    apply = jax.jit(lambda p, *args: model.apply({"params": p}, *args))
    return dict(
        model=model,
        params=params,
        noisy=noisy,
        apply=apply,
        a=a,
        b=b,
        text=(text_a, text_b),
        tmask=(mask_a, mask_b),
    )


def _rows(setup, rows, t_ab=(0.3, 0.8), text_ab=None, tokens_ab=None):
    """Packs rows (lists of 'a'/'b', one row each) and builds the DiT inputs."""
    tok = dict(zip("ab", tokens_ab or (setup["a"][0], setup["b"][0])))
    items = [(tok[n], setup[n][1]) for row in rows for n in row]
    # One row per list: seq_len L fits a+b, so pack each row separately then stack.
    batches, placements = [], []
    i = 0
    for row in rows:
        bt, pl = pack(items[i : i + len(row)], L, 1, S)
        batches.append(bt)
        placements.append(pl)
        i += len(row)
    text_ab = text_ab or setup["text"]
    tt = np.zeros((len(rows), S), np.float32)
    text = np.zeros((len(rows), S, LT, TEXT_DIM), np.float32)
    tmask = np.zeros((len(rows), S, LT), bool)
    for r, (row, pl) in enumerate(zip(rows, placements)):
        for n, p in zip(row, pl):
            j = "ab".index(n)
            tt[r, p.segment - 1] = t_ab[j]
            text[r, p.segment - 1] = text_ab[j]
            tmask[r, p.segment - 1] = setup["tmask"][j]
    cat = lambda k: np.concatenate([bt[k] for bt in batches])
    args = (cat("tokens"), tt, cat("segment_ids"), cat("positions"), text, tmask)
    return args, placements


def test_dit_zero_init_and_shapes(dit_setup):
    s = dit_setup
    args, _ = _rows(s, [["a", "b"], ["b"]])
    out0 = s["apply"](s["params"], *args)
    assert out0.shape == (2, L, PATCH_DIM) and out0.dtype == jnp.float32
    np.testing.assert_array_equal(out0, 0.0)  # adaLN-Zero: the fresh model outputs zeros
    out = s["apply"](s["noisy"], *args)
    assert bool(jnp.all(jnp.isfinite(out)))
    seg = args[2]
    np.testing.assert_array_equal(np.asarray(out)[seg == 0], 0.0)  # padding outputs zero
    assert float(jnp.min(jnp.abs(out[seg > 0]).sum(-1))) > 0


def test_dit_packing_is_invisible(dit_setup):
    s = dit_setup
    # Row 0: A then B; row 1: A alone; row 2: B then A (A at offset 6, segment 2).
    args, pl = _rows(s, [["a", "b"], ["a"], ["b", "a"]])
    out = np.asarray(s["apply"](s["noisy"], *args))
    a_packed = out[0, :12]
    np.testing.assert_allclose(out[1, :12], a_packed, atol=TOL)
    np.testing.assert_allclose(out[2, 6:18], a_packed, atol=TOL)
    np.testing.assert_allclose(out[2, :6], out[0, 12:18], atol=TOL)  # B likewise


def test_dit_no_leak_between_segments(dit_setup):
    s = dit_setup
    rng = np.random.default_rng(5)
    base, _ = _rows(s, [["a", "b"]])
    out = np.asarray(s["apply"](s["noisy"], *base))
    new_b_tok = rng.standard_normal(s["b"][0].shape).astype(np.float32)
    new_b_text = rng.standard_normal((LT, TEXT_DIM)).astype(np.float32)
    variants = {
        "tokens": _rows(s, [["a", "b"]], tokens_ab=(s["a"][0], new_b_tok))[0],
        "text": _rows(s, [["a", "b"]], text_ab=(s["text"][0], new_b_text))[0],
        "time": _rows(s, [["a", "b"]], t_ab=(0.3, 0.1))[0],
    }
    for name, args in variants.items():
        o = np.asarray(s["apply"](s["noisy"], *args))
        np.testing.assert_allclose(o[0, :12], out[0, :12], atol=TOL, err_msg=name)
        assert np.abs(o[0, 12:18] - out[0, 12:18]).max() > 1e-3, name


def test_dit_own_text_and_time_matter(dit_setup):
    s = dit_setup
    rng = np.random.default_rng(6)
    base, _ = _rows(s, [["a", "b"]])
    out = np.asarray(s["apply"](s["noisy"], *base))
    # A's caption changes A (and only A).
    new_a_text = rng.standard_normal((LT, TEXT_DIM)).astype(np.float32)
    o = np.asarray(
        s["apply"](s["noisy"], *_rows(s, [["a", "b"]], text_ab=(new_a_text, s["text"][1]))[0])
    )
    assert np.abs(o[0, :12] - out[0, :12]).max() > 1e-3
    np.testing.assert_allclose(o[0, 12:18], out[0, 12:18], atol=TOL)
    # Masked-out caption positions are ignored.
    x, t, seg, pos, text, tmask = base
    text2 = np.where(tmask[..., None], text, 100.0).astype(np.float32)
    o = np.asarray(s["apply"](s["noisy"], x, t, seg, pos, text2, tmask))
    np.testing.assert_allclose(o, out, atol=TOL)
    # Cross-attention itself carries text, not only the pooled conditioning: a change to
    # A's caption that keeps its masked mean still changes A's output.
    text3 = text.copy()
    text3[0, 0, 0] += 1.0
    text3[0, 0, 1] -= 1.0
    o = np.asarray(s["apply"](s["noisy"], x, t, seg, pos, text3, tmask))
    assert np.abs(o[0, :12] - out[0, :12]).max() > 1e-3


def test_dit_rejects_bad_shapes(dit_setup):
    s = dit_setup
    x, t, seg, pos, text, tmask = _rows(s, [["a", "b"]])[0]
    with pytest.raises(ValueError, match="patch_dim"):
        s["model"].apply({"params": s["params"]}, x[..., :5], t, seg, pos, text, tmask)
    with pytest.raises(ValueError, match="t "):
        s["model"].apply({"params": s["params"]}, x, t[:, :1], seg, pos, text, tmask)

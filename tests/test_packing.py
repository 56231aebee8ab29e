"""Tests for patch-n'-pack (sora_jax.data.packing)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sora_jax.data import packing
from sora_jax.data.packing import Packer, Placement, pack, patchify, unpack, unpatchify

PATCH = (1, 2, 2)
C = 3


def _latent(rng, t, h, w, c=C):
    return rng.standard_normal((t, h, w, c)).astype(np.float32)


def _latents(rng, n):
    """Images (1 frame) and videos of mixed resolutions / aspect ratios."""
    out = []
    for _ in range(n):
        t = int(rng.choice([1, 2, 3]))
        h, w = (int(v) for v in rng.choice([2, 4, 6, 8], size=2))
        out.append(_latent(rng, t, h, w))
    return out


def test_patchify_layout_and_inverse():
    rng = np.random.default_rng(0)
    lat = _latent(rng, 4, 6, 8)
    tok, pos = patchify(lat, (2, 3, 2))
    assert tok.shape == (2 * 2 * 4, 2 * 3 * 2 * C) and tok.dtype == np.float32
    assert pos.shape == (16, 3) and pos.dtype == np.int32
    # Token i is the patch at grid position pos[i]; t-major then h then w.
    for i in (0, 5, 15):
        gt, gh, gw = pos[i]
        assert i == (gt * 2 + gh) * 4 + gw
        patch = lat[gt * 2 : gt * 2 + 2, gh * 3 : gh * 3 + 3, gw * 2 : gw * 2 + 2]
        np.testing.assert_array_equal(tok[i], patch.reshape(-1))
    np.testing.assert_array_equal(unpatchify(tok, (2, 2, 4), (2, 3, 2), C), lat)


def test_patchify_errors():
    with pytest.raises(ValueError, match="h=5"):
        patchify(np.zeros((1, 5, 4, 2), np.float32), (1, 2, 2))
    with pytest.raises(ValueError, match="t=3"):
        patchify(np.zeros((3, 4, 4, 2), np.float32), (2, 2, 2))
    with pytest.raises(ValueError, match="grid"):
        unpatchify(np.zeros((4, 8), np.float32), (1, 2, 3), (1, 2, 2), 2)


def test_pack_unpack_roundtrip_exact():
    rng = np.random.default_rng(1)
    lats = _latents(rng, 16)
    items = [patchify(l, PATCH) for l in lats]
    batch, placements = pack(items, seq_len=64, num_rows=3, max_segments=4)
    assert batch["tokens"].shape == (3, 64, 2 * 2 * C) and batch["tokens"].dtype == np.float32
    assert batch["segment_ids"].shape == (3, 64) and batch["positions"].shape == (3, 64, 3)
    assert 6 <= sum(p is not None for p in placements) < 16  # some packed, some dropped
    out = unpack(batch["tokens"], placements)
    for lat, (tok, pos), p, o in zip(lats, items, placements, out):
        if p is None:
            assert o is None
            continue
        np.testing.assert_array_equal(o, tok)
        assert p.grid == (lat.shape[0], lat.shape[1] // 2, lat.shape[2] // 2)
        np.testing.assert_array_equal(unpatchify(o, p.grid, PATCH, C), lat)
        sl = slice(p.start, p.start + p.length)
        np.testing.assert_array_equal(batch["positions"][p.row, sl], pos)
        assert np.all(batch["segment_ids"][p.row, sl] == p.segment)
    pad = batch["segment_ids"] == 0
    np.testing.assert_array_equal(batch["tokens"][pad], 0)
    np.testing.assert_array_equal(batch["positions"][pad], 0)
    assert packing.padding_fraction(batch["segment_ids"]) == pytest.approx(pad.mean())


def _item(n, d=2, fill=1.0):
    return np.full((n, d), fill, np.float32), np.zeros((n, 3), np.int32)


def test_first_fit_rows_tails_and_drops():
    lengths = [6, 5, 4, 3, 2, 7, 1]
    batch, pl = pack(
        [_item(n, fill=i + 1) for i, n in enumerate(lengths)],
        seq_len=10,
        num_rows=2,
        max_segments=2,
    )
    # 6 -> row0; 5 -> row1; 4 -> row0 (full); 3 -> row1 (8 used, 2 segs); rest: no room.
    assert pl[0] == Placement(row=0, segment=1, start=0, length=6, grid=(1, 1, 1))
    assert pl[1] == Placement(row=1, segment=1, start=0, length=5, grid=(1, 1, 1))
    assert pl[2] == Placement(row=0, segment=2, start=6, length=4, grid=(1, 1, 1))
    assert pl[3] == Placement(row=1, segment=2, start=5, length=3, grid=(1, 1, 1))
    assert pl[4:] == [None, None, None]  # max_segments reached / no space
    np.testing.assert_array_equal(
        batch["segment_ids"], [[1] * 6 + [2] * 4, [1] * 5 + [2] * 3 + [0, 0]]
    )
    np.testing.assert_array_equal(batch["tokens"][1, :, 0], [2] * 5 + [4] * 3 + [0, 0])
    assert packing.padding_fraction(batch["segment_ids"]) == pytest.approx(0.1)
    # The segment limit, not space, drops an item that would fit.
    _, pl = pack([_item(1)] * 3, seq_len=10, num_rows=1, max_segments=2)
    assert pl[2] is None and pl[1].segment == 2


def test_padding_only_at_tails_random():
    rng = np.random.default_rng(2)
    items = [_item(int(n)) for n in rng.integers(1, 20, size=40)]
    batch, pl = pack(items, seq_len=32, num_rows=5, max_segments=6)
    for row in batch["segment_ids"]:
        nz = np.flatnonzero(row == 0)
        if nz.size:
            assert np.all(row[nz[0] :] == 0)
        used = row[row > 0]
        assert np.all(np.diff(used) >= 0) and used.max(initial=0) <= 6
    # A dropped item really did not fit in any row at its turn: check with final fill.
    fill = (batch["segment_ids"] > 0).sum(1)
    segs = batch["segment_ids"].max(1)
    for (tok, _), p in zip(items, pl):
        if p is None:
            assert np.all((fill + len(tok) > 32) | (segs >= 6))


def test_pack_errors():
    with pytest.raises(ValueError, match="length 11"):
        pack([_item(3), _item(11)], seq_len=10, num_rows=2, max_segments=2)
    with pytest.raises(ValueError, match="token dim"):
        pack([_item(3, d=2), _item(3, d=4)], seq_len=10, num_rows=2, max_segments=2)
    with pytest.raises(ValueError, match="dim"):
        pack([], seq_len=10, num_rows=2, max_segments=2)
    batch, pl = pack([], seq_len=4, num_rows=1, max_segments=1, dim=3)
    assert batch["tokens"].shape == (1, 4, 3) and pl == []


def test_packer_stream_low_padding_and_no_loss():
    rng = np.random.default_rng(3)
    seq_len, rows = 128, 2
    packer = Packer(seq_len, rows, max_segments=8, buffer_size=16)
    sizes = {}
    emitted = []
    for key in range(100):
        n = int(rng.integers(4, 65))
        sizes[key] = n
        tok = np.full((n, 2), key, np.float32)
        out = packer.add(key, tok, np.zeros((n, 3), np.int32))
        if out is not None:
            emitted.append(out)
    assert len(emitted) >= 10
    seen = [k for b in emitted for k in b.keys] + packer.pending_keys
    assert sorted(seen) == list(range(100))
    fracs = [b.padding_fraction for b in emitted]
    assert np.mean(fracs) < 0.15, fracs
    emitted += packer.flush()
    assert packer.pending_keys == []
    assert sorted(k for b in emitted for k in b.keys) == list(range(100))
    for b in emitted:
        segs = b.batch["segment_ids"]
        assert b.padding_fraction == pytest.approx(np.mean(segs == 0))
        for row in segs:
            nz = np.flatnonzero(row == 0)
            assert nz.size == 0 or np.all(row[nz[0] :] == 0)
        # Each key's tokens sit where its placement says.
        for k, p, o in zip(b.keys, b.placements, unpack(b.batch["tokens"], b.placements)):
            assert o.shape == (sizes[k], 2) and np.all(o == k)


def test_packer_oldest_item_always_leaves():
    # Small items keep arriving; the big old one must not starve.
    packer = Packer(seq_len=10, num_rows=1, max_segments=10, buffer_size=3)
    out = [packer.add(0, *_item(2)), packer.add(1, *_item(9)), packer.add(2, *_item(9))]
    assert out[:2] == [None, None] and out[2].keys == [0]  # oldest first, then 9 & 9 do not fit
    assert packer.add(3, *_item(1)).keys == [1, 3]
    with pytest.raises(ValueError, match="length 11"):
        packer.add(4, *_item(11))
    assert packer.pending_keys == [2]


def test_row_shapes_same_budget_and_errors():
    assert packing.row_shapes(640, 4, 16) == {640: (4, 16)}
    assert packing.row_shapes(640, 4, 16, (640, 128, 256)) == {
        128: (20, 16),
        256: (10, 16),
        640: (4, 16),
    }
    with pytest.raises(ValueError, match="longest = 640"):
        packing.row_shapes(640, 4, 16, (128, 256))
    with pytest.raises(ValueError, match=r"\[384\] do not divide .* 2560"):
        packing.row_shapes(640, 4, 16, (384, 640))
    with pytest.raises(ValueError, match="buffer_size"):
        Packer(64, 1, 4, 0, (8, 64))


def test_length_buckets_oldest_long_item_does_not_starve():
    # Short items (8-token rows) always hold more buffered tokens than the one 10-token item
    # (64-token rows): it waits until it is `buffer_size` batches old, then its length goes.
    packer = Packer(seq_len=64, num_rows=1, max_segments=8, buffer_size=4, seq_lens=(8, 64))
    assert packer.shapes == {8: (8, 8), 64: (1, 8)}
    batches = [packer.add(0, *_item(10))]
    key = 1
    while len([b for b in batches if b is not None]) < 6:
        batches.append(packer.add(key, *_item(8)))
        key += 1
    batches = [b for b in batches if b is not None]
    lengths = [b.batch["segment_ids"].shape[1] for b in batches]
    assert lengths == [8, 8, 8, 8, 64, 8], lengths
    assert 0 in batches[4].keys and all(0 not in b.keys for b in batches[:4])
    # The long row's tail gap is filled with short items (padding only at the tail).
    assert batches[4].keys[0] == 0 and len(batches[4].keys) > 1
    assert batches[0].batch["tokens"].shape == (8, 8, 2)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 64), min_size=1, max_size=40),
    st.sets(st.sampled_from([8, 16, 32]), max_size=3),
    st.integers(1, 8),
    st.integers(1, 3),
)
def test_length_bucketed_packer_property(sizes, short_lengths, buffer_size, max_segments):
    seq_lens = tuple(short_lengths) + (64,)
    packer = Packer(64, 2, max_segments, buffer_size, seq_lens)
    shapes = packer.shapes
    out, arrival = [], {}
    for key, n in enumerate(sizes):
        arrival[key] = len(out)
        tok = np.full((n, 2), key, np.float32) + np.arange(n, dtype=np.float32)[:, None]
        pos = np.stack([np.arange(n)] * 3, -1).astype(np.int32)
        if (b := packer.add(key, tok, pos)) is not None:
            out.append(b)
    out += packer.flush()
    assert sorted(k for b in out for k in b.keys) == list(range(len(sizes)))
    own = {k: min(l for l in shapes if l >= n) for k, n in enumerate(sizes)}
    for i, b in enumerate(out):
        segs = b.batch["segment_ids"]
        rows, length = segs.shape
        assert rows == shapes[length][0] and segs.max() <= shapes[length][1]
        assert any(own[k] == length for k in b.keys)  # a batch of its own length's items
        assert all(own[k] <= length for k in b.keys)
        for row in segs:
            nz = np.flatnonzero(row == 0)
            assert nz.size == 0 or np.all(row[nz[0] :] == 0)
        for k, p, o in zip(b.keys, b.placements, unpack(b.batch["tokens"], b.placements)):
            n = sizes[k]
            np.testing.assert_array_equal(o[:, 0], k + np.arange(n, dtype=np.float32))
            sl = slice(p.start, p.start + p.length)
            np.testing.assert_array_equal(b.batch["positions"][p.row, sl, 0], np.arange(n))
            assert i - arrival[k] < 2 * buffer_size  # no starvation, flush included


def test_text_budget_limits_each_rows_captions():
    # Captions of 5, 4, 3, 6 tokens, budget 8: 5 -> row 0; 4 would overflow row 0's text
    # (9 > 8) -> row 1; 3 -> row 0 (8); 6 fits no row's text -> dropped.
    items = [_item(2)] * 4
    _, pl = pack(items, 10, 2, 4, text_lengths=[5, 4, 3, 6], text_tokens=8)
    assert [(p.row, p.segment) if p else None for p in pl] == [(0, 1), (1, 1), (0, 2), None]
    # Without the budget all four fit the token and segment limits.
    assert all(pack(items, 10, 2, 4, text_lengths=[5, 4, 3, 6])[1])
    with pytest.raises(ValueError, match="item 1: caption of 9 tokens exceeds text_tokens 8"):
        pack(items[:2], 10, 2, 4, text_lengths=[1, 9], text_tokens=8)
    with pytest.raises(ValueError, match="one text length per item"):
        pack(items, 10, 2, 4, text_tokens=8)
    with pytest.raises(ValueError, match="text_tokens must be >= 0"):
        Packer(10, 2, 4, 4, text_tokens=-1)
    with pytest.raises(ValueError, match="caption of 9 tokens exceeds text_tokens 8"):
        Packer(10, 2, 4, 4, text_tokens=8).add("k", *_item(2), text_length=9)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 64), st.integers(0, 12)), min_size=1, max_size=40),
    st.sampled_from([12, 16, 30]),
    st.integers(1, 8),
)
def test_packer_text_budget_property(items, text_tokens, buffer_size):
    packer = Packer(64, 2, 4, buffer_size, (16, 64), text_tokens=text_tokens)
    out = []
    for key, (n, m) in enumerate(items):
        if (b := packer.add(key, *_item(n, fill=key), text_length=m)) is not None:
            out.append(b)
    out += packer.flush()
    assert sorted(k for b in out for k in b.keys) == list(range(len(items)))  # none lost
    for b in out:
        text = np.zeros(b.batch["segment_ids"].shape[0], int)
        for k, p in zip(b.keys, b.placements):
            text[p.row] += items[k][1]
            assert np.all(b.batch["tokens"][p.row, p.start : p.start + p.length] == k)
        assert text.max() <= text_tokens


# --------------------------------------------------------------------- property-based


@st.composite
def _videos(draw):
    """Latents of random durations / sizes (images included) and a random patch size."""
    patch = tuple(draw(st.integers(1, 2)) for _ in range(3))
    n = draw(st.integers(1, 12))
    shapes = [
        tuple(p * draw(st.integers(1, 3)) for p in patch) + (draw(st.sampled_from([1, 3])),)
        for _ in range(n)
    ]
    channels = shapes[0][3]
    seed = draw(st.integers(0, 2**16))
    return patch, [s[:3] + (channels,) for s in shapes], seed


@settings(max_examples=40, deadline=None)
@given(_videos(), st.integers(27, 64), st.integers(1, 3), st.integers(1, 4))
def test_pack_unpack_round_trip_property(videos, seq_len, rows, max_segments):
    patch, shapes, seed = videos
    rng = np.random.default_rng(seed)
    lats = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    items = [patchify(x, patch) for x in lats]
    batch, placements = pack(items, seq_len, rows, max_segments)
    outs = unpack(batch["tokens"], placements)
    placed = 0
    for lat, (tok, pos), p, o in zip(lats, items, placements, outs):
        if p is None:
            continue
        placed += 1
        np.testing.assert_array_equal(unpatchify(o, p.grid, patch, lat.shape[-1]), lat)
        np.testing.assert_array_equal(batch["positions"][p.row, p.start : p.start + p.length], pos)
        assert np.all(batch["segment_ids"][p.row, p.start : p.start + p.length] == p.segment)
    # Every token of the batch belongs to exactly one placed item, padding is at the tails.
    assert (batch["segment_ids"] > 0).sum() == sum(p.length for p in placements if p)
    for row in batch["segment_ids"]:
        nz = np.flatnonzero(row == 0)
        assert nz.size == 0 or np.all(row[nz[0] :] == 0)
    # First fit: the first item always lands (at most 27 tokens: it fits an empty row).
    assert placements[0] is not None and placed >= 1


# --------------------------------------------------------------------- token dropping


def test_drop_tokens_keeps_a_sorted_subset_at_true_positions():
    rng = np.random.default_rng(0)
    tok, pos = patchify(_latent(rng, 2, 8, 10), PATCH)  # 40 tokens
    kept_tok, kept_pos, kept = packing.drop_tokens(rng, tok, pos, 0.25)
    assert len(kept) == 30 and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept_tok, tok[kept])
    np.testing.assert_array_equal(kept_pos, pos[kept])
    # Different draws keep different subsets; rate 0 keeps all; at least one token is kept.
    assert not np.array_equal(packing.drop_tokens(rng, tok, pos, 0.25)[2], kept)
    assert len(packing.drop_tokens(rng, tok, pos, 0.0)[2]) == 40
    assert len(packing.drop_tokens(rng, tok[:1], pos[:1], 0.9)[2]) == 1
    with pytest.raises(ValueError, match="rate"):
        packing.drop_tokens(rng, tok, pos, 1.0)


def test_drop_rate_schedules_and_per_example_rates():
    assert packing.drop_rate(500, 0.5) == 0.5
    assert packing.drop_rate(0, 0.5, "linear", 0.1, 100) == pytest.approx(0.1)
    assert packing.drop_rate(50, 0.5, "linear", 0.1, 100) == pytest.approx(0.3)
    assert packing.drop_rate(500, 0.5, "linear", 0.1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        packing.drop_rate(0, 0.5, "cosine")
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(packing.example_drop_rates(rng, 3, 0.4), [0.4] * 3)
    r = packing.example_drop_rates(rng, 4000, 0.3, "uniform", max_rate=0.5)
    assert r.min() >= 0 and r.max() == 0.5 and abs(np.mean(r) - 0.2917) < 0.01
    assert np.std(r) > 0.1  # really per example

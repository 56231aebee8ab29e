"""Patch-n'-pack (NaViT-style): latent videos of any duration / resolution / aspect ratio.

Host-side numpy only. A latent video ``f32[t h w c]`` is cut into non-overlapping
``(pt, ph, pw)`` patches (no cropping, no resizing), each flattened to one token of size
``d = pt*ph*pw*c``. Tokens of several videos are then packed into fixed-length rows
``[num_rows seq_len d]``; ``segment_ids`` tell which video each token belongs to
(1..S inside a row, 0 = padding) so attention can be restricted to one's own video,
and ``positions`` carry each token's (t, h, w) index on its video's patch grid for RoPE.

Invariants of every packed batch: inside a row the segments are contiguous, numbered
1, 2, ... in placement order, and padding (segment 0, zero tokens, zero positions) only
occurs at the tail of the row.

Token dropping (NaViT): ``drop_tokens`` keeps a random subset of an item's tokens, with
their true positions, before packing; ``drop_rate`` schedules the rate over training and
``example_drop_rates`` draws one rate per example.

Two ways to pack:
  * ``pack(items, seq_len, num_rows, max_segments)``: one batch from a list, first-fit in
    the given order; what does not fit is reported (placement ``None``), not packed.
  * ``Packer``: a stream packer with a bounded look-ahead buffer (see its docstring); with
    several row lengths (``seq_lens``) it packs length-bucketed batches: short videos go to
    short rows, so they do not pay dense attention over the longest row length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import einops
import numpy as np

__all__ = [
    "patchify",
    "unpatchify",
    "Placement",
    "pack",
    "unpack",
    "padding_fraction",
    "PackedBatch",
    "Packer",
    "row_shapes",
    "DROP_SCHEDULES",
    "DROP_DISTRIBUTIONS",
    "drop_rate",
    "example_drop_rates",
    "drop_tokens",
]

DROP_SCHEDULES = ("constant", "linear")
DROP_DISTRIBUTIONS = ("fixed", "uniform")


def _check_patch(patch) -> tuple[int, int, int]:
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch must be three positive ints (pt, ph, pw), got {patch}")
    return patch


def patchify(latent: np.ndarray, patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``f32[t h w c] -> (tokens f32[n pt*ph*pw*c], positions i32[n 3])``.

    ``n = (t/pt)(h/ph)(w/pw)``; tokens are ordered t-major, then h, then w, and
    ``positions[i]`` is the (t, h, w) index of token ``i`` on the patch grid.
    """
    latent = np.asarray(latent)
    if latent.ndim != 4:
        raise ValueError(f"patchify expects a latent f32[t h w c], got shape {latent.shape}")
    pt, ph, pw = _check_patch(patch)
    for name, size, p in zip("thw", latent.shape[:3], (pt, ph, pw)):
        if size % p:
            raise ValueError(f"patchify: latent dim {name}={size} not divisible by patch {p}")
    gt, gh, gw = latent.shape[0] // pt, latent.shape[1] // ph, latent.shape[2] // pw
    tokens = einops.rearrange(
        latent, "(t pt) (h ph) (w pw) c -> (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
    )
    return np.ascontiguousarray(tokens), grid_positions((gt, gh, gw))


def grid_positions(grid: tuple[int, int, int]) -> np.ndarray:
    """``i32[t*h*w 3]``: the (t, h, w) index of each token of a patch grid, t-major."""
    gt, gh, gw = grid
    axes = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack(axes, -1).reshape(-1, 3).astype(np.int32)


def unpatchify(
    tokens: np.ndarray, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> np.ndarray:
    """Exact inverse of ``patchify``: ``f32[... n d] -> f32[... t h w c]`` for patch-grid ``grid``.

    Works on numpy and jax arrays (also inside jit), with any leading batch axes.
    """
    if not hasattr(tokens, "shape"):
        tokens = np.asarray(tokens)
    pt, ph, pw = _check_patch(patch)
    gt, gh, gw = (int(g) for g in grid)
    expected = (gt * gh * gw, pt * ph * pw * channels)
    if tuple(tokens.shape[-2:]) != expected:
        raise ValueError(
            f"unpatchify: tokens shape {tokens.shape} does not match grid {grid}, "
            f"patch {patch}, channels {channels} (expected {expected})"
        )
    return einops.rearrange(
        tokens,
        "... (t h w) (pt ph pw c) -> ... (t pt) (h ph) (w pw) c",
        t=gt,
        h=gh,
        w=gw,
        pt=pt,
        ph=ph,
        pw=pw,
        c=channels,
    )


def drop_rate(
    step: int, rate: float, schedule: str = "constant", start_rate: float = 0.0, steps: int = 1
) -> float:
    """Token drop rate at training step ``step``: ``'constant'`` is ``rate``; ``'linear'``
    goes from ``start_rate`` at step 0 to ``rate`` at step ``steps`` and stays there."""
    if schedule == "constant":
        return float(rate)
    if schedule == "linear":
        frac = min(max(step, 0) / max(steps, 1), 1.0)
        return float(start_rate + (rate - start_rate) * frac)
    raise ValueError(f"unknown token drop schedule {schedule!r}; use one of {DROP_SCHEDULES}")


def example_drop_rates(
    rng: np.random.Generator, n: int, rate: float, distribution: str = "fixed", max_rate=0.9
) -> np.ndarray:
    """``f64[n]`` drop rates, one per example: all ``rate`` (``'fixed'``) or uniform in
    ``[0, 2 rate]`` (``'uniform'``, mean ``rate``), capped at ``max_rate``."""
    if distribution == "fixed":
        rates = np.full(n, float(rate))
    elif distribution == "uniform":
        rates = rng.uniform(0.0, 2.0 * rate, size=n)
    else:
        raise ValueError(
            f"unknown token drop distribution {distribution!r}; use one of {DROP_DISTRIBUTIONS}"
        )
    return np.minimum(rates, max_rate)


def drop_tokens(
    rng: np.random.Generator, tokens: np.ndarray, positions: np.ndarray, rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keeps ``round(n (1 - rate))`` (at least one) random tokens of an item, in order.

    ``tokens f32[n d]``, ``positions i32[n 3]`` -> ``(tokens f32[k d], positions i32[k 3],
    kept i64[k])`` where ``kept`` are the kept indices (sorted). Positions stay the tokens'
    true grid positions, so RoPE sees the real geometry of the thinned video.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_tokens: rate must be in [0, 1), got {rate}")
    n = tokens.shape[0]
    k = max(1, int(round(n * (1.0 - rate))))
    kept = np.arange(n) if k >= n else np.sort(rng.choice(n, size=k, replace=False))
    return tokens[kept], positions[kept], kept


@dataclasses.dataclass
class Placement:
    """Where one item landed: tokens ``[start, start+length)`` of row ``row``."""

    row: int
    segment: int  # 1-based segment id inside the row
    start: int
    length: int
    grid: tuple[int, int, int]  # the item's patch grid (t, h, w), from its positions


@dataclasses.dataclass(frozen=True)
class _Buffered:
    """One item waiting in a ``Packer``."""

    key: Hashable
    tokens: np.ndarray
    positions: np.ndarray
    length: int  # the row length it belongs to
    arrival: int  # batches emitted when it arrived
    text_length: int  # its caption's tokens


def padding_fraction(segment_ids: np.ndarray) -> float:
    """Fraction of padding tokens (segment id 0) in ``i32[rows seq_len]``."""
    segment_ids = np.asarray(segment_ids)
    return float(np.mean(segment_ids == 0)) if segment_ids.size else 0.0


def _validate_item(i, tokens, positions, seq_len: int, dim: int | None) -> None:
    if tokens.ndim != 2 or positions.shape != (tokens.shape[0], 3):
        raise ValueError(
            f"item {i}: expected tokens f32[n d] and positions i32[n 3], got "
            f"{tokens.shape} and {positions.shape}"
        )
    if tokens.shape[0] == 0:
        raise ValueError(f"item {i}: has no tokens")
    if tokens.shape[0] > seq_len:
        raise ValueError(f"item {i}: length {tokens.shape[0]} exceeds seq_len {seq_len}")
    if dim is not None and tokens.shape[1] != dim:
        raise ValueError(f"item {i}: token dim {tokens.shape[1]} != {dim}")


def _first_fit(
    lengths: Sequence[int],
    seq_len: int,
    num_rows: int,
    max_segments: int,
    text_lengths: Sequence[int],
    text_tokens: int,
) -> list[tuple[int, int, int] | None]:
    """(row, segment, start) for each length in order, or None where no row can take it
    (with ``text_tokens`` > 0 a row's text lengths must also sum to at most it)."""
    used = [0] * num_rows
    count = [0] * num_rows
    text = [0] * num_rows
    text_cap = text_tokens or float("inf")
    out: list[tuple[int, int, int] | None] = []
    for n, m in zip(lengths, text_lengths):
        for r in range(num_rows):
            if count[r] < max_segments and used[r] + n <= seq_len and text[r] + m <= text_cap:
                count[r] += 1
                out.append((r, count[r], used[r]))
                used[r] += n
                text[r] += m
                break
        else:
            out.append(None)
    return out


def _text_lengths(text_lengths, n: int, text_tokens: int) -> list[int]:
    """Validated caption lengths of ``n`` items (zeros when there is no text budget)."""
    _check_text_tokens(text_tokens)
    if not text_tokens:
        return [0] * n
    if text_lengths is None or len(text_lengths) != n:
        raise ValueError(f"text_tokens={text_tokens} needs one text length per item ({n} items)")
    return [_check_text_length(i, m, text_tokens) for i, m in enumerate(text_lengths)]


def _check_text_tokens(text_tokens: int) -> None:
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")


def _check_text_length(item, m, text_tokens: int) -> int:
    if text_tokens and not 0 <= int(m) <= text_tokens:
        raise ValueError(f"item {item}: caption of {m} tokens exceeds text_tokens {text_tokens}")
    return int(m)


def _check_sizes(seq_len: int, num_rows: int, max_segments: int) -> None:
    for name, v in (("seq_len", seq_len), ("num_rows", num_rows), ("max_segments", max_segments)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def pack(
    items: Sequence[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    num_rows: int,
    max_segments: int,
    *,
    dim: int | None = None,
    text_lengths: Sequence[int] | None = None,
    text_tokens: int = 0,
) -> tuple[dict[str, np.ndarray], list[Placement | None]]:
    """Packs ``(tokens f32[n_i d], positions i32[n_i 3])`` items first-fit into one batch.

    Each item, in the given order, goes to the first row with ``>= n_i`` free tokens and
    fewer than ``max_segments`` segments; items that fit nowhere get placement ``None``
    (dropped: the caller decides what to do with them). ``dim`` is only needed when
    ``items`` is empty. With ``text_tokens`` > 0 a row also holds at most that many caption
    tokens, item i's caption having ``text_lengths[i]`` (the DiT's ``text_tokens``).

    Returns ``batch`` = {'tokens': f32[num_rows seq_len d],
    'segment_ids': i32[num_rows seq_len] (0 = padding), 'positions': i32[num_rows seq_len 3]}
    and one placement per item. Raises ValueError for an item longer than ``seq_len``.
    """
    _check_sizes(seq_len, num_rows, max_segments)
    items = [(np.asarray(t), np.asarray(p)) for t, p in items]
    if dim is None:
        if not items:
            raise ValueError("pack: no items and no `dim` given: cannot infer the token size")
        dim = items[0][0].shape[-1]
    for i, (t, p) in enumerate(items):
        _validate_item(i, t, p, seq_len, dim)
    text_lengths = _text_lengths(text_lengths, len(items), text_tokens)
    slots = _first_fit(
        [t.shape[0] for t, _ in items], seq_len, num_rows, max_segments, text_lengths, text_tokens
    )
    tokens = np.zeros((num_rows, seq_len, dim), np.float32)
    segment_ids = np.zeros((num_rows, seq_len), np.int32)
    positions = np.zeros((num_rows, seq_len, 3), np.int32)
    placements: list[Placement | None] = []
    for (t, p), slot in zip(items, slots):
        if slot is None:
            placements.append(None)
            continue
        row, seg, start = slot
        n = t.shape[0]
        tokens[row, start : start + n] = t
        segment_ids[row, start : start + n] = seg
        positions[row, start : start + n] = p
        grid = tuple(int(g) for g in p.max(0) + 1)
        placements.append(Placement(row=row, segment=seg, start=start, length=n, grid=grid))
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}, placements


def unpack(
    tokens_packed: np.ndarray, placements: Sequence[Placement | None]
) -> list[np.ndarray | None]:
    """Inverse of ``pack`` for ``f32[rows L d]`` (e.g. model outputs): ``f32[n_i d]`` per item,
    ``None`` where the placement is ``None``."""
    tokens_packed = np.asarray(tokens_packed)
    if tokens_packed.ndim != 3:
        raise ValueError(f"unpack expects f32[rows L d], got shape {tokens_packed.shape}")
    return [
        None if p is None else tokens_packed[p.row, p.start : p.start + p.length].copy()
        for p in placements
    ]


@dataclasses.dataclass
class PackedBatch:
    """One batch emitted by ``Packer``: ``keys[i]`` was placed at ``placements[i]``."""

    batch: dict[str, np.ndarray]
    keys: list[Hashable]
    placements: list[Placement]
    padding_fraction: float


def row_shapes(
    seq_len: int, num_rows: int, max_segments: int, seq_lens: Sequence[int] = ()
) -> dict[int, tuple[int, int]]:
    """``{row length: (rows, max segments)}`` of length-bucketed batches, shortest first.

    Every shape holds the same token budget ``num_rows * seq_len`` (rows = budget / length) and
    the same ``max_segments`` per row: with length buckets a long row holds one or two long
    videos and a short row several short ones, so scaling the slots with the length would
    starve the short rows and give the long ones caption slots they never use (each slot costs
    cross-attention for every token of the row; benchmarks/RESULTS.md, "Patch-n'-pack vs
    padding").
    ``seq_lens`` empty means one length, ``seq_len``; otherwise its longest must be ``seq_len``
    (it holds the longest example) and every length must divide the budget.
    """
    _check_sizes(seq_len, num_rows, max_segments)
    lengths = sorted({int(l) for l in seq_lens}) or [int(seq_len)]
    budget = seq_len * num_rows
    if lengths[0] < 1 or lengths[-1] != seq_len:
        raise ValueError(f"seq_lens {tuple(seq_lens)}: want lengths >= 1, the longest = {seq_len}")
    bad = [l for l in lengths if budget % l]
    if bad:
        raise ValueError(
            f"seq_lens {bad} do not divide the token budget num_rows * seq_len = {budget}"
        )
    return {l: (budget // l, max_segments) for l in lengths}


class Packer:
    """First-fit packing into fixed row shapes: of given items now (``pack``), or streaming
    with a bounded look-ahead buffer (``add`` / ``flush``). Training packs each step's drawn
    videos with ``pack``, the grain input its step groups, sampling its requests.

    Usage::

        packer = Packer(seq_len, num_rows, max_segments, buffer_size)
        for key, tokens, positions in stream:
            out = packer.add(key, tokens, positions)   # PackedBatch | None
            if out is not None: train_on(out)
        rest = packer.flush()                          # list[PackedBatch] (last, less full)

    ``add`` buffers the item; once ``buffer_size`` items are buffered it packs and returns
    one batch. A batch is packed by first-fit over the buffer taking the OLDEST item first
    (it always fits into the empty row 0, so every item leaves the buffer within
    ``buffer_size`` batches: no starvation), then the others largest-first (first-fit
    decreasing leaves little padding). Items that do not fit stay buffered, in arrival order.
    No item is ever dropped: each key comes out exactly once (keys must be unique).

    Length buckets (``seq_lens``, e.g. ``(128, 256, 640)``; default just ``seq_len``): each
    batch is ``rows x L`` for one length ``L`` of ``row_shapes`` (same token budget for all, so
    only ``len(seq_lens)`` shapes compile). An item belongs to the shortest length it fits;
    a batch of length ``L`` takes that length's items (its oldest first, then largest-first),
    then fills the tail gaps with shorter lengths' items (free: a dense row costs the same
    whatever it holds). Which length: the one with the most buffered tokens, except that
    once the oldest item has waited ``buffer_size`` batches its length goes next; so every
    item leaves within ``2 * buffer_size`` batches of its arrival.

    Caption budget (``text_tokens`` > 0): each item brings its caption's length
    (``add(..., text_length=)``) and a row's captions hold at most ``text_tokens`` tokens.
    """

    def __init__(
        self,
        seq_len: int,
        num_rows: int,
        max_segments: int,
        buffer_size: int = 1,
        seq_lens: Sequence[int] = (),
        text_tokens: int = 0,
    ):
        self.shapes = row_shapes(seq_len, num_rows, max_segments, seq_lens)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        _check_text_tokens(text_tokens)
        self.seq_len, self.num_rows = seq_len, num_rows
        self.max_segments, self.buffer_size = max_segments, buffer_size
        self.text_tokens = text_tokens
        self._buffer: list[_Buffered] = []
        self._dim: int | None = None
        self._emitted = 0

    def length_of(self, num_tokens: int) -> int:
        """The shortest row length an item of ``num_tokens`` tokens fits."""
        fits = [l for l in self.shapes if l >= num_tokens]
        if not fits:
            raise ValueError(f"an item of {num_tokens} tokens exceeds seq_len {self.seq_len}")
        return min(fits)

    def pack(
        self,
        items: Sequence[tuple[np.ndarray, np.ndarray]],
        length: int | None = None,
        text_lengths: Sequence[int] | None = None,
        dim: int | None = None,
    ) -> tuple[dict[str, np.ndarray], list[Placement | None]]:
        """``pack`` (the module function) of ``items`` in the given order into the rows of
        one shape: ``length`` (default ``seq_len``) x its rows, with the caption budget."""
        length = self.seq_len if length is None else int(length)
        if length not in self.shapes:
            raise ValueError(f"row length {length} is not one of {sorted(self.shapes)}")
        rows, max_segments = self.shapes[length]
        return pack(
            items,
            length,
            rows,
            max_segments,
            dim=dim,
            text_lengths=text_lengths,
            text_tokens=self.text_tokens,
        )

    @property
    def pending_keys(self) -> list[Hashable]:
        """Keys still buffered, in arrival order."""
        return [b.key for b in self._buffer]

    def add(
        self, key: Hashable, tokens: np.ndarray, positions: np.ndarray, text_length: int = 0
    ) -> PackedBatch | None:
        """Buffers one item; returns a batch once the buffer holds ``buffer_size`` items."""
        tokens, positions = np.asarray(tokens), np.asarray(positions)
        _validate_item(repr(key), tokens, positions, self.seq_len, self._dim)
        text_length = _check_text_length(repr(key), text_length, self.text_tokens)
        self._dim = tokens.shape[1]
        length = self.length_of(tokens.shape[0])
        self._buffer.append(_Buffered(key, tokens, positions, length, self._emitted, text_length))
        return self.pop_batch() if len(self._buffer) >= self.buffer_size else None

    def _next_length(self) -> int:
        oldest = self._buffer[0]
        if len(self.shapes) == 1 or self._emitted - oldest.arrival >= self.buffer_size:
            return oldest.length
        tokens = dict.fromkeys(self.shapes, 0)
        for b in self._buffer:
            tokens[b.length] += b.tokens.shape[0]
        return max(self.shapes, key=lambda l: (tokens[l], -l))

    def pop_batch(self) -> PackedBatch | None:
        """Packs one batch from the buffered items now; None if the buffer is empty."""
        if not self._buffer:
            return None
        length = self._next_length()
        own = [i for i, b in enumerate(self._buffer) if b.length == length]
        shorter = [i for i, b in enumerate(self._buffer) if b.length < length]
        size = lambda i: -self._buffer[i].tokens.shape[0]  # noqa: E731
        order = own[:1] + sorted(own[1:], key=size) + sorted(shorter, key=size)
        chosen = [self._buffer[i] for i in order]
        batch, placements = self.pack(
            [(b.tokens, b.positions) for b in chosen],
            length,
            text_lengths=[b.text_length for b in chosen],
            dim=self._dim,
        )
        placed = {i for i, p in zip(order, placements) if p is not None}
        keys = [b.key for b, p in zip(chosen, placements) if p is not None]
        self._buffer = [b for i, b in enumerate(self._buffer) if i not in placed]
        self._emitted += 1
        return PackedBatch(
            batch=batch,
            keys=keys,
            placements=[p for p in placements if p is not None],
            padding_fraction=padding_fraction(batch["segment_ids"]),
        )

    def flush(self) -> list[PackedBatch]:
        """Packs everything still buffered (the last batches may be mostly padding)."""
        out = []
        while self._buffer:
            out.append(self.pop_batch())
        return out


def config_row_shapes(config) -> dict[int, tuple[int, int]]:
    """`row_shapes` of config.dit; a bad combination raises ValueError naming
    config.dit.pack_lengths (config validation)."""
    dc = config.dit
    try:
        return row_shapes(dc.seq_len, dc.rows, dc.max_segments, dc.pack_lengths)
    except ValueError as e:
        raise ValueError(f"config.dit.pack_lengths={tuple(dc.pack_lengths)}: {e}") from None

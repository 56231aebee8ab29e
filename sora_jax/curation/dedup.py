"""Near-duplicate clips by perceptual hash (pHash: signs of the low DCT frequencies).

A frame's pHash is 64 bits: its luma area-scaled to 32x32, the 2-D DCT, and for each of the
8x8 lowest frequencies whether it exceeds their median (the DC term excluded from the median).
Re-encoding, rescaling and small brightness changes flip few bits; different content about
half. Two clips are near-duplicates when each pair of their keyframes' hashes is within
`max_hamming` bits. Candidate pairs are found without comparing all pairs: hashes are cut into
max_hamming + 1 bands, and two hashes within max_hamming bits agree on at least one band
(pigeonhole), so only clips sharing a (band, value) bucket are compared.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

_SIZE = 32
_LOW = 8


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """f32[n_out n_in]: row i averages input samples over output cell i (area resampling)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
        m[i] /= m[i].sum()
    return m


_MATRICES: dict = {}


def _resize(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape
    key = (h, w)
    if key not in _MATRICES:
        _MATRICES[key] = (_area_matrix(h, _SIZE), _area_matrix(w, _SIZE))
    rows, cols = _MATRICES[key]
    return rows @ grey @ cols.T


def phash(grey: np.ndarray) -> int:
    """64-bit pHash (an int) of f32/uint8[h w] luma."""
    coeffs = scipy.fft.dctn(_resize(np.asarray(grey, np.float32)), norm="ortho")
    low = coeffs[:_LOW, :_LOW].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def to_hex(h: int) -> str:
    return f"{h:016x}"


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def bands(h: int, max_hamming: int) -> list[tuple[int, int]]:
    """[(band index, band value)] of the 64-bit hash cut into max_hamming + 1 bands."""
    n = min(max_hamming + 1, 64)
    edges = np.linspace(0, 64, n + 1).round().astype(int)
    return [
        (k, (h >> int(lo)) & ((1 << int(hi - lo)) - 1))
        for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
    ]


def near(a: list[str], b: list[str], max_hamming: int) -> bool:
    """Whether clips with keyframe hashes `a` and `b` (hex) are near-duplicates."""
    pairs = list(zip(a, b))
    return bool(pairs) and all(hamming(int(x, 16), int(y, 16)) <= max_hamming for x, y in pairs)


def priority(clip: dict) -> tuple:
    """Sort key of which of two duplicates stays: clips kept by earlier runs first, then the
    larger frame, the longer clip, the sharper one, and the smaller id (so ties are stable)."""
    return (
        not clip.get("anchor", False),
        -int(clip["height"]) * int(clip["width"]),
        -int(clip["clip_frames"]),
        -float(clip["sharpness"]),
        str(clip["id"]),
    )


def losers(clips: list[dict], max_hamming: int) -> list[tuple[str, str]]:
    """[(id of a clip to drop, id of the better near-duplicate it loses to)] among `clips`
    (dicts with id, phash, and the fields of `priority`); clips from earlier runs
    (`anchor`) never lose. A clip is dropped when any better clip is its near-duplicate."""
    ordered = sorted(clips, key=priority)
    out = []
    for i, clip in enumerate(ordered):
        if clip.get("anchor"):
            continue
        for better in ordered[:i]:
            if better["id"] != clip["id"] and near(clip["phash"], better["phash"], max_hamming):
                out.append((str(clip["id"]), str(better["id"])))
                break
    return out

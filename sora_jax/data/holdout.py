"""The held-out split for validation: chosen per source index by a hash of (seed, index).

An example is held out or not by its own index alone, so the split is the same on every host,
in every epoch, after any resume, and for the TFDS source and the latent cache written from it
(the cache keeps the source's indices). Training never reads a held-out example.
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1


def unit(seed: int, index: int) -> float:
    """A value in [0, 1) that looks uniform, a pure function of (seed, index) (splitmix64)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) i64[k] of a source of `n` examples, both sorted.

    About `fraction` of them are held out, at least one when fraction > 0 (the example with the
    smallest hash: a small dataset still validates), never all of them."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction={fraction} must be in [0, 1)")
    if fraction == 0 or n == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, np.int64)
    u = np.asarray([unit(seed, i) for i in range(n)])
    held = u < fraction
    held[np.argmin(u)] = True
    if held.all():
        raise ValueError(
            f"data.val_fraction={fraction} holds out all {n} examples: lower it or add data"
        )
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)

"""Finite values (no NaN, no inf) on device: the checks training and loading share.

A train step reports `step_is_finite` (its loss and gradient norm) in its metrics as
`finite`; with `keep_if_finite` it drops a non-finite update. The host collects the steps'
flags without a sync per step and reads them in one go (`first_bad`); `tree_is_finite`
checks a whole state or params tree (before a checkpoint is written, after one is loaded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def step_is_finite(loss, grad_norm) -> jax.Array:
    """bool[]: the step's loss and gradients are finite (a non-finite gradient leaf makes the
    global norm non-finite, so one norm covers the whole tree)."""
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def keep_if_finite(old, new, finite: jax.Array):
    """`new` where `finite`, else `old` with `new`'s step (the update is skipped)."""
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return kept.replace(step=new.step)


@jax.jit
def _tree_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def tree_is_finite(tree) -> bool:
    """Whether every float leaf of `tree` is finite (one small reduction on device)."""
    return bool(jax.device_get(_tree_finite(tree)))


def first_bad(flags: list, first_step: int) -> list[int]:
    """The steps among `flags` (device bools bool[n] of consecutive steps from first_step on,
    one array per call) that were not finite."""
    if not flags:
        return []
    ok = np.concatenate([np.ravel(f) for f in jax.device_get(flags)]).astype(bool)
    return [first_step + int(i) for i in np.flatnonzero(~ok)]

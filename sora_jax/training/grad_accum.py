"""Gradient accumulation: k microbatches inside one jitted step, gradients summed.

Microbatch j takes rows j, j + k, j + 2k, ... of the batch: with the batch split over the data
devices in contiguous blocks, every device then feeds each microbatch from its own rows (no
communication), as long as its share of the rows divides by k.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp


def split(tree, k: int):
    """Leading axis b -> (k, b / k) for every array of `tree`."""

    def one(x):
        if x.shape[0] % k:
            raise ValueError(f"grad_accum_steps={k} does not divide the batch axis {x.shape[0]}")
        return einops.rearrange(x, "(m k) ... -> k m ...", k=k)

    return jax.tree.map(one, tree)


def sum_gradients(grad_fn: Callable, params, inputs, k: int):
    """sum_j grad_fn(params, inputs_j) over the k microbatches of `inputs`.

    ``grad_fn(params, micro) -> ((loss, aux), grads)``; losses and grads are summed, so the
    loss must already be normalised by the whole batch (then the sum is the batch's loss);
    aux is averaged. With k = 1 it is one call on the whole batch.
    """
    if k == 1:
        return grad_fn(params, inputs)
    micro = split(inputs, k)
    first = jax.tree.map(lambda x: x[0], micro)
    abstract = jax.eval_shape(grad_fn, params, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, grad_fn(params, mb)), None

    ((loss, aux), grads), _ = jax.lax.scan(body, zeros, micro)
    return (loss, jax.tree.map(lambda a: a / k, aux)), grads

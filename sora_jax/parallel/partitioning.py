"""Logical axis names -> mesh axes, and the shardings of a whole train state.

Model code names the axes of its weights and activations with logical names only
(``nn.with_logical_partitioning`` / ``nn.with_logical_constraint``; the names are the constants
of ``sora_jax.parallel.axes``); the rules in
``config.mesh.rules`` say which mesh axis each name is split over. The defaults give FSDP
(``embed`` over 'fsdp': params and optimizer state split across the fsdp devices), tensor
parallelism (``heads`` and ``mlp`` over 'tensor') and sequence parallelism (``length`` over
'sequence'). A name whose mesh axis is already used by an earlier dimension of the same array
stays unsplit there (flax's rule), so ``('batch', 'length', 'embed')`` activations are split
over the batch, not over fsdp twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding

from sora_jax.parallel.axes import (
    BATCH,
    EMBED,
    HEADS,
    KV,
    LAYERS,
    LENGTH,
    MLP,
    NORM,
    PATCH,
    TEXT_EMBED,
    VOCAB,
)

DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, "sequence"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (MLP, "tensor"),
    (KV, None),
    (PATCH, None),
    (TEXT_EMBED, None),
    (NORM, None),
    (VOCAB, None),
    (LAYERS, None),
)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def rules_from_config(rules: Sequence) -> Rules:
    """config.mesh.rules (pairs of logical name, mesh axis / tuple of axes / None) as a tuple."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"config.mesh.rules: {rule!r} is not a (logical name, mesh axes) pair")
        name, axes = rule
        out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
    """Mesh and rules for tracing: activation constraints and shard_map find them here."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def shardings(abstract_boxed, mesh: Mesh, rules: Rules):
    """NamedShardings for the unboxed version of a (boxed, abstract) pytree.

    Leaves annotated by ``nn.with_logical_partitioning`` follow the rules; all others
    (step counters, unannotated params, extras) are replicated.
    """
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def init_sharded(init_fn: Callable, mesh: Mesh, rules: Rules, *args):
    """Abstract-first init: shapes via eval_shape, then each array created where it lives.

    ``init_fn(*args)`` may return boxed (logically partitioned) leaves; the result is
    unboxed, with the shardings the rules give. Returns (state, shardings).
    """
    with activate(mesh, rules):
        abstract = jax.eval_shape(init_fn, *args)
        out_shardings = shardings(abstract, mesh, rules)
        state = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=out_shardings)(*args)
    return state, out_shardings


def spec_of(x: jax.Array):
    """The mesh PartitionSpec of a placed array (trailing Nones dropped, for comparisons)."""
    spec = tuple(x.sharding.spec) if isinstance(x.sharding, NamedSharding) else ()
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return spec

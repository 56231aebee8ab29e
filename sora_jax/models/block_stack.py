"""Conversion between the DiT's unrolled and scanned parameter trees.

Unrolled (``scan_blocks=False``), block ``i`` is the subtree ``block_{i}``. Scanned, the blocks
are periods of the layout pattern (``dit.period_layouts``: one block, or a spatial and a
temporal one) stacked along a leading axis: ``blocks/<name>`` holds period ``p``'s block at
index ``p`` (names ``dit.PERIOD_NAMES``), so block ``i`` is ``blocks/<names[i % n]>[i // n]``.
Everything else is the same in both. The functions apply to any tree with the DiT's
structure at some level (params, EMA, optimizer moments).
"""

from __future__ import annotations

import jax
import numpy as np

from sora_jax.models import dit as dit_lib

__all__ = ["is_scanned", "scan_blocks", "unscan_blocks", "convert"]

_SCANNED = "blocks"


def _is_dit(node) -> bool:
    return isinstance(node, dict) and ("block_0" in node or _SCANNED in node)


def is_scanned(tree) -> bool:
    """Whether the DiT subtrees of ``tree`` are scanned (raises if there are none)."""
    nodes = [n for n in jax.tree.leaves(tree, is_leaf=_is_dit) if _is_dit(n)]
    if not nodes:
        raise ValueError("no DiT parameters (block_0 or blocks) in the tree")
    return _SCANNED in nodes[0]


def _names(attention_layout: str) -> tuple[str, ...]:
    return dit_lib.PERIOD_NAMES[len(dit_lib.period_layouts(attention_layout))]


def _stack(node: dict, names: tuple[str, ...]) -> dict:
    depth = sum(k.startswith("block_") for k in node)
    if depth % len(names):
        raise ValueError(f"{depth} blocks do not split into periods of {len(names)}")
    blocks = [node[f"block_{i}"] for i in range(depth)]
    stacked = {
        name: jax.tree.map(lambda *xs: np.stack(xs), *blocks[j :: len(names)])
        for j, name in enumerate(names)
    }
    rest = {k: v for k, v in node.items() if not k.startswith("block_")}
    return {**rest, _SCANNED: stacked}


def _unstack(node: dict, names: tuple[str, ...]) -> dict:
    stacked = node[_SCANNED]
    if set(stacked) != set(names):
        raise ValueError(f"scanned blocks {sorted(stacked)} are not the periods {names}")
    periods = jax.tree.leaves(stacked[names[0]])[0].shape[0]
    out = {k: v for k, v in node.items() if k != _SCANNED}
    for p in range(periods):
        for j, name in enumerate(names):
            out[f"block_{p * len(names) + j}"] = jax.tree.map(lambda x: x[p], stacked[name])
    return out


def scan_blocks(tree, attention_layout: str):
    """``tree`` with every unrolled DiT subtree stacked into the scanned form."""
    names = _names(attention_layout)
    return jax.tree.map(
        lambda n: _stack(n, names) if _is_dit(n) and _SCANNED not in n else n,
        tree,
        is_leaf=_is_dit,
    )


def unscan_blocks(tree, attention_layout: str):
    """``tree`` with every scanned DiT subtree unstacked into ``block_{i}`` subtrees."""
    names = _names(attention_layout)
    return jax.tree.map(
        lambda n: _unstack(n, names) if _is_dit(n) and _SCANNED in n else n,
        tree,
        is_leaf=_is_dit,
    )


def convert(tree, attention_layout: str, scanned: bool):
    """``tree`` in the scanned (``scanned=True``) or unrolled form, whichever it was in."""
    return (scan_blocks if scanned else unscan_blocks)(tree, attention_layout)

"""Sub-trees of nested-dict params by leaf path: what an EMA of only the trained leaves keeps
(`subset`, `like`) and how the whole model is put back together (`overlay`)."""

from __future__ import annotations

import flax


def _flat(tree) -> dict:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def subset(tree, mask):
    """The leaves of ``tree`` where the bool tree ``mask`` (plain, of ``tree``'s paths) is
    True, nested as in ``tree`` (a part with none is left out); ``mask=None``: ``tree``."""
    if mask is None:
        return tree
    keep = _flat(mask)
    return flax.traverse_util.unflatten_dict({k: v for k, v in _flat(tree).items() if keep[k]})


def like(tree, sub):
    """The leaves of ``tree`` at the paths of ``sub`` (a ``subset`` of a tree of its shape)."""
    flat = _flat(tree)
    return flax.traverse_util.unflatten_dict({k: flat[k] for k in _flat(sub)})


def overlay(tree, sub):
    """``tree`` with the leaves of ``sub`` put in their places (added where ``tree`` has none:
    two disjoint subsets make their union)."""
    return flax.traverse_util.unflatten_dict({**_flat(tree), **_flat(sub)})

"""Fine-tuning part of a model: an optimizer that updates, and keeps state for, only the
trainable leaves (LoRA adapters, or everything but a frozen pattern)."""

from __future__ import annotations

import jax
import optax


def only_trainable(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """``tx`` on the leaves where ``trainable`` (a bool pytree of the params' structure) is
    True; the others get zero updates and no optimizer state (Adam's moments exist only for
    the trained leaves)."""
    labels = jax.tree.map(lambda m: "train" if m else "frozen", trainable)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

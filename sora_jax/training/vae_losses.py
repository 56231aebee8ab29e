"""Adversarial loss terms of VAE training: hinge losses, VQGAN's adaptive weight, the start step.

The generator (the VAE's decoder) minimises ``gan_weight * w * factor * generator_loss`` where
``w = ||grad_L rec|| / (||grad_L gan|| + eps)`` compares the gradient norms of the reconstruction
loss and of the GAN loss at the decoder's last layer ``L`` (Esser et al. 2021, "Taming
Transformers", eq. 7): the GAN term then pushes about as hard as the reconstruction whatever
their scales. ``factor`` is 0 before ``start_step`` (reconstruction first, as in VQGAN), 1 after.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "hinge_discriminator_loss",
    "generator_loss",
    "adaptive_weight",
    "gan_factor",
    "last_layer_path",
]

# The decoder's last layer, where the two losses' gradient norms are compared.
last_layer_path = ("decoder", "conv_out", "kernel")


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """``mean(relu(1 - real)) / 2 + mean(relu(1 + fake)) / 2`` (a scalar; 0 once real
    logits are >= 1 and fake ones <= -1, 1 when both are 0)."""
    real = jnp.mean(jax.nn.relu(1.0 - real_logits))
    fake = jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return 0.5 * (real + fake)


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """``-mean(fake_logits)``: the decoder raises the discriminator's score of its output."""
    return -jnp.mean(fake_logits)


def adaptive_weight(rec_grad, gan_grad, max_weight: float = 1e4, eps: float = 1e-4) -> jax.Array:
    """``clip(||rec_grad|| / (||gan_grad|| + eps), 0, max_weight)``, without gradient."""
    w = optax.tree.norm(rec_grad) / (optax.tree.norm(gan_grad) + eps)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def gan_factor(step: jax.Array, start_step: int) -> jax.Array:
    """f32 1.0 from ``start_step`` on (0-based train step), 0.0 before."""
    return (step >= start_step).astype(jnp.float32)

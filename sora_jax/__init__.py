"""sora_jax: a JAX/Flax, TPU-first Sora-style text-to-video system."""

__version__ = "0.1.0"

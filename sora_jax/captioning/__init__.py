"""Recaptioning: captioners (built-in moving-shapes, transformers models from a local folder),
manifests, and the Apache Beam pipeline behind `python -m sora_jax.recaption`."""

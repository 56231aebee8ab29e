"""sora_jax: a JAX/Flax, TPU-first Sora-style text-to-video system."""

__version__ = "0.1.0"


def load_pipeline(path: str, mesh=None):
    """A ready-to-sample `pipeline.Pipeline` from an exported inference checkpoint
    (`python -m sora_jax.export`) or a training workdir.

    Imported on first use, so `import sora_jax` stays light (no JAX start-up)."""
    from sora_jax import pipeline

    return pipeline.load_pipeline(path, mesh)

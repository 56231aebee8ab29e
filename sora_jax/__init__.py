"""sora_jax: a JAX/Flax, TPU-first Sora-style text-to-video system."""

__version__ = "0.1.0"


def load_pipeline(path: str, mesh=None, adapters=None):
    """A ready-to-sample `inference.pipeline.Pipeline` from an exported inference checkpoint
    (`python -m sora_jax.export`), a training workdir, or a diffusers Wan folder (a
    `inference.wan_pipeline.WanPipeline`); `adapters`: a LoRA adapters folder
    (`python -m sora_jax.export --adapters_only`) to merge into its DiT.

    Imported on first use, so `import sora_jax` stays light (no JAX start-up)."""
    from sora_jax.inference import pipeline  # noqa: PLC0415 (the lazy public API)

    return pipeline.load_pipeline(path, mesh, adapters)

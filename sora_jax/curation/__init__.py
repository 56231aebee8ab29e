"""Video curation: scene-cut clips of raw videos, measured, filtered and de-duplicated
(`python -m sora_jax.curate`; the Beam job is `beam_pipeline.py`)."""

"""Attention kernels on segment ids (see sora_jax/models/attention.py, the entry point)."""

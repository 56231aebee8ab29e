"""Video <-> latent <-> token geometry of the configured VAE and DiT patching.

Sampling, the input pipelines and config validation all size videos with these, so the VAE's
compression is read from the model itself (never restated).
"""

from __future__ import annotations

import ml_collections

from sora_jax.models import vae as vae_lib


def vae_compression(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(temporal, spatial) compression of the VAE described by config.vae.model."""
    m = config.vae.model
    # The model owns its geometry; an unbound module is enough to read it.
    vae = vae_lib.CausalVAE(
        channel_mults=tuple(m.channel_mults),
        temporal_downsample=tuple(bool(d) for d in m.temporal_downsample),
        spatial_downsample=tuple(bool(d) for d in m.spatial_downsample),
        patch_size=m.patch_size,
    )
    return vae.temporal_compression, vae.spatial_compression


def latent_grid(config, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (t, h, w) of a video; raises ValueError when the size is impossible."""
    ct, cs = vae_compression(config)
    pt, ph, pw = config.dit.patch
    if num_frames < 1 or (num_frames - 1) % ct:
        raise ValueError(
            f"num_frames={num_frames} is not supported: the causal VAE needs 1 + {ct}*k frames "
            f"(e.g. 1, {1 + ct}, {1 + 2 * ct})."
        )
    for name, size, p in (("height", height, ph), ("width", width, pw)):
        if size < cs * p or size % (cs * p):
            raise ValueError(
                f"{name}={size} is not supported: it must be a positive multiple of {cs * p} "
                f"(VAE spatial compression {cs} x patch size {p})."
            )
    t = 1 + (num_frames - 1) // ct
    if t % pt:
        raise ValueError(
            f"num_frames={num_frames} gives {t} latent frames, not divisible by "
            f"the temporal patch size {pt}."
        )
    return t, height // cs, width // cs


def num_tokens(config, num_frames: int, height: int, width: int) -> int:
    """DiT tokens of a video of this size."""
    t, h, w = latent_grid(config, num_frames, height, width)
    pt, ph, pw = config.dit.patch
    return (t // pt) * (h // ph) * (w // pw)


def check_size(config, key: str, num_frames: int, height: int, width: int):
    """Config validation of a video size given under `key`: `latent_grid`'s error, naming it."""
    try:
        latent_grid(config, num_frames, height, width)
    except ValueError as e:
        raise ValueError(f"config.{key}: {e}") from None

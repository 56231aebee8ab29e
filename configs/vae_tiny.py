"""VAE-only tiny config: the causal video VAE alone on CPU (~13 CPU-minutes for 4000 steps).

python -m sora_jax.train --config=configs/vae_tiny.py --workdir=runs/vae_tiny
python -m sora_jax.evaluate_vae --workdir=runs/vae_tiny --num_videos=32

The tiny config's VAE geometry (4x time, 8x space) with 16 latent channels, trained longer and
as a pure autoencoder (no latent noise: nothing downstream samples from it); the GAN and
perceptual losses stay off (no LPIPS weights ship with the package).
"""

import pathlib
import runpy

_tiny = runpy.run_path(str(pathlib.Path(__file__).with_name("tiny.py")))


def get_config():
    c = _tiny["get_config"]()
    c.stages = ("vae",)
    c.vae.model.latent_channels = 16
    c.vae.latent_noise = 0.0
    c.vae.train.steps = 4000
    c.vae.train.warmup_steps = 100
    c.vae.train.ema_decay = 0.995
    c.vae.train.checkpoint_every = 1000
    c.vae.train.log_every = 100
    return c

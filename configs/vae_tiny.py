"""VAE-only tiny config: the causal video VAE alone on CPU (6000 steps, ~42 CPU-minutes).

python -m sora_jax.train --config=configs/vae_tiny.py --workdir=runs/vae_tiny
python -m sora_jax.evaluate_vae --workdir=runs/vae_tiny --num_videos=32

4x time, 4x space with full-resolution convs (channel_mults (1, 2, 4), no patch stem; the tiny
config's VAE has a 2x2 stem), base_channels 16 with 32 latent channels (a 4x4x4 block of 192
values -> 32), a lower learning rate (1e-3: at 2e-3 the wider net's first hundred steps blow up)
and trained longer as a pure autoencoder (no latent noise: nothing downstream samples from it);
the GAN and perceptual losses stay off (no LPIPS weights ship with the package). Held-out PSNR
30.07 dB after 6000 steps (28.7 dB after 2400); benchmarks/RESULTS.md, "VAE reconstruction
quality". configs/tiny.py's VAE (the one the DiT uses) is not affected.
"""

import pathlib
import runpy

_tiny = runpy.run_path(str(pathlib.Path(__file__).with_name("tiny.py")))


def get_config():
    c = _tiny["get_config"]()
    c.stages = ("vae",)
    c.vae.model.patch_size = 1
    c.vae.model.base_channels = 16
    c.vae.model.channel_mults = (1, 2, 4)
    c.vae.model.spatial_downsample = ()
    c.vae.model.latent_channels = 32
    c.vae.latent_noise = 0.0
    c.vae.train.learning_rate = 1e-3
    c.vae.train.steps = 6000
    c.vae.train.warmup_steps = 100
    c.vae.train.ema_decay = 0.995
    c.vae.train.checkpoint_every = 400
    c.vae.train.log_every = 100
    return c

"""VAE-only tiny config: the causal video VAE alone on CPU (2400 steps, ~17 CPU-minutes).

python -m sora_jax.train --config=configs/vae_tiny.py --workdir=runs/vae_tiny
python -m sora_jax.evaluate_vae --workdir=runs/vae_tiny --num_videos=32

The tiny config's VAE geometry (4x time, 4x space: channel_mults (1, 2, 4), no patch stem), made
wider (base_channels 16 instead of 8) with 32 latent channels (a 4x4x4 block of 192 values ->
32), a lower learning rate (1e-3: at 2e-3 the wider net's first hundred steps blow up) and
trained longer as a pure autoencoder (no latent noise: nothing downstream samples from it);
the GAN and perceptual losses stay off (no LPIPS weights ship with the package). Held-out PSNR
28.7 dB after 2400 steps (996 CPU-s), 29.3 dB resumed to 3600: short of the 30 dB bar; probes
and commands in benchmarks/RESULTS.md, "Issue 3 (session 6)". configs/tiny.py's VAE (the
one the DiT uses) is unchanged.
"""

import pathlib
import runpy

_tiny = runpy.run_path(str(pathlib.Path(__file__).with_name("tiny.py")))


def get_config():
    c = _tiny["get_config"]()
    c.stages = ("vae",)
    c.vae.model.base_channels = 16
    c.vae.model.latent_channels = 32
    c.vae.latent_noise = 0.0
    c.vae.train.learning_rate = 1e-3
    c.vae.train.steps = 2400
    c.vae.train.warmup_steps = 100
    c.vae.train.ema_decay = 0.995
    c.vae.train.checkpoint_every = 400
    c.vae.train.log_every = 100
    return c

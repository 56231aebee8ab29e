"""VAE-only base config: the geometry of the strongest open causal video VAEs (4x time, 8x space,
16 latent channels), with the 3D patch GAN from step 20k; for accelerators.

python -m sora_jax.train --config=configs/vae_base.py --workdir=runs/vae_base \
    [--config.vae.perceptual.path=/path/to/lpips_vgg.safetensors --config.vae.perceptual.weight=0.1]

LPIPS needs a local weights file (layout in sora_jax/models/lpips.py; nothing is downloaded), so
the perceptual loss is off until a path is given.
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config():
    c = _default["get_config"]()
    c.stages = ("vae",)
    c.data.frame_choices = (1, 17, 33)
    c.data.resolutions = ((128, 128), (128, 192), (192, 128))
    m = c.vae.model
    m.base_channels = 128
    m.channel_mults = (1, 2, 4, 4)  # three 2x spatial downsamplings: 8x
    m.num_res_blocks = 2
    m.latent_channels = 16
    m.temporal_downsample = (True, True, False)  # two 2x temporal downsamplings: 4x
    m.norm_groups = 32
    c.vae.kl_weight = 1e-6
    c.vae.mse_weight = 1.0
    c.vae.gan.weight = 0.5
    c.vae.gan.start_step = 20_000
    c.vae.gan.channels = (64, 128, 256, 512)
    c.vae.gan.temporal_downsample = (False, True, True)
    c.vae.gan.norm_groups = 32
    c.vae.gan.learning_rate = 1e-4
    c.vae.latent_stats_batches = 64
    t = c.vae.train
    t.steps = 200_000
    t.learning_rate = 1e-4
    t.warmup_steps = 1000
    t.batch_size = 16
    t.image_batch_size = 16  # joint image + video batches
    t.buckets = ((17, 128, 128), (17, 128, 192), (17, 192, 128), (33, 128, 128))
    t.ema_decay = 0.999
    t.checkpoint_every = 5000
    return c

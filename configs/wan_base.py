"""Fine-tuning a public Wan model (a local diffusers folder) on packed native-size videos: what
configs/wan2_1_t2v_1_3b.py, wan2_1_t2v_14b.py and wan2_2_ti2v_5b.py share.

  python -m sora_jax.prepare --config=configs/wan2_1_t2v_1_3b.py --workdir=runs/wan \
      --config.init.from_pretrained=/models/Wan2.1-T2V-1.3B-Diffusers --source=/videos
  python -m sora_jax.train --config=configs/wan2_1_t2v_1_3b.py --workdir=runs/wan \
      --config.init.from_pretrained=/models/Wan2.1-T2V-1.3B-Diffusers \
      --config.data.source=latent_cache --config.data.cache_dir=runs/wan/latent_cache
  python -m sora_jax.plan --config=configs/wan2_1_t2v_14b.py --mesh=fsdp:8 --device_kind=v5p

The folder's VAE (frozen) and UMT5 encoder are the run's (sora_jax/models/wan_folder.py); its
transformer is the DiT, trained in full (or with frozen parts, dit.finetune.freeze) from its
weights with the rectified-flow loss, which is Wan's flow-matching objective. The plan needs
no weights: the architecture is in dit.model.wan and the VAE's geometry in vae.model.
"""

import pathlib
import runpy

import ml_collections

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))

# AutoencoderKLWan geometry as vae.model reads it: (dim_mult, temperal_downsample, patch, z_dim).
WAN_2_1_VAE = ((1, 2, 4, 4), (False, True, True), 1, 16)  # 4 x 8 x 8, 16 channels
WAN_2_2_VAE = ((1, 2, 4, 4), (False, True, True), 2, 48)  # 4 x 16 x 16, 48 channels


def wan_config(
    arch: dict, vae: tuple, frames: int, height: int, width: int, fps: int
) -> ml_collections.ConfigDict:
    """A fine-tune of the transformer ``arch`` (sora_jax.models.wan_presets) on the VAE of
    geometry ``vae``, at ``frames`` x ``height`` x ``width`` clips of ``fps``."""
    c = _default["get_config"]()
    c.stages = ("dit",)
    c.dit.model.arch = "wan"
    c.dit.model.wan = ml_collections.ConfigDict(arch)
    c.dit.patch = arch["patch_size"]
    m = c.vae.model
    m.channel_mults, m.temporal_downsample, m.patch_size, m.latent_channels = vae
    # UMT5-XXL, frozen, in bf16; 512 tokens as Wan was trained (its states cached once by
    # `prepare`, so the encoder never runs in a step).
    c.text.kind = "t5"
    c.text.max_length = 512
    c.text.dtype = "bfloat16"
    c.dit.model.dtype = "bfloat16"
    c.dit.model.remat_policy = "nothing_saveable"

    # Own videos at their native aspect ratio, about height x width pixels, packed into rows
    # that hold one full-size clip (shorter or smaller ones share a row). 'tfds' encodes them
    # with the VAE in every step; `prepare`'s latent cache (data.source='latent_cache') once.
    c.data.source = "tfds"
    c.data.fps = fps
    c.data.max_frames = frames
    c.data.target_area = height * width
    c.data.frame_choices = (frames,)
    c.data.resolutions = ((height, width),)
    ct, cs = 4, 8 * vae[2]
    pt, ph, pw = arch["patch_size"]
    c.dit.seq_len = (1 + (frames - 1) // ct) // pt * (height // cs // ph) * (width // cs // pw)
    c.dit.rows = 1  # rows per step: raise with the devices (one per fsdp shard, say)
    c.dit.max_segments = 4
    c.dit.text_tokens = 0
    c.dit.latent_cache_size = 64

    # --config.dit.finetune.mode=lora: adapters on both attentions and the FFN of every block.
    c.dit.finetune.lora_targets = r"attn[12]\.to_(q|k|v|out)|ffn\.proj_(in|out)"

    c.dit.train.steps = 5000
    c.dit.train.learning_rate = 1e-5
    c.dit.train.warmup_steps = 100
    c.dit.train.checkpoint_every = 250
    c.dit.train.log_every = 10
    c.dit.train.ema_decay = 0.999

    # Wan's sampling defaults: UniPC on the flow-matching grid shifted by 5 (3 for 480p).
    c.diffusion.sampler = "unipc"
    c.diffusion.spacing = "flow_match"
    c.diffusion.time_shift = 3.0 if height * width <= 480 * 832 else 5.0
    c.diffusion.sample_steps = 50
    c.diffusion.guidance_scale = 5.0
    c.vae.inference.tiled = True  # 720p frames decode in tiles
    c.sample.prompts = ("A cat walks on the grass, realistic style.",)
    c.sample.num_frames, c.sample.height, c.sample.width = frames, height, width
    c.eval.at_end = False  # the prompt-following judge reads the built-in set only
    c.mesh.data, c.mesh.fsdp = 1, -1  # params, gradients, Adam and EMA split over every chip
    return c

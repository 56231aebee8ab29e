"""Tiny config: both stages plus samples in minutes on a laptop CPU.

python -m sora_jax.train --config=configs/tiny.py --workdir=runs/tiny

Variant ``micro`` (``configs/tiny.py:micro``): the same pipeline shrunk to seconds, the test
suite's config and a smoke run of every stage. 1- and 5-frame clips at 16x16 / 16x24, a VAE of
base width 4 with full-resolution levels (3 steps), a 32-wide one-block DiT (2 heads, 32-token
rows; 3 steps), plain text->video mixed with every given-frame mode (not tiny's image->video
only), 3 sampler steps and 2 evaluation prompts:

python -m sora_jax.train --config=configs/tiny.py:micro --workdir=runs/micro
"""

import pathlib
import runpy

# Variants build on the base config next to them (config files are loaded by path).
_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


VARIANTS = ("", "micro")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"configs/tiny.py: unknown variant {variant!r}; use one of {VARIANTS}")
    c = _tiny()
    if variant == "micro":
        _micro(c)
    return c


def _tiny():
    c = _default["get_config"]()
    c.data.frame_choices = (1, 9)
    c.data.resolutions = ((32, 32), (32, 48), (48, 32))
    c.data.max_frames = 9
    c.data.target_area = 32 * 40

    # Full-resolution convs dominate the VAE's cost on CPU: a pixel-unshuffle stem runs every
    # level at half resolution or less (2x2 stem, one spatial halving: still 4x space). At the
    # same FLOPs as a full-resolution level of 8 channels, twice as wide a level: 1.5x the
    # steps/s of that VAE (7.8 vs 5.5) with the same round-trip shape and better colour and
    # speed (benchmarks/RESULTS.md, "Tiny config: full run").
    c.vae.model.patch_size = 2
    c.vae.model.base_channels = 16
    c.vae.model.channel_mults = (1, 2, 2)
    c.vae.model.spatial_downsample = (True, False)
    c.vae.model.num_res_blocks = 1
    c.vae.model.latent_channels = 4
    c.vae.model.temporal_downsample = (True, True)
    c.vae.model.norm_groups = 4
    c.vae.sample_posterior = False
    # The shapes cover ~5 % of the pixels: a strong L2 term makes their large errors dominate
    # the loss, so colours and edges are learned in hundreds of steps rather than thousands.
    c.vae.mse_weight = 10.0
    # Without it the decoder turns the DiT's small latent errors into coloured noise.
    c.vae.latent_noise = 0.25
    # 32x32 clips are cheaper than the sampled 32x48. Half of them have 9 frames (three latent
    # frames): trained on 5-frame clips alone, the decoder never sees a latent frame with two
    # before it and damps the motion of 9-frame videos to 30-60 % of the true speed.
    c.vae.train.steps = 1000
    c.vae.train.batch_size = 4
    c.vae.train.buckets = ((5, 32, 32), (9, 32, 32))
    c.vae.train.learning_rate = 2e-3
    c.vae.train.warmup_steps = 50
    c.vae.train.checkpoint_every = 500
    c.vae.train.ema_decay = 0.98
    c.dit.train.ema_decay = 0.995

    c.text.width = 64
    # The grammar's captions are at most 12 tokens: longer rows of padding keys cost
    # cross-attention and text projections in every step (DiT 10 % faster than at 20).
    c.text.max_length = 12
    # Word + position embeddings only (no encoder layers): with one layer mixing the words, the
    # DiT used the direction words less (direction 0.09 vs 0.41 at 1500 steps on captions with
    # fixed background, size and speed; benchmarks/RESULTS.md, "Direction in text->video").
    c.text.depth = 0

    c.dit.model.hidden = 128
    c.dit.model.depth = 4
    c.dit.model.num_heads = 4
    c.dit.model.abs_positions = True  # 6 % lower DiT loss at 1500 steps than RoPE alone
    c.dit.seq_len = 256
    c.dit.rows = 4
    c.dit.max_segments = 8
    c.dit.latent_cache_size = 2048
    # Factorised text->video (as Emu Video): every video trains as image->video (its first
    # frame given) and sampling draws the first frame from the text (an image), then the video
    # from that frame. Trained jointly from noise, the tiny DiT never tied the direction words
    # to motion (direction at chance, 0.13); given the first frame it follows them (0.94 on
    # rendered first frames, 0.41 on its own). dit.first_frames = 1 cut image->video to 0.28
    # (fewer video tokens per step). Measured in DiT-only runs of 1500 steps on 32 held-out
    # prompts (benchmarks/RESULTS.md, "Direction in text->video"). Other
    # modes (extend, connect) are untrained here: the default config's mask_types mix trains them.
    c.dit.condition.rate = 1.0
    c.dit.condition.mask_types = dict(first=1.0, first_k=0.0, last_k=0.0, both_ends=0.0, random=0.0)
    c.sample.factorized = True
    # The image pass was the weak link: prompted with the video's caption, whose motion words
    # no training image carries, it drew poor first frames (direction 0.33-0.44 on 128 held-out
    # prompts); prompted with the caption without its motion clause, 0.76-0.79. Given frames
    # noised in training (to t in [0, 0.3]) and sampled at t = 0.2 make the video pass
    # tolerate the imperfect generated frame (+0.04-0.07 direction on the 128 prompts, about
    # one standard error). benchmarks/RESULTS.md, "Direction in text->video".
    c.sample.image_prompt = "first_frame"
    c.dit.condition.noise = 0.3
    c.diffusion.condition_noise = 0.2
    # Guidance 5 (the default config's 4): colour 0.90 -> 0.93 and direction 0.84 -> 0.85 on
    # the user-style prompts over four seeds, 0.91 -> 0.93 / 0.85 -> 0.87 on 128 grammar
    # prompts (benchmarks/RESULTS.md, "Tiny config: full run").
    c.diffusion.guidance_scale = 5.0
    c.dit.train.steps = 1500
    c.dit.train.learning_rate = 1e-3
    c.dit.train.warmup_steps = 100
    c.dit.train.checkpoint_every = 500
    # One host call per 10 steps: the tiny step spends ~20 % of its time mapping its temporary
    # buffers afresh, once per call (benchmarks/RESULTS.md, "Tiny config: full run").
    c.dit.train.steps_per_call = 10

    c.sample.num_frames = 9
    c.sample.height = 32
    c.sample.width = 48
    return c


def _micro(c):
    """Shrinks the tiny config in place to the micro variant (see the module docstring)."""
    c.data.frame_choices = (1, 5)
    c.data.resolutions = ((16, 16), (16, 24))
    # Full-resolution levels (no stem): at 16 px they cost little, and the suite's measured
    # bounds (e.g. what a LoRA learns from 150-step base models) were taken on this VAE.
    c.vae.model.patch_size = 1
    c.vae.model.spatial_downsample = ()
    c.vae.model.base_channels = 4
    c.vae.model.channel_mults = (1, 2, 2)
    c.vae.model.norm_groups = 2
    c.vae.train.buckets = ((5, 16, 16),)
    c.vae.train.batch_size = 8
    c.vae.train.steps = 3
    c.vae.train.log_every = 1
    c.vae.train.checkpoint_every = 2
    c.text.width = 16
    c.text.max_length = 16
    c.dit.model.hidden = 32
    c.dit.model.depth = 1
    c.dit.model.num_heads = 2
    c.dit.seq_len = 32
    c.dit.rows = 8
    c.dit.max_segments = 4
    c.dit.latent_cache_size = 32
    c.dit.train.steps = 3
    c.dit.train.log_every = 1
    c.dit.train.checkpoint_every = 2
    c.dit.train.warmup_steps = 0
    c.dit.train.learning_rate = 3e-3
    # Plain text->video, every mask type and clean given frames, so that a smoke run reaches
    # every conditioning path (tiny trains image->video only, with noised given frames,
    # sampled factorised).
    c.dit.condition.rate = 0.25
    c.dit.condition.mask_types = dict(
        first=0.4, first_k=0.2, last_k=0.15, both_ends=0.15, random=0.1
    )
    c.sample.factorized = False
    c.sample.image_prompt = "same"
    c.dit.condition.noise = c.diffusion.condition_noise = 0.0
    c.diffusion.sample_steps = 3
    c.sample.prompts = ("a large red circle moves right steadily on a grey background",)
    c.sample.num_frames, c.sample.height, c.sample.width = 5, 16, 24
    c.eval.num_prompts = 2

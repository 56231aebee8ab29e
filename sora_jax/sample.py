"""Sampling CLI: text -> video files (mp4 and gif) from a trained workdir.

  python -m sora_jax.sample --workdir=runs/tiny \
      --prompt "a large red circle moves right steadily on a grey background" \
      --frames 9 --height 32 --width 48 --seed 0 [--out runs/tiny/cli_samples] \
      [--sampler dpmpp_2m --steps 10 --spacing shifted --time_shift 2 --eta 0 \
       --guidance_scale 4 --guidance_interval 0.1,0.9 --guidance_rescale 0.7]

Sampling flags left out take their value from the workdir's config.diffusion.

Any duration, resolution and aspect ratio the model supports: height and width
must be multiples of the VAE's spatial compression times the patch size; frame
counts the causal VAE cannot produce are rounded up and trimmed.
"""

from __future__ import annotations

import os

from absl import app, flags

from sora_jax import pipeline as pipeline_lib
from sora_jax.diffusion import samplers

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config + checkpoints).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text prompt (repeat for several).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Prompt to steer away from (CFG).")
_FRAMES = flags.DEFINE_integer("frames", None, "Number of frames (default: config.sample).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels (default: config.sample).")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels (default: config.sample).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed: the same seed gives the same video.")
_SAMPLER = flags.DEFINE_enum(
    "sampler", None, list(samplers.SAMPLERS), "Sampler (default: config.diffusion.sampler)."
)
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: config.diffusion).")
_SPACING = flags.DEFINE_enum(
    "spacing", None, list(samplers.SPACINGS), "Time grid (default: config.diffusion.spacing)."
)
_SHIFT = flags.DEFINE_float("time_shift", None, "Time shift s of the 'shifted' spacing.")
_ETA = flags.DEFINE_float("eta", None, "DDIM eta: 0 deterministic, 1 ancestral (ddim only).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: config.diffusion).")
flags.DEFINE_alias("guidance_scale", "guidance")
_INTERVAL = flags.DEFINE_list(
    "guidance_interval", None, "t_lo,t_hi: apply CFG only for t in [t_lo, t_hi] (1 = noise)."
)
_RESCALE = flags.DEFINE_float("guidance_rescale", None, "CFG std rescale phi in [0, 1].")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/cli_samples).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required: the folder `python -m sora_jax.train` wrote")
    if not os.path.isdir(_WORKDIR.value):
        raise app.UsageError(f"--workdir={_WORKDIR.value} does not exist")
    prompts = _PROMPT.value or []
    if not prompts or any(not p.strip() for p in prompts):
        raise app.UsageError("--prompt must be given and not empty")
    interval = _INTERVAL.value
    if interval is not None:
        try:
            interval = tuple(float(v) for v in interval)
        except ValueError:
            interval = None
        if interval is None or len(interval) != 2:
            raise app.UsageError("--guidance_interval must be two numbers: t_lo,t_hi")
    try:
        pipe = pipeline_lib.load_pipeline(_WORKDIR.value)
        s = pipe.config.sample
        paths = pipeline_lib.write_samples(
            pipe,
            prompts,
            _OUT.value or os.path.join(_WORKDIR.value, "cli_samples"),
            num_frames=_FRAMES.value or s.num_frames,
            height=_HEIGHT.value or s.height,
            width=_WIDTH.value or s.width,
            seed=_SEED.value,
            negative_prompt=_NEGATIVE.value,
            sampler=_SAMPLER.value,
            steps=_STEPS.value,
            spacing=_SPACING.value,
            time_shift=_SHIFT.value,
            eta=_ETA.value,
            guidance_scale=_GUIDANCE.value,
            guidance_interval=interval,
            guidance_rescale=_RESCALE.value,
        )
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    for p in paths:
        print(p)


if __name__ == "__main__":
    app.run(main)

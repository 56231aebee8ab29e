"""Sampling CLI: text -> video files (mp4 and gif) from a trained workdir.

  python -m sora_jax.sample --workdir=runs/tiny \
      --prompt "a large red circle moves right steadily on a grey background" \
      --frames 9 --height 32 --width 48 --seed 0 [--out runs/tiny/cli_samples]

Any duration, resolution and aspect ratio the model supports: height and width
must be multiples of the VAE's spatial compression times the patch size; frame
counts the causal VAE cannot produce are rounded up and trimmed.
"""

from __future__ import annotations

import os

from absl import app, flags

from sora_jax import pipeline as pipeline_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config + checkpoints).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text prompt (repeat for several).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Prompt to steer away from (CFG).")
_FRAMES = flags.DEFINE_integer("frames", None, "Number of frames (default: config.sample).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels (default: config.sample).")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels (default: config.sample).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed: the same seed gives the same video.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: config.diffusion).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: config.diffusion).")
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
            steps=_STEPS.value,
            guidance_scale=_GUIDANCE.value,
            negative_prompt=_NEGATIVE.value,
        )
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    for p in paths:
        print(p)


if __name__ == "__main__":
    app.run(main)

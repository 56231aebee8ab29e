"""VAE reconstruction evaluation: PSNR, SSIM (and LPIPS) on held-out moving-shapes videos.

  python -m sora_jax.evaluate_vae --workdir=runs/tiny [--num_videos=32 --seed=10000 \
      --frames=17 --height=32 --width=48 --out=runs/tiny/vae_eval --lpips_weights=vgg.npz]

Loads the workdir's VAE (EMA params), reconstructs `num_videos` videos drawn with data seed
`seed` (default config.eval.seed; training draws with config.data.seed, which is refused), and
writes `metrics.json` (overall, first frame, other frames, per frame index) and side-by-side
input | reconstruction videos to --out (default WORKDIR/vae_eval). Sizes default to
config.sample (frames, height, width); long videos go through the chunked path as
config.vae.inference says. LPIPS is added when --lpips_weights (default
config.vae.perceptual.path) names a local weights file (layout: sora_jax/models/lpips.py).
"""

from __future__ import annotations

import json

from absl import app, flags

from sora_jax.common import cli
from sora_jax.evaluation import vae_eval

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding a VAE checkpoint.")
_NUM = flags.DEFINE_integer("num_videos", 32, "Held-out videos to reconstruct.")
_SEED = flags.DEFINE_integer("seed", None, "Data seed of the held-out videos (config.eval.seed).")
_FRAMES = flags.DEFINE_integer("frames", None, "Frames per video (config.sample.num_frames).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height (config.sample.height).")
_WIDTH = flags.DEFINE_integer("width", None, "Width (config.sample.width).")
_OUT = flags.DEFINE_string("out", None, "Output directory (WORKDIR/vae_eval).")
_WRITE = flags.DEFINE_integer("num_write", 4, "Side-by-side videos to write.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Videos per VAE call.")
_LPIPS = flags.DEFINE_string(
    "lpips_weights", None, "LPIPS weights file (.safetensors/.npz); config.vae.perceptual.path."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        result = vae_eval.evaluate_workdir(
            _WORKDIR.value,
            _NUM.value,
            _SEED.value,
            _FRAMES.value,
            _HEIGHT.value,
            _WIDTH.value,
            _OUT.value,
            _WRITE.value,
            _BATCH.value,
            _LPIPS.value,
        )
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    summary = {k: v for k, v in result.items() if not k.endswith("per_frame") and k != "videos"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)

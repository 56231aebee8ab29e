"""How much latent error a trained VAE's decoder tolerates (what the DiT's samples need).

  python benchmarks/vae_latent_robustness.py --workdir=runs/tiny [--num_videos=32]

Encodes held-out moving-shapes videos (the evaluation prompts and seeds), adds Gaussian noise
of `level` x the latents' per-channel std, decodes, and scores the decodes with the
prompt-following evaluator. Prints, per noise level, the L1 error (0-255) and the colour /
direction / speed accuracies (the clean row is the plain reconstruction quality), and the
ratio of direction accuracy at 20 % noise to the clean one.
"""

import argparse

import jax
import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.inference import loader
from sora_jax import config as config_lib
from sora_jax.models import builders

LEVELS = (0.0, 0.1, 0.2, 0.4)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--num_videos", type=int, default=32)
    args = p.parse_args()
    c = config_lib.load_saved(args.workdir)
    model, params = loader.load_vae(c, args.workdir, mesh_lib.create_mesh(1))
    s = c.sample
    attrs = prompt_eval.eval_prompts(args.num_videos, c.eval.seed, s.num_frames, s.height, s.width)
    videos = np.stack([shapes.render(a, s.num_frames, s.height, s.width) for a in attrs])
    encode = jax.jit(lambda x: model.apply({"params": params}, x, method=model.encode)[0])
    decode = jax.jit(lambda z: model.apply({"params": params}, z, method=model.decode))
    z = encode(builders.to_model_range(videos))
    std = z.reshape(-1, z.shape[-1]).std(axis=0)
    direction = {}
    print(f"latent std per channel: {np.round(np.asarray(std), 3)}")
    for level in LEVELS:
        noise = jax.random.normal(jax.random.key(0), z.shape)
        recon = builders.to_uint8(decode(z + level * std * noise))
        l1 = float(np.abs(recon.astype(np.float32) - videos).mean())
        r = prompt_eval.evaluate_videos(list(recon), attrs)
        direction[level] = r["direction_accuracy"]
        print(
            f"noise {level:.1f} x std: L1 {l1:5.2f}  colour {r['colour_accuracy']:.3f}  "
            f"direction {r['direction_accuracy']:.3f}  speed {r['speed_accuracy']:.3f}"
        )
    ratio = direction[0.2] / max(direction[0.0], 1e-9)
    print(f"direction accuracy at 0.2 x std noise / clean: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Where a trained tiny model loses the shape: the evaluator's accuracies at each stage.

  python benchmarks/shape_accuracy.py --workdir=runs/tiny [--num_prompts=32] [--vae_only]

On the held-out grammar prompts of the workdir's evaluation (config.eval.seed, config.sample's
size) it scores, with the same pixel evaluator:

  renders      the true videos (the evaluator's own ceiling at this size);
  round trip   the renders through the workdir's VAE (encode, decode; no DiT);
  i2v          image->video from the true first frame (the DiT's motion pass);
  t2v          text->video by the default path (for the factorised config, the DiT's image
               pass and then image->video).

--vae_only stops after the round trip (a workdir of the VAE stage alone). Prints each stage's
accuracies (shape also per size) and the ratio of t2v's shape accuracy to the round trip's.
"""

import argparse

import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval, vae_eval
from sora_jax.inference import loader, pipeline
from sora_jax.models import vae_inference


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--num_prompts", type=int, default=32)
    p.add_argument("--vae_only", action="store_true")
    args = p.parse_args()
    c = config_lib.load_saved(args.workdir)
    t, h, w = c.sample.num_frames, c.sample.height, c.sample.width
    attrs = prompt_eval.eval_prompts(args.num_prompts, c.eval.seed, t, h, w)
    renders = np.stack([shapes.render(a, t, h, w) for a in attrs])
    vae, vae_params = loader.load_vae(c, args.workdir)
    recon = vae_eval.reconstruct_videos(vae, vae_params, renders, vae_inference.from_config(c))
    stages = {"renders": renders, "round trip": np.round(recon * 255).astype(np.uint8)}
    if not args.vae_only:
        pipe = pipeline.load_pipeline(args.workdir)
        prompts = [shapes.caption(a) for a in attrs]
        size = dict(num_frames=t, height=h, width=w, seed=c.eval.seed)
        stages["i2v"] = pipe.image_to_video(prompts, renders[:, 0], **size)
        stages["t2v"] = pipe.generate(prompts, **size)
    sizes = {k: [i for i, a in enumerate(attrs) if a["size"] == k] for k in shapes.SIZES}
    sizes = {k: idx for k, idx in sizes.items() if idx}
    print(
        "stage | colour | shape | direction | speed | " + " | ".join(f"shape, {k}" for k in sizes)
    )
    scores = {}
    for name, videos in stages.items():
        s = scores[name] = prompt_eval.evaluate_videos(list(videos), attrs)
        by_size = [
            prompt_eval.evaluate_videos([videos[i] for i in idx], [attrs[i] for i in idx])
            for idx in sizes.values()
        ]
        print(
            f"{name} | {s['colour_accuracy']:.2f} | {s['shape_accuracy']:.2f} | "
            f"{s['direction_accuracy']:.2f} | {s['speed_accuracy']:.2f} | "
            + " | ".join(f"{b['shape_accuracy']:.2f} ({b['num_videos']})" for b in by_size),
            flush=True,
        )
    if "t2v" in scores:
        ratio = scores["t2v"]["shape_accuracy"] / max(scores["round trip"]["shape_accuracy"], 1e-9)
        print(f"ratio t2v shape accuracy / round-trip shape accuracy: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Which caption words does a trained text-to-video model actually use?

  python benchmarks/prompt_sensitivity.py --workdir=runs/tiny [--num_prompts=16]

For held-out prompts of the moving-shapes grammar, changes one attribute word at a time (colour,
shape, direction reversed, speed), samples again with the same noise seed and measures how much
the video changes (mean |difference|, 0-255) and, for the reversed direction, how often the
measured motion follows the new word. A word the model ignores changes almost nothing. Prints the
ratio of the direction word's effect to the colour word's.
"""

import argparse

import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval, prompt_following
from sora_jax.inference import pipeline


def _next(options, value):
    options = tuple(options)
    return options[(options.index(value) + 1) % len(options)]


def _reverse(direction: str) -> str:
    dy, dx = shapes.DIRECTIONS[direction]
    return next(d for d, v in shapes.DIRECTIONS.items() if np.allclose(v, (-dy, -dx)))


EDITS = {
    "colour": lambda a: dict(a, colour=_next(shapes.COLOURS, a["colour"])),
    "shape": lambda a: dict(a, shape=_next(shapes.SHAPES, a["shape"])),
    "direction": lambda a: dict(a, direction=_reverse(a["direction"])),
    "speed": lambda a: dict(a, speed=_next(shapes.SPEEDS, a["speed"])),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--num_prompts", type=int, default=16)
    args = p.parse_args()
    pipe = pipeline.load_pipeline(args.workdir)
    c = pipe.config
    s = c.sample
    attrs = prompt_eval.eval_prompts(args.num_prompts, c.eval.seed, s.num_frames, s.height, s.width)

    def generate(attributes):
        videos = pipe.generate(
            [shapes.caption(a) for a in attributes],
            num_frames=s.num_frames,
            height=s.height,
            width=s.width,
            seed=c.eval.seed,
        )
        return np.asarray(videos)

    base = generate(attrs).astype(np.float32)
    change = {}
    for name, edit in EDITS.items():
        edited_attrs = [edit(a) for a in attrs]
        edited = generate(edited_attrs)
        change[name] = float(np.abs(edited.astype(np.float32) - base).mean())
        line = f"{name:>9}: mean |change| {change[name]:6.2f}"
        if name == "direction":
            follows = prompt_following.score(list(edited), edited_attrs)["direction_accuracy"]
            line += f"  (reversed-direction videos that move the new way: {follows:.2f})"
        print(line, flush=True)
    ratio = change["direction"] / max(change["colour"], 1e-9)
    print(f"ratio direction-word effect / colour-word effect: {ratio:.3f}")


if __name__ == "__main__":
    main()

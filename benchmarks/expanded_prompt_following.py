"""Prompt-following of a trained workdir on short prompts, as written and expanded.

  python benchmarks/expanded_prompt_following.py --workdir=runs/tiny [--num_prompts=32]

The held-out prompts of `python -m sora_jax.evaluate` (same seeds) three ways: the full grammar
captions (the standard figure), short prompts naming only what is measured ('a red circle moves
left quickly': size, background and texture left out), and those short prompts expanded by the
built-in grammar expander (sora_jax.inference.prompts; seeded by the eval seed). Prints one
JSON line per way with the pixel-measured accuracies.
"""

import json

from absl import app, flags

from sora_jax.inference import prompts
from sora_jax.data import shapes
from sora_jax.evaluation import prompt_eval
from sora_jax.inference import pipeline as pipeline_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_NUM = flags.DEFINE_integer("num_prompts", None, "Prompts (default: config.eval.num_prompts).")
_WAYS = flags.DEFINE_list(
    "ways", ["full_captions", "short_prompts", "short_expanded"], "Which prompts to score."
)


def short_prompt(attrs: dict) -> str:
    a = attrs
    return f"a {a['colour']} {a['shape']} moves {a['direction']} {a['speed']}"


def main(_):
    pipe = pipeline_lib.load_pipeline(_WORKDIR.value)
    c = pipe.config
    s, seed = c.sample, c.eval.seed
    attrs = prompt_eval.eval_prompts(
        _NUM.value or c.eval.num_prompts, seed, s.num_frames, s.height, s.width
    )
    short = [short_prompt(a) for a in attrs]
    expander = prompts.GrammarExpander()
    ways = {
        "full_captions": [shapes.caption(a) for a in attrs],
        "short_prompts": short,
        "short_expanded": [expander.expand(p, seed, s.num_frames).expanded for p in short],
    }
    for name in _WAYS.value:
        texts = ways[name]
        videos = pipe.generate(
            texts, num_frames=s.num_frames, height=s.height, width=s.width, seed=seed
        )
        result = prompt_eval.evaluate_videos(videos, attrs)
        print(json.dumps(dict(result, prompts=name, workdir=_WORKDIR.value, example=texts[0])))


if __name__ == "__main__":
    app.run(main)

"""Prompt-following evaluation of a pipeline: prompts from the moving-shapes grammar or
written as users type them (`USER_PROMPTS`), videos generated from held-out seeds,
attributes measured from pixels."""

from __future__ import annotations

import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import prompt_following
from sora_jax.evaluation.user_prompts import USER_PROMPTS


def eval_prompts(num_prompts: int, seed: int, num_frames: int, height: int, width: int):
    """Attributes (with a start position) of `num_prompts` videos from the grammar."""
    rng = np.random.default_rng([seed, 3])
    return [
        shapes.sample_attributes(rng, num_frames == 1, num_frames, height, width)
        for _ in range(num_prompts)
    ]


def evaluate_videos(videos, attributes) -> dict:
    return prompt_following.score([np.asarray(v) for v in videos], attributes)


def _sizes(pipe, num_frames, height, width) -> tuple[int, int, int]:
    """The given (frames, height, width), each defaulting to config.sample's."""
    s = pipe.config.sample
    return num_frames or s.num_frames, height or s.height, width or s.width


def evaluate_pipeline(
    pipe,
    num_prompts: int,
    seed: int,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    **sampling,
) -> dict:
    """Samples one video per prompt (noise seed `seed`) and scores it; `sampling` as in
    `Pipeline.generate` (e.g. sampler, steps)."""
    num_frames, height, width = _sizes(pipe, num_frames, height, width)
    attrs = eval_prompts(num_prompts, seed, num_frames, height, width)
    videos = pipe.generate(
        [shapes.caption(a) for a in attrs],
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
        **sampling,
    )
    return evaluate_videos(videos, attrs)


def evaluate_user_prompts(
    pipe,
    seed: int,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_seeds: int = 1,
    **sampling,
) -> dict:
    """Samples each of `USER_PROMPTS` through `Pipeline.generate`'s default path (its
    prompt expansion included; `sampling` may set `expand_prompt`) and scores the attributes
    the prompt names: once per noise seed seed, seed + 1, ..., seed + num_seeds - 1, pooled
    (one seed's accuracies swing by several prompts)."""
    num_frames, height, width = _sizes(pipe, num_frames, height, width)
    videos = []
    for s in range(seed, seed + num_seeds):
        videos.extend(  # u8[n t h w c] per seed
            pipe.generate(
                [p for p, _ in USER_PROMPTS],
                num_frames=num_frames,
                height=height,
                width=width,
                seed=s,
                **sampling,
            )
        )
    result = evaluate_videos(videos, [named for _, named in USER_PROMPTS] * num_seeds)
    return {**result, "num_seeds": num_seeds}


def first_frames(attributes, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8[n h w 3]: frame 0 of each held-out video, rendered as the data set would."""
    return np.stack(
        [
            shapes.render(a, num_frames, height, width, np.random.default_rng(i))[0]
            for i, a in enumerate(attributes)
        ]
    )


def evaluate_image_to_video(
    pipe,
    num_prompts: int,
    seed: int,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    **sampling,
) -> dict:
    """Image->video: each held-out video's first frame (rendered) and caption in, the
    continuation scored. Direction accuracy is the motion the model adds to a still frame
    (a frame alone does not show it; only the prompt does); colour / shape check that the
    given frame's content is kept. `sampling` as in `Pipeline.generate`."""
    num_frames, height, width = _sizes(pipe, num_frames, height, width)
    if num_frames < 2:
        raise ValueError(f"image->video needs num_frames > 1, got {num_frames}")
    attrs = eval_prompts(num_prompts, seed, num_frames, height, width)
    videos = pipe.image_to_video(
        [shapes.caption(a) for a in attrs],
        first_frames(attrs, num_frames, height, width),
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
        **sampling,
    )
    return evaluate_videos(videos, attrs)

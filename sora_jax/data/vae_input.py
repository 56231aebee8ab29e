"""VAE batches from own videos: the TFDS dataset of config.data (also for the latent cache
source, which was written from it), through the grain pipeline of `input_pipeline`.

Each example is decoded at its own aspect ratio (at least the largest bucket's area, at most
the largest bucket's frame count, no 1-frame draws); a step's batch takes one
(frames, height, width) of `vae.train.buckets` (drawn by the step, as for the built-in set) and
fits every clip to it: resized to cover height x width keeping its aspect ratio, a random
crop of that size, its first frames. So the VAE sees every video at its native framing,
in the buckets' sizes; a step whose clips are all shorter than the bucket takes the longest
1 + ct*k frames they all have. With `image_batch_size` the step adds that many images
('image'): the dataset's stills among its examples, then single frames drawn from its clips
(without it, stills train only in steps of stills alone). Held-out examples (`data.val_fraction`, `holdout`) never reach
training; `held_out_videos` gives them fitted to a bucket, for the validation PSNR / SSIM.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from sora_jax.data import holdout, input_pipeline, video_io
from sora_jax.models import builders, geometry


def fit(video: np.ndarray, frames: int, height: int, width: int, rng) -> np.ndarray:
    """uint8[t h w 3] -> uint8[min(t, frames) height width 3]: resized to cover the size with
    its aspect ratio kept, a crop at a random place (rng), the first `frames` frames."""
    t, h, w, _ = video.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, int(np.ceil(h * scale))), max(width, int(np.ceil(w * scale)))
    video = video_io.resize(video[:frames], rh, rw)
    y, x = int(rng.integers(rh - height + 1)), int(rng.integers(rw - width + 1))
    return video[:, y : y + height, x : x + width]


def step_bucket(config, step: int) -> tuple[int, int, int]:
    """The (frames, height, width) of `vae.train.buckets` that VAE step `step` trains on (a
    pure function of the step, the same for the built-in set and own videos)."""
    buckets = [tuple(b) for b in config.vae.train.buckets]
    return buckets[np.random.default_rng([config.data.seed, 1, step]).integers(len(buckets))]


def common_frames(lengths, frames: int, temporal_compression: int) -> int:
    """The longest 1 + ct*k <= `frames` that clips of these lengths all have."""
    n = min([frames, *lengths])
    return 1 + temporal_compression * ((n - 1) // temporal_compression)


def _clip_options(config) -> input_pipeline.ClipOptions:
    buckets = [tuple(b) for b in config.vae.train.buckets]
    return dataclasses.replace(
        input_pipeline.clip_options(config),
        max_frames=max(f for f, _, _ in buckets),
        area=max(config.data.target_area, max(h * w for _, h, w in buckets)),
        image_fraction=0.0,
    )


class VAEBatches(input_pipeline.StepBatches):
    """`batch_fn(step)` for the VAE's `loop.run`: 'video' f32[b t h w 3] (and 'image'
    f32[bi 1 h w 3]) in the model's range, global over the mesh, checkpointable."""

    def __init__(self, config, mesh, bad_files: str | None = None):
        d, t = config.data, config.vae.train
        nproc = jax.process_count()
        for key in ("batch_size", "image_batch_size"):
            if t[key] % nproc:
                raise ValueError(f"vae.train.{key}={t[key]} must divide by the {nproc} hosts")
        if not d.tfds_data_dir and d.source == "latent_cache":
            raise ValueError(
                "the VAE trains on the TFDS dataset the latent cache was written from: set "
                "config.data.tfds_data_dir (or vae.train.data='moving_shapes')"
            )
        self.source = input_pipeline.open_tfds(d.tfds_name, d.tfds_data_dir, d.tfds_split)
        train, self.held_out = holdout.split(len(self.source), d.val_fraction, d.val_split_seed)
        self.options = _clip_options(config)
        per_example = functools.partial(input_pipeline.decode_or_report, self.options)
        examples = input_pipeline.examples_dataset(self.source, per_example, train)
        # Its own order (seed stream 1): the DiT's stage shuffles with data.seed.
        groups = input_pipeline.step_groups(
            examples, d.seed + 1, t.batch_size // nproc, jax.process_index(), nproc
        )
        super().__init__(config, groups, mesh, d.worker_count, bad_files)
        self.ct = geometry.vae_compression(config)[0]

    def assemble(self, examples: list[dict], step: int) -> dict[str, np.ndarray]:
        if not examples:
            raise RuntimeError(f"VAE step {step}: no usable example in its group")
        t, nproc = self.config.vae.train, jax.process_count()
        frames, h, w = step_bucket(self.config, step)
        rng = np.random.default_rng([self.config.data.seed, 8, step, jax.process_index()])
        clips = [e["video"] for e in examples]
        # Stills of the dataset go to the images (a 1-frame clip would make the batch one of
        # images); a group short of videos (bad examples, stills) repeats the ones it has.
        videos = [v for v in clips if len(v) > 1] or clips
        stills = [v for v in clips if len(v) == 1 and videos is not clips]
        videos = [videos[i % len(videos)] for i in range(t.batch_size // nproc)]
        n = common_frames([len(v) for v in videos], frames, self.ct)
        batch = {"video": np.stack([fit(v, n, h, w, rng) for v in videos])}
        if t.image_batch_size:
            k = t.image_batch_size // nproc
            picks = stills + [videos[i % len(videos)] for i in range(k)]
            batch["image"] = np.stack(
                [fit(v[rng.integers(len(v))][None], 1, h, w, rng) for v in picks[:k]]
            )
        return {k: builders.to_model_range(v) for k, v in batch.items()}

    def held_out_videos(self, k: int, bucket) -> np.ndarray:
        """uint8[n t h w 3]: the first k held-out examples that decode, fitted to `bucket`
        (frames, height, width) with a fixed crop (the same in every run)."""
        frames, h, w = bucket
        videos = [
            e["video"]
            for i in self.held_out[:k]
            if (e := input_pipeline.decode_example(self.options, int(i), self.source[int(i)]))
        ]
        if not videos:
            return np.zeros((0, frames, h, w, 3), np.uint8)
        n = common_frames([len(v) for v in videos], frames, self.ct)
        rng = np.random.default_rng([self.config.data.val_split_seed, 9])
        return np.stack([fit(v, n, h, w, rng) for v in videos])

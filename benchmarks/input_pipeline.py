"""Input pipeline throughput per CPU core: decoded+resized+packed frames/s, and from cached latents.

  python benchmarks/input_pipeline.py [--config=configs/default.py] [--clips=48] [--steps=6]
      [--step_rate=1.0]

Builds a TFDS video_clips dataset of moving-shapes mp4s (the config's resolutions and frame
counts, at data.fps) in a temp dir, then times, in this one process (one core, worker_count=0):
  * 'tfds': grain groups of decoded, temporally sampled, area-resized clips, patchified and
    packed into the config's DiT rows (latents stand in by random arrays of the right latent
    grid: the VAE runs on the accelerator, not on the host);
  * 'latent_cache': the same groups read from an array_record latent cache, patchified, packed.
Rates are frames per CPU second of this process (process_time: per core, and not skewed by
other jobs on a shared machine). Prints frames/s per core for both and the host cores each needs to feed `--step_rate` DiT
steps/s at the config's examples per step (dit.rows x dit.max_segments).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import input_pipeline, latent_cache, packing, tfds_builder
from sora_jax.training import dit_trainer


def _fake_latent(config, video, channels, rng):
    t, h, w = config_lib.latent_grid(config, *video.shape[:3])
    return rng.normal(size=(t, h, w, channels)).astype(np.float32)


def _time_groups(config, groups, to_latents, steps, null):
    """(frames per CPU second, mean frames per example) over `steps` packed batches (after one
    warm-up). CPU time of this process, not wall time: per core, and not skewed by other load."""
    rng = np.random.default_rng(0)
    patch = tuple(config.dit.patch)
    frames = examples = 0
    start = None
    for step in range(steps + 1):
        if step == 1:
            start, frames, examples = time.process_time(), 0, 0
        group = groups[step]
        items = []
        for latent, n_frames, ids in to_latents(group["examples"]):
            tok, pos = packing.patchify(latent, patch)
            items.append((tok, pos, ids, ids > 0))
            frames += n_frames
            examples += 1
        dit_trainer.pack_batch(config, items, null, null > 0, rng, step)
    seconds = time.process_time() - start
    return frames / seconds, frames / examples


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--step_rate", type=float, default=1.0)
    args = p.parse_args()
    c = config_lib.validate(config_lib.load(args.config))
    d, channels = c.data, c.vae.model.latent_channels
    per_step = c.dit.rows * c.dit.max_segments
    null = np.zeros(c.text.max_length, np.int32)
    ids = np.ones(c.text.max_length, np.int32)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tfds_builder.export_moving_shapes(
            tmp / "src",
            args.clips,
            seed=d.seed,
            frame_choices=tuple(d.frame_choices),
            resolutions=tuple(map(tuple, d.resolutions)),
            image_fraction=d.image_fraction,
            fps=d.fps,
        )
        tfds_builder.build(tmp / "src", tmp / "tfds")
        source = input_pipeline.open_tfds(d.tfds_name, str(tmp / "tfds"))
        groups = input_pipeline.video_groups(c, source, 0, 1, per_step)

        def from_videos(examples):
            return [
                (_fake_latent(c, e["video"], channels, rng), len(e["video"]), ids) for e in examples
            ]

        video_fps, frames_per_example = _time_groups(c, groups, from_videos, args.steps, null)

        writer = latent_cache.Writer(tmp / "cache")
        opts = input_pipeline.clip_options(c)
        for i in range(len(source)):
            video = input_pipeline.decode_example(opts, i, source[i])["video"]
            latent = _fake_latent(c, video, channels, rng)
            writer.add(latent_cache.encode_record(latent, ids, ids > 0, i))
        writer.close(dict(latent_mean=[0.0] * channels, latent_std=[1.0] * channels))
        cache, _ = latent_cache.open_cache(tmp / "cache")
        ct = config_lib.vae_compression(c)[0]
        examples = input_pipeline.examples_dataset(
            cache, lambda i, r: latent_cache.decode_record(r)
        )
        cached = input_pipeline.step_groups(examples, d.seed, per_step, 0, 1)

        def from_cache(records):
            return [(r["latent"], 1 + ct * (len(r["latent"]) - 1), ids) for r in records]

        cache_fps, _ = _time_groups(c, cached, from_cache, args.steps, null)
    need = args.step_rate * per_step * frames_per_example
    print(
        json.dumps(
            {
                "config": args.config,
                "examples_per_step": per_step,
                "frames_per_example": round(frames_per_example, 2),
                "tfds_frames_per_s_per_core": round(video_fps, 1),
                "cache_frames_per_s_per_core": round(cache_fps, 1),
                "step_rate": args.step_rate,
                "cores_needed_tfds": round(need / video_fps, 2),
                "cores_needed_cache": round(need / cache_fps, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

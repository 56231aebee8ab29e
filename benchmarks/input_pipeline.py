"""Input pipeline throughput per CPU core: decoded+resized+packed frames/s, and from cached latents.

  python benchmarks/input_pipeline.py [--config=configs/default.py] [--clips=48] [--steps=6]
      [--step_rate=1.0] [--text_kind=bert --text_path=/models/all-MiniLM-L6-v2]

Builds a TFDS video_clips dataset of moving-shapes mp4s (the config's resolutions and frame
counts, at data.fps) in a temp dir, then times, in this one process (one core, worker_count=0):
  * 'tfds': grain groups of decoded, temporally sampled, area-resized clips, patchified and
    packed into the config's DiT rows (latents stand in by random arrays of the right latent
    grid: the VAE runs on the accelerator, not on the host);
  * 'latent_cache': the same groups read from an array_record latent cache, patchified, packed.
Rates are frames per CPU second of this process (process_time: per core, and not skewed by
other jobs on a shared machine). Prints frames/s per core for both and the host cores each needs
to feed `--step_rate` DiT steps/s at the config's examples per step (dit.rows x dit.max_segments).

With a frozen text encoder (`--text_kind`, `--text_path`: a local HF folder; config.text.dtype)
the cache also stores each caption's embedding, as `cache_latents` does, and the batches carry
them ('caption_emb'); it also times the encoder on the captions (captions/s per core on this
CPU: what the cache saves the trainer, which otherwise encodes every step's captions) and
reports the cache's bytes per record.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import (
    batches,
    dit_input,
    input_pipeline,
    latent_cache,
    packing,
    tfds_builder,
)
from sora_jax.models import builders, geometry


def _fake_latent(config, video, channels, rng):
    t, h, w = geometry.latent_grid(config, *video.shape[:3])
    return rng.normal(size=(t, h, w, channels)).astype(np.float32)


def _time_groups(config, groups, to_latents, steps, null, null_emb=None):
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
        items, embs = [], []
        for latent, n_frames, ids, emb in to_latents(group["examples"]):
            tok, pos = packing.patchify(latent, patch)
            items.append((tok, pos, ids, ids > 0))
            embs.append(emb)
            frames += n_frames
            examples += 1
        text_emb = None if null_emb is None else (embs, null_emb)
        batches.pack_batch(config, items, null, null > 0, rng, step, text_emb=text_emb)
    seconds = time.process_time() - start
    return frames / seconds, frames / examples


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--step_rate", type=float, default=1.0)
    p.add_argument("--text_kind", default="", help="a frozen encoder kind: bert, t5 or clip")
    p.add_argument("--text_path", default="", help="its local HF folder")
    p.add_argument("--text_dtype", default="", help="float32 or bfloat16 (default: config's)")
    args = p.parse_args()
    c = config_lib.load(args.config)
    if args.text_kind:
        c.text.kind, c.text.path = args.text_kind, args.text_path
        c.text.dtype = args.text_dtype or c.text.dtype
    c = config_lib.validate(c)
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
                (_fake_latent(c, e["video"], channels, rng), len(e["video"]), ids, None)
                for e in examples
            ]

        video_fps, frames_per_example = _time_groups(c, groups, from_videos, args.steps, null)

        text = builders.build_text_encoder(c)
        embed = dit_input.caption_embedder(text, batch_size=per_step)
        captions = [source[i]["caption"].decode() for i in range(len(source))]
        text_rate, embs, null_emb = None, [None] * len(source), None
        if embed is not None:
            embed(captions[:1])  # compile
            timed = (captions * args.steps)[: per_step * args.steps]  # `steps` steps' captions
            start = time.process_time()
            embed(timed)
            text_rate = len(timed) / (time.process_time() - start)
            embs = embed(captions).astype(dit_input.storage_dtype(c))
            null_emb = embed([""])[0]

        writer = latent_cache.Writer(tmp / "cache")
        opts = input_pipeline.clip_options(c)
        for i in range(len(source)):
            video = input_pipeline.decode_example(opts, i, source[i])["video"]
            latent = _fake_latent(c, video, channels, rng)
            writer.add(latent_cache.encode_record(latent, ids, ids > 0, i, embs[i]))
        writer.close(dict(latent_mean=[0.0] * channels, latent_std=[1.0] * channels))
        record_bytes = sum(p.stat().st_size for p in (tmp / "cache").glob("*.array_record"))
        cache, _ = latent_cache.open_cache(tmp / "cache")
        ct = geometry.vae_compression(c)[0]
        examples = input_pipeline.examples_dataset(
            cache, lambda i, r: latent_cache.decode_record(r)
        )
        cached = input_pipeline.step_groups(examples, d.seed, per_step, 0, 1)

        def from_cache(records):
            return [
                (r["latent"], 1 + ct * (len(r["latent"]) - 1), ids, r.get("caption_emb"))
                for r in records
            ]

        cache_fps, _ = _time_groups(c, cached, from_cache, args.steps, null, null_emb)
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
                "cache_bytes_per_record": round(record_bytes / len(source)),
                **(
                    {}
                    if text_rate is None
                    else {
                        "text": f"{c.text.kind} {c.text.dtype} len {c.text.max_length}",
                        "text_captions_per_s_per_core": round(text_rate, 1),
                        "cores_to_encode_captions": round(args.step_rate * per_step / text_rate, 3),
                    }
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

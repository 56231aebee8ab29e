"""The grain input pipeline: records -> examples -> per-host groups of examples per step.

  source (random access: a TFDS dataset's array_record shards, or the latent cache)
    -> per-example map, a pure function of (seed, source index): decode a clip in a worker
       (`clips.training_clip`; a bad one becomes a report of its path and error), or parse a
       cached latent
    -> global shuffle by seed, a new order every epoch (`shuffle(seed).repeat()`)
    -> host sharding: host p of P takes positions p, p + P, ... of that order, so in every epoch
       of N examples (N divisible by P) the hosts together see each example exactly once
    -> groups of `examples_per_step` examples (one step's packed rows on this host)

Everything is a grain `MapDataset`, so group s is a pure function of s: `DataIterator` keeps
the grain iterator's state, which goes into the orbax checkpoint with the model, and a resumed
run continues with exactly the next group. Unusable records (decode errors, a latent cache's
bad examples) are counted per group ('num_bad', with the decode errors' paths and reasons in
'bad'), never stopping the run. Packing the groups' latents
into token rows happens in `batches.pack_batch`, after VAE encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence

import av
import grain
import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from sora_jax.common import config_checks as cc
from sora_jax.data import clips, shapes
from sora_jax.models import geometry
from sora_jax.parallel import mesh as mesh_lib

SOURCES = ("moving_shapes", "tfds", "latent_cache")


def open_tfds(name: str, data_dir: str, split: str = "train"):
    """Random-access source of a built TFDS dataset (local files only, no TensorFlow)."""
    import tensorflow_datasets as tfds  # the 'data' extra; only needed for this source

    return tfds.data_source(name, split=split, data_dir=data_dir or None, try_gcs=False)


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How a record becomes a training video (config.data.*, the VAE's compression)."""

    seed: int
    target_fps: float
    max_frames: int
    area: int
    multiple: int  # height and width are multiples of this (VAE compression x patch)
    temporal_compression: int
    image_fraction: float


def clip_options(config) -> ClipOptions:
    ct, cs = geometry.vae_compression(config)
    d = config.data
    return ClipOptions(
        seed=d.seed,
        target_fps=float(d.fps),
        max_frames=d.max_frames,
        area=d.target_area,
        multiple=cs * max(config.dit.patch[1:]),
        temporal_compression=ct,
        image_fraction=d.image_fraction,
    )


def decode_example(options: ClipOptions, index: int, record: dict) -> dict | None:
    """{'video': uint8[t h w 3], 'caption': str, 'index': int} or None for a bad record."""
    example = decode_or_report(options, index, record)
    return None if BAD in example else example


BAD = "bad"  # the key of a bad example's report


def decode_or_report(options: ClipOptions, index: int, record: dict) -> dict:
    """decode_example's example, or {'bad': {'index', 'path', 'reason'}} for a bad record."""
    rng = np.random.default_rng([options.seed, 5, int(index)])
    try:
        video = clips.training_clip(
            record,
            rng,
            target_fps=options.target_fps,
            max_frames=options.max_frames,
            area=options.area,
            multiple=options.multiple,
            temporal_compression=options.temporal_compression,
            image_fraction=options.image_fraction,
        )
    except (ValueError, OSError, av.FFmpegError) as e:  # a bad file never stops the run
        path = _text(record.get("path", b""))
        logging.warning("skipping example %d (%s): %s", index, path, e)
        return {BAD: dict(index=int(index), path=path, reason=f"{type(e).__name__}: {e}")}
    return dict(video=video, caption=_text(record["caption"]), index=int(index))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group(examples) -> dict:
    """A step's examples: the usable ones, the count of bad ones (None or reported), and the
    reports ('bad': [{'index', 'path', 'reason'}])."""
    good = [e for e in examples if e is not None and BAD not in e]
    bad = [e[BAD] for e in examples if e is not None and BAD in e]
    return dict(examples=good, num_bad=len(examples) - len(good), bad=bad)


class _Subset:
    """The records of `source` at `indices` (random access), e.g. the training split."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def examples_dataset(source, per_example, indices: np.ndarray | None = None) -> grain.MapDataset:
    """Unshuffled examples: per_example(source index, record) over a random-access source, or
    over its records at `indices` (all when None).

    Later epochs ask for position + epoch * n: the example stays a function of its source index.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    n = len(indices)
    return grain.MapDataset.source(_Subset(source, indices)).map_with_index(
        lambda i, r: per_example(int(indices[i % n]), r)
    )


def step_groups(
    examples: grain.MapDataset,
    seed: int,
    examples_per_step: int,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """Groups of this host's examples, one per step (endless; each epoch a new order)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    ds = examples.shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count]
    return ds.batch(examples_per_step, batch_fn=_group)


def video_groups(
    config, source, process_index: int, process_count: int, examples_per_step: int, indices=None
):
    """Step groups of decoded training videos from a TFDS (video_clips) source (its records
    at `indices`, all when None)."""
    per_example = functools.partial(decode_or_report, clip_options(config))
    examples = examples_dataset(source, per_example, indices)
    return step_groups(examples, config.data.seed, examples_per_step, process_index, process_count)


class DataIterator:
    """Step-indexed, checkpointable iterator over step groups.

    `__call__(step)` returns the group of `step` (steps must come in order: the loop asks for
    step s after s - 1); `get_state()` / `set_state()` are JSON for the orbax checkpoint.
    With `worker_count > 0` records are decoded in that many worker processes (grain
    multiprocessing: absl flags are marked parsed, with their defaults, where the program did
    not parse them (a notebook, pytest); a script must run under `__main__`). The groups are
    the same with or without workers.
    """

    def __init__(self, groups: grain.MapDataset, worker_count: int = 0, prefetch: int = 2):
        ds = groups.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
        if worker_count > 0:
            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        self._iter = iter(ds)
        self._next_step = 0

    def __call__(self, step: int) -> dict:
        if step != self._next_step:
            raise ValueError(
                f"data iterator is at step {self._next_step}, asked for step {step}: restore "
                "its state from the checkpoint of that step"
            )
        self._next_step += 1
        return next(self._iter)

    def get_state(self) -> dict:
        return {"step": self._next_step, "grain": self._iter.get_state()}

    def set_state(self, state: dict):
        self._iter.set_state(state["grain"])
        self._next_step = int(state["step"])


def bad_files_path(directory: str) -> str:
    """This host's JSONL of skipped examples in `directory` (one file per host)."""
    i, n = jax.process_index(), jax.process_count()
    return os.path.join(directory, "bad_files.jsonl" if n == 1 else f"bad_files.{i}-of-{n}.jsonl")


class StepBatches:
    """`batch_fn(step)` for `loop.run` over a grain `DataIterator`'s step groups: each step's
    usable examples become this host's rows (`assemble`, of a subclass), assembled into
    global arrays; checkpointable (`get_state`), with the unusable examples counted
    (`metrics`) and listed."""

    def __init__(self, config, groups, mesh, worker_count=0, bad_files: str | None = None):
        """`bad_files`: a JSONL file the skipped examples' reports are appended to (with the
        step; a step re-run after a restart may list its examples again)."""
        self.config, self.mesh, self.bad_files = config, mesh, bad_files
        self.iterator = DataIterator(groups, worker_count)
        self.num_bad = self.num_seen = 0  # examples skipped / read so far

    def assemble(self, examples: list[dict], step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def examples(self, step: int) -> list[dict]:
        """The usable examples of step `step`; stops past data.max_bad_fraction."""
        group = self.iterator(step)
        self.num_bad += group["num_bad"]
        self.num_seen += group["num_bad"] + len(group["examples"])
        if self.bad_files and group["bad"]:
            with open(self.bad_files, "a") as f:
                f.writelines(json.dumps(dict(b, step=step)) + "\n" for b in group["bad"])
        if self.num_bad > self.config.data.max_bad_fraction * self.num_seen:
            raise RuntimeError(
                f"{self.num_bad} of {self.num_seen} examples were unusable, more than "
                f"config.data.max_bad_fraction={self.config.data.max_bad_fraction} (their paths "
                f"and errors are in the log and {self.bad_files or 'bad_files.jsonl'}); fix or "
                "rebuild the dataset"
            )
        return group["examples"]

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.assemble(self.examples(step), step)

    def metrics(self) -> dict[str, float]:
        """Unusable examples skipped so far, over all hosts (every host must call it)."""
        counts = np.asarray([self.num_bad, self.num_seen], np.int64)
        if jax.process_count() > 1:
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
        num_bad, num_seen = (int(c) for c in counts)
        return {"data/num_bad": num_bad, "data/bad_fraction": num_bad / max(num_seen, 1)}

    def __call__(self, step: int):
        sharding = mesh_lib.data_sharding(self.mesh)
        return to_global(self.local_batch(step), sharding)

    def get_state(self) -> dict:
        return dict(self.iterator.get_state(), num_bad=self.num_bad, num_seen=self.num_seen)

    def set_state(self, state: dict):
        self.iterator.set_state(state)
        self.num_bad, self.num_seen = int(state["num_bad"]), int(state["num_seen"])


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """This host's rows of a batch -> global arrays split over the mesh (every host calls it)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def validate_config(config):
    """Checks config.data.*, with the clip sizes against the VAE compression and dit.seq_len
    (validate the VAE's geometry first)."""
    d = config.data
    cc.check(d.source in SOURCES, "data.source", d.source, f"must be one of {SOURCES}")
    cc.check(
        d.source != "latent_cache" or bool(d.cache_dir),
        "data.cache_dir",
        d.cache_dir,
        "data.source='latent_cache' needs the cache folder written by sora_jax.cache_latents",
    )
    cc.positive(config, "data.target_area", "data.stats_examples", "data.encode_batch_size")
    cc.check(d.worker_count >= 0, "data.worker_count", d.worker_count, "must be >= 0")
    cc.check(
        0.0 <= d.max_bad_fraction <= 1.0,
        "data.max_bad_fraction",
        d.max_bad_fraction,
        "must be in [0, 1]",
    )
    if d.source != "moving_shapes":
        # Clip sizes of the grain sources (the built-in set uses frame_choices / resolutions).
        side = int(math.isqrt(int(d.target_area)))
        side -= side % (geometry.vae_compression(config)[1] * max(config.dit.patch[1:]))
        geometry.check_size(config, "data.max_frames", d.max_frames, side, side)
        cc.check(
            geometry.num_tokens(config, d.max_frames, side, side) <= config.dit.seq_len,
            "data.target_area",
            d.target_area,
            f"a square clip of max_frames={d.max_frames} frames at this area has more tokens "
            f"than dit.seq_len={config.dit.seq_len}",
        )
    cc.check(len(d.frame_choices) > 0, "data.frame_choices", d.frame_choices, "must not be empty")
    cc.check(len(d.resolutions) > 0, "data.resolutions", d.resolutions, "must not be empty")
    cc.check(
        0.0 <= d.image_fraction <= 1.0, "data.image_fraction", d.image_fraction, "must be in [0, 1]"
    )
    cc.positive(config, "data.num_examples", "data.fps")
    problem = shapes.exclusion_problem(d.exclude_words)
    cc.check(not problem, "data.exclude_words", d.exclude_words, problem)
    for f in d.frame_choices:
        geometry.check_size(config, "data.frame_choices", f, *d.resolutions[0])
    for res in d.resolutions:
        cc.check(
            isinstance(res, Sequence) and len(res) == 2,
            "data.resolutions",
            res,
            "each resolution must be (height, width)",
        )
        geometry.check_size(config, "data.resolutions", 1, *res)

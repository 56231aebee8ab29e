"""DiT batches from the grain pipeline: config.data.source = 'tfds' or 'latent_cache'.

  'tfds'          decode clips (input_pipeline), encode them with the frozen VAE on the fly,
                  tokenise captions (and embed them, for a frozen text encoder), pack;
  'latent_cache'  read latents, token ids and (frozen text encoders) caption embeddings written
                  by `python -m sora_jax.cache_latents`, pack (no VAE, no text encoder during
                  training).

Both see the same examples in the same order (a function of data.seed), normalise latents with
the mean / std of the first `data.stats_examples` source examples, and pack with
`batches.pack_batch`; so they give the same batches up to float error. With a frozen text
encoder (bert / t5 / clip) both add 'caption_emb' (the caption's hidden states) to the batch,
so the train step never runs the encoder. Each host packs its
own rows (dit.rows / process count) and the rows are assembled into global arrays with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sora_jax.data import batches, holdout, input_pipeline, latent_cache, packing
from sora_jax.data.batches import LatentCache
from sora_jax.models import builders, wan_folder


def latent_stats(latents: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) f32[c] over latents f32[t h w c]."""
    flat = np.concatenate([l.reshape(-1, l.shape[-1]) for l in latents])
    return flat.mean(0).astype(np.float32), (flat.std(0) + 1e-6).astype(np.float32)


def encode_examples(config, vae_model, vae_params, text_encoder, examples: list[dict]):
    """[(latent f32[t h w c], caption ids i32[lt], mask bool[lt])] of decoded examples."""
    if not examples:
        return []
    latents = batches.encode_examples(config, vae_model, vae_params, examples)
    ids, mask = text_encoder.tokenize([e["caption"] for e in examples])
    return list(zip(latents, np.asarray(ids), np.asarray(mask)))


def caption_embedder(text_encoder, batch_size: int = 32):
    """`embed(captions) -> f32[n lt dim]`, a frozen text encoder's hidden states (None for a
    trainable encoder). Batches are padded to `batch_size` (one compile); unlike the
    EmbeddingCache nothing is kept, so memory stays flat over millions of distinct captions."""
    if text_encoder.trainable:
        return None
    encode = jax.jit(text_encoder.encode)

    def embed(captions: list[str]) -> np.ndarray:
        out = [np.zeros((0, text_encoder.max_length, text_encoder.dim), np.float32)]
        for s in range(0, len(captions), batch_size):
            chunk = list(captions[s : s + batch_size])
            ids, mask = text_encoder.tokenize(chunk + [""] * (batch_size - len(chunk)))
            emb = encode(text_encoder.params, ids, mask)
            out.append(np.asarray(emb, np.float32)[: len(chunk)])
        return np.concatenate(out)

    return embed


def storage_dtype(config):
    """The dtype caption embeddings are stored in in the latent cache (config.text.dtype)."""
    return jnp.bfloat16 if config.text.dtype == "bfloat16" else np.float32


class Batches(input_pipeline.StepBatches):
    """`batch_fn(step)` for `loop.run`: global DiT batches, checkpointable (`get_state`).

    `build` adds `held_out` (the source indices training never reads, i64[k]) and
    `held_out_cache(k)`: the first k of them that decode, as a `LatentCache`."""

    def __init__(
        self,
        config,
        groups,
        to_items,
        null_ids,
        null_mask,
        mesh,
        worker_count=0,
        null_emb=None,
        bad_files: str | None = None,
    ):
        """`to_items(examples) -> (pack_batch items, their caption embeddings f32[lt dim] each,
        or None)`; `null_emb` f32[lt dim]: the empty caption's embedding (frozen encoders);
        see `StepBatches` for the rest."""
        super().__init__(config, groups, mesh, worker_count, bad_files)
        self.to_items = to_items
        self.null_ids, self.null_mask, self.null_emb = null_ids, null_mask, null_emb
        self.rows = config.dit.rows // jax.process_count()

    def assemble(self, examples: list[dict], step: int) -> dict[str, np.ndarray]:
        items, embs = self.to_items(examples)
        text_emb = None if embs is None else (embs, self.null_emb)
        rng = np.random.default_rng([self.config.data.seed, 2, step, jax.process_index()])
        return batches.pack_batch(
            self.config,
            items,
            self.null_ids,
            self.null_mask,
            rng,
            step,
            rows=self.rows,
            text_emb=text_emb,
        )


def _patchify_items(config, mean, std, encoded):
    items = []
    for latent, ids, mask in encoded:
        tok, pos = packing.patchify((latent - mean) / std, tuple(config.dit.patch))
        items.append((tok.astype(np.float32), pos, ids, mask))
    return items


def _text_info(config, text_encoder) -> dict:
    """What the latent cache's captions were tokenised / embedded with (in cache_info.json)."""
    return dict(
        text_kind=config.text.kind,
        text_identity=text_encoder.identity,
        text_max_length=config.text.max_length,
        text_dtype=config.text.dtype,
    )


def _check_cache_text(info: dict, config, text_encoder, cache_dir: str):
    """Token ids / embeddings of another text encoder would train on the wrong conditioning."""
    want = _text_info(config, text_encoder)
    if text_encoder.trainable:
        del want["text_dtype"]  # token ids do not depend on it
    # Caches written before these keys existed hold tiny-encoder ids of text.max_length.
    old = dict(text_identity=None, text_max_length=config.text.max_length, text_dtype=None)
    got = {k: info.get(k, old.get(k)) for k in want}
    if got != want:
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        raise ValueError(
            f"latent cache {cache_dir} was written for another text encoder "
            f"(cache, config): {diff}; write it again with this config "
            "(python -m sora_jax.cache_latents)"
        )


def build(config, vae_model, vae_params, text_encoder, mesh, log_dir: str | None = None):
    """(Batches, latent_mean f32[c], latent_std f32[c]) for config.data.source; skipped
    examples are listed in `log_dir`'s bad_files.jsonl (`input_pipeline.bad_files_path`) where it is given."""
    d = config.data
    rows, nproc = config.dit.rows, jax.process_count()
    if rows % nproc:
        raise ValueError(f"config.dit.rows={rows} must be divisible by the {nproc} hosts")
    per_step = (rows // nproc) * config.dit.max_segments
    null_ids, null_mask = (np.asarray(a)[0] for a in text_encoder.tokenize([""]))
    embed = caption_embedder(text_encoder)
    null_emb = None if embed is None else embed([text_encoder.null_text])[0]
    if d.source == "tfds":
        source = input_pipeline.open_tfds(d.tfds_name, d.tfds_data_dir, d.tfds_split)
        encode = functools.partial(encode_examples, config, vae_model, vae_params, text_encoder)
        opts = input_pipeline.clip_options(config)

        def measured_stats():
            first = [
                e
                for i in range(min(d.stats_examples, len(source)))
                if (e := input_pipeline.decode_example(opts, i, source[i])) is not None
            ]
            return latent_stats([l for l, _, _ in encode(first)])

        # A Wan VAE's latents keep the statistics its transformer was trained with.
        mean, std = wan_folder.latent_stats(config) or measured_stats()
        train, held_out = holdout.split(len(source), d.val_fraction, d.val_split_seed)
        groups = input_pipeline.video_groups(
            config, source, jax.process_index(), nproc, per_step, train
        )
        read = lambda i: input_pipeline.decode_example(opts, i, source[i])  # noqa: E731

        def to_items(examples):
            items = _patchify_items(config, mean, std, encode(examples))
            return items, None if embed is None else list(embed([e["caption"] for e in examples]))

    elif d.source == "latent_cache":
        source, info = latent_cache.open_cache(d.cache_dir)
        _check_cache_text(info, config, text_encoder, d.cache_dir)
        if null_emb is not None:  # as the stored embeddings: rounded to text.dtype
            null_emb = null_emb.astype(storage_dtype(config)).astype(np.float32)
        mean = np.asarray(info["latent_mean"], np.float32)
        std = np.asarray(info["latent_std"], np.float32)

        why = f"bad example in the latent cache {d.cache_dir}"  # its path: the cache's list

        def per_record(i, data):
            record = latent_cache.decode_record(data)
            if record is None:
                return {input_pipeline.BAD: dict(index=i, path="", reason=why)}
            return record

        train, held_out = holdout.split(len(source), d.val_fraction, d.val_split_seed)
        examples = input_pipeline.examples_dataset(source, per_record, train)
        groups = input_pipeline.step_groups(examples, d.seed, per_step, jax.process_index(), nproc)
        read = lambda i: latent_cache.decode_record(source[i])  # noqa: E731

        def to_items(records):
            encoded = [(r["latent"], r["caption_ids"], r["caption_mask"]) for r in records]
            items = _patchify_items(config, mean, std, encoded)
            return items, None if embed is None else [r["caption_emb"] for r in records]

    else:
        raise ValueError(f"config.data.source={d.source!r} has no grain pipeline")
    logging.info(
        "DiT data: %s, %d examples (%d held out for validation), latent std %s",
        d.source,
        len(source),
        len(held_out),
        std,
    )
    bad_files = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        bad_files = input_pipeline.bad_files_path(log_dir)
    batch_fn = Batches(
        config, groups, to_items, null_ids, null_mask, mesh, d.worker_count, null_emb, bad_files
    )
    batch_fn.held_out = held_out

    def held_out_cache(k: int) -> LatentCache:
        examples = [e for i in held_out[:k] if (e := read(int(i))) is not None]
        items, embs = to_items(examples)
        return LatentCache.from_items(items, mean, std, embs, null_emb)

    batch_fn.held_out_cache = held_out_cache
    return batch_fn, mean, std


def write_latent_cache(config, vae, output: str, chunk: int = 64, text_encoder=None) -> dict:
    """`python -m sora_jax.cache_latents`: encodes every example of the TFDS source once with
    `vae` = (model, params) and, for a frozen text encoder, each caption with it (config.text's,
    or `text_encoder` when the caller has built it); writes the latent cache to `output` and
    returns its info (num_examples, num_bad, latent_mean/std, ...)."""
    d = config.data
    vae_model, vae_params = vae
    text_encoder = text_encoder or builders.build_text_encoder(config)
    embed = caption_embedder(text_encoder)
    source = input_pipeline.open_tfds(d.tfds_name, d.tfds_data_dir, d.tfds_split)
    opts = input_pipeline.clip_options(config)
    writer = latent_cache.Writer(output)
    stats, num_bad, reports = [], 0, []
    for start in range(0, len(source), chunk):
        indices = range(start, min(start + chunk, len(source)))
        examples = [input_pipeline.decode_or_report(opts, i, source[i]) for i in indices]
        reports += [e[input_pipeline.BAD] for e in examples if input_pipeline.BAD in e]
        examples = [None if input_pipeline.BAD in e else e for e in examples]
        good = [e for e in examples if e is not None]
        encoded = iter(encode_examples(config, vae_model, vae_params, text_encoder, good))
        embs = iter([None] * len(good))
        if embed is not None:
            embs = iter(embed([e["caption"] for e in good]).astype(storage_dtype(config)))
        for i, example in zip(indices, examples):
            if example is None:
                num_bad += 1
                writer.add(latent_cache.BAD_RECORD)
                continue
            latent, ids, mask = next(encoded)
            if i < d.stats_examples:
                stats.append(latent)
            writer.add(latent_cache.encode_record(latent, ids, mask, i, next(embs)))
        logging.info("cached %d / %d examples", indices[-1] + 1, len(source))
    with open(os.path.join(output, "bad_files.jsonl"), "w") as f:  # paths and errors
        f.writelines(json.dumps(r) + "\n" for r in reports)
    mean, std = wan_folder.latent_stats(config) or latent_stats(stats)
    info = writer.close(
        dict(
            num_bad=num_bad,
            latent_mean=mean.tolist(),
            latent_std=std.tolist(),
            tfds=dict(name=d.tfds_name, data_dir=d.tfds_data_dir, split=d.tfds_split),
            vae_model=config.vae.model.to_dict(),
            **_text_info(config, text_encoder),
        )
    )
    logging.info("latent cache: %s (%d examples, %d bad)", output, info["num_examples"], num_bad)
    return info

"""DiT batches: the latent cache of the built-in set and packing cached or streamed latents
into the DiT's fixed-shape rows (`pack_batch`), shared by the trainer and the grain input.

A batch is a pure function of the step: the same step gives the same rows after a restart.
Packing goes through `packing.Packer` (first-fit into the configured row shapes), the code
that sampling packs its requests with too.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import numpy as np
from absl import logging

from sora_jax.captioning import manifest
from sora_jax.data import packing, shapes
from sora_jax.diffusion import conditioning
from sora_jax.models import builders, vae_inference
from sora_jax.text import cache as text_cache


@dataclasses.dataclass
class LatentCache:
    """Patchified, normalised latents of `n` videos, with their tokenised captions."""

    tokens: list[np.ndarray]  # n x f32[l_i d]
    positions: list[np.ndarray]  # n x i32[l_i 3]
    caption_ids: np.ndarray  # i32[n lt]
    caption_mask: np.ndarray  # bool[n lt]
    latent_mean: np.ndarray  # f32[c]
    latent_std: np.ndarray  # f32[c]
    # Frozen text encoders: embeddings of the distinct captions, computed once (the empty
    # caption included, at text_null_index); None for a trainable encoder.
    text_emb: np.ndarray | None = None  # f32[u lt dim]
    text_index: np.ndarray | None = None  # i32[n]: row of each video's caption in text_emb
    text_null_index: int = -1

    @classmethod
    def from_items(cls, items, latent_mean, latent_std, embs=None, null_emb=None) -> LatentCache:
        """The cache of `pack_batch` items (tokens, positions, caption ids, mask) with, for a
        frozen encoder, each item's caption embedding f32[lt dim] and the empty caption's."""
        tokens, positions, ids, mask = (list(x) for x in zip(*items)) if items else ([],) * 4
        text = {}
        if embs is not None:
            text = dict(
                text_emb=np.stack(list(embs) + [null_emb]).astype(np.float32),
                text_index=np.arange(len(items)),
                text_null_index=len(items),
            )
        return cls(
            tokens, positions, np.asarray(ids), np.asarray(mask), latent_mean, latent_std, **text
        )


@functools.lru_cache(maxsize=8)
def _jitted_encoder(vae_model, inference: vae_inference.InferenceConfig):
    """One jitted encoder per (model, inference), so repeated calls (the 'tfds' source encodes
    every step) compile once per video shape."""
    return jax.jit(lambda p, x: vae_inference.encode(vae_model, p, x, inference)[0])


def encode_videos(
    vae_model,
    vae_params,
    videos: list[np.ndarray],
    batch_size: int = 4,
    inference: vae_inference.InferenceConfig = vae_inference.InferenceConfig(),
):
    """Posterior means f32[t' h' w' c] for uint8 videos of any (mixed) sizes; long or large
    videos chunked / tiled as `inference` (config.vae.inference) says."""
    encode = _jitted_encoder(vae_model, inference)
    by_shape = collections.defaultdict(list)
    for i, v in enumerate(videos):
        by_shape[v.shape].append(i)
    out: list[np.ndarray | None] = [None] * len(videos)
    for idx in by_shape.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            # Pad the last chunk to the full batch: one compile per video shape, not two.
            padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
            x = builders.to_model_range(np.stack([videos[i] for i in padded]))
            means = np.asarray(encode(vae_params, x))
            for i, m in zip(chunk, means):
                out[i] = m
    return out


def captions_of(config, examples) -> list[str]:
    """The examples' captions, or their dense captions from `config.data.captions_manifest`
    (the output of `python -m sora_jax.recaption` over `captioning.export_shapes`) where it
    has them."""
    captions = [e["caption"] for e in examples]
    if not config.data.captions_manifest:
        return captions
    dense = manifest.dense_captions(config.data.captions_manifest)
    ids = [manifest.shapes_example_id(config.data.seed, i) for i in range(len(examples))]
    out = [dense.get(k, c) for k, c in zip(ids, captions)]
    logging.info(
        "recaptioned: %d of %d cached examples (%d differ from the original captions)",
        sum(k in dense for k in ids),
        len(ids),
        sum(a != b for a, b in zip(out, captions)),
    )
    return out


def caption_embeddings(config, text_encoder, captions: list[str]) -> dict:
    """LatentCache's text fields for a frozen encoder ({} for a trainable one): each distinct
    caption (and the empty one) encoded once, through the embedding cache
    (config.text.cache_dir)."""
    if text_encoder.trainable:
        return {}
    cache = text_cache.EmbeddingCache(text_encoder, config.text.cache_dir or None)
    table, _, index = text_cache.encode_unique(cache, list(captions) + [text_encoder.null_text])
    logging.info("text embeddings: %d distinct captions (%d cached)", len(table), cache.hits)
    return dict(text_emb=table, text_index=index[:-1], text_null_index=int(index[-1]))


def shapes_source(config, num_examples: int) -> shapes.MovingShapes:
    """The built-in set of config.data (its seed, lengths, sizes, image share and excluded
    words)."""
    d = config.data
    return shapes.MovingShapes(
        seed=d.seed,
        num_examples=num_examples,
        frame_choices=tuple(d.frame_choices),
        resolutions=tuple(tuple(r) for r in d.resolutions),
        image_fraction=d.image_fraction,
        exclude_words=tuple(d.exclude_words),
    )


def encode_examples(config, vae_model, vae_params, examples) -> list[np.ndarray]:
    """The latents f32[t h w c] of the examples' videos (config.data.encode_batch_size per VAE
    call, config.vae.inference)."""
    return encode_videos(
        vae_model,
        vae_params,
        [e["video"] for e in examples],
        batch_size=config.data.encode_batch_size,
        inference=vae_inference.from_config(config),
    )


def build_latent_cache(
    config, vae_model, vae_params, text_encoder, latent_mean, latent_std
) -> LatentCache:
    """Encodes the first `dit.latent_cache_size` videos and normalises their latents with the
    VAE's stored statistics ((z - latent_mean) / latent_std, f32[c] each)."""
    source = shapes_source(config, config.data.num_examples)
    n = min(config.dit.latent_cache_size, len(source))
    examples = [source[i] for i in range(n)]
    latents = encode_examples(config, vae_model, vae_params, examples)
    mean, std = np.asarray(latent_mean, np.float32), np.asarray(latent_std, np.float32)
    flat = np.concatenate([l.reshape(-1, l.shape[-1]) for l in latents])
    captions = captions_of(config, examples)
    # First frames of videos as images under the video's caption: the causal VAE's first
    # latent frame is that frame's image latent, and factorised sampling's image pass learns
    # where a shape that "moves right" starts.
    rng = np.random.default_rng([config.data.seed, 7])
    extra = [
        i for i, l in enumerate(latents) if len(l) > 1 and rng.random() < config.dit.first_frames
    ]
    latents = list(latents) + [latents[i][:1] for i in extra]
    captions = list(captions) + [captions[i] for i in extra]
    tokens, positions = [], []
    for l in latents:
        tok, pos = packing.patchify((l - mean) / std, tuple(config.dit.patch))
        tokens.append(tok.astype(np.float32))
        positions.append(pos)
    ids, mask = text_encoder.tokenize(captions)
    text = caption_embeddings(config, text_encoder, captions)
    logging.info(
        "latent cache: %d videos (+ %d first frames), %d tokens, latent std %s (normalised: %s)",
        n,
        len(extra),
        sum(len(t) for t in tokens),
        np.round(std, 3),
        np.round(((flat - mean) / std).std(0), 3),
    )
    return LatentCache(
        tokens,
        positions,
        np.asarray(ids),
        np.asarray(mask),
        mean.astype(np.float32),
        std.astype(np.float32),
        **text,
    )


def held_out_shapes(
    config, vae_model, vae_params, text_encoder, latent_mean, latent_std, k: int
) -> LatentCache:
    """`k` built-in videos training never sees (the moving shapes after the latent cache's
    `dit.latent_cache_size`), encoded and normalised as the cache is, for validation."""
    first = config.dit.latent_cache_size
    source = shapes_source(config, first + k)
    examples = [source[i] for i in range(first, first + k)]
    latents = encode_examples(config, vae_model, vae_params, examples)
    mean, std = np.asarray(latent_mean, np.float32), np.asarray(latent_std, np.float32)
    patched = [packing.patchify((l - mean) / std, tuple(config.dit.patch)) for l in latents]
    captions = [e["caption"] for e in examples]
    ids, mask = text_encoder.tokenize(captions)
    return LatentCache(
        [t.astype(np.float32) for t, _ in patched],
        [p for _, p in patched],
        np.asarray(ids),
        np.asarray(mask),
        mean,
        std,
        **caption_embeddings(config, text_encoder, captions),
    )


def packer(config, rows: int | None = None) -> packing.Packer:
    """The DiT's row shapes (dit.seq_len x `rows`, default dit.rows, and the dit.pack_lengths
    buckets of the same token budget) with dit.max_segments videos and dit.text_tokens caption
    tokens per row."""
    dc = config.dit
    return packing.Packer(
        dc.seq_len,
        dc.rows if rows is None else rows,
        dc.max_segments,
        seq_lens=dc.pack_lengths,
        text_tokens=dc.text_tokens,
    )


def length_plan(config, cache: LatentCache):
    """For `dit.pack_lengths`: (row lengths i[k], each cached video's shortest row length it
    fits i[n], the lengths' shares of the cache's tokens f[k]); None without pack_lengths.
    Depends only on the cache, so a trainer computes it once and passes it to `dit_batch`."""
    p = packer(config)
    if len(p.shapes) == 1:
        return None
    sizes = np.array([len(t) for t in cache.tokens])
    lengths = np.array(sorted(p.shapes))
    own = np.array([p.length_of(n) for n in sizes])
    share = np.array([sizes[own == l].sum() for l in lengths], np.float64)
    return lengths, own, share / share.sum()


def dit_batch(
    config,
    cache: LatentCache,
    null_ids: np.ndarray,
    null_mask: np.ndarray,
    step: int,
    plan="auto",
) -> dict[str, np.ndarray]:
    """The packed batch of step `step` (a pure function of the step).

    Draws `rows * max_segments` cached videos at random and packs them with `pack_batch`.
    With `dit.pack_lengths` the step first draws a row length L (with probability its
    videos' share of the cache's tokens, videos belonging to the shortest length they fit:
    `plan` = `length_plan(config, cache)`, computed here unless given) and packs L's rows
    (`packer`): L's videos first, then shorter ones into the tails' gaps.
    """
    dc = config.dit
    rng = np.random.default_rng([config.data.seed, 2, step])
    if isinstance(plan, str):
        plan = length_plan(config, cache)
    if plan is not None:
        # A stream of its own: without pack_lengths, batches stay exactly as they were.
        lengths, own, p = plan
        lrng = np.random.default_rng([config.data.seed, 6, step])
        length = int(lrng.choice(lengths, p=p))
        videos = packer(config).shapes[length][0] * dc.max_segments
        idx = np.flatnonzero(own == length)
        shorter = np.flatnonzero(own < length)
        draw = np.concatenate(
            [
                lrng.choice(idx, size=min(len(idx), videos), replace=False),
                lrng.choice(shorter, size=min(len(shorter), videos), replace=False),
            ]
        ).astype(int)
        return pack_cached(config, cache, null_ids, null_mask, rng, step, draw, length)
    n = len(cache.tokens)
    draw = rng.choice(n, size=min(n, dc.rows * dc.max_segments), replace=False)
    return pack_cached(config, cache, null_ids, null_mask, rng, step, draw)


def pack_cached(config, cache, null_ids, null_mask, rng, step, draw, length=None):
    """`pack_batch` of the cached videos `draw` (indices)."""
    items = [
        (cache.tokens[i], cache.positions[i], cache.caption_ids[i], cache.caption_mask[i])
        for i in draw
    ]
    emb = None
    if cache.text_emb is not None:
        emb = (
            [cache.text_emb[cache.text_index[i]] for i in draw],
            cache.text_emb[cache.text_null_index],
        )
    return pack_batch(config, items, null_ids, null_mask, rng, step, length=length, text_emb=emb)


def pack_batch(
    config,
    items,
    null_ids,
    null_mask,
    rng: np.random.Generator,
    step: int,
    rows: int | None = None,
    length: int | None = None,
    text_emb=None,
):
    """Packs (tokens f32[l d], positions i32[l 3], caption ids i32[lt], mask bool[lt]) items
    first-fit into the rows of length `length` (default dit.seq_len) of `packer(config, rows)`
    (those that do not fit are left out), after dropping tokens at the `dit.token_drop` rate;
    `rng` replaces captions by the empty one at rate `text_dropout` (CFG).

    Adds 'num_tokens' f32[rows max_segments] (whole videos' token counts) when tokens are
    dropped; 'cond_mask' bool[rows seq_len] with `dit.condition.rate > 0`: the tokens of the
    latent frames given to each conditioned video (see `conditioning`; a stream of `step`);
    and, with `text_emb` = (per-item f32[lt dim] embeddings, the empty caption's) from a frozen
    encoder, 'caption_emb' f32[rows max_segments lt dim].
    """
    dc = config.dit
    max_segments = dc.max_segments
    row_packer = packer(config, rows)
    length = dc.seq_len if length is None else length
    rows = row_packer.shapes[length][0]
    td = dc.token_drop
    rate = packing.drop_rate(step, td.rate, td.schedule, td.start_rate, td.schedule_steps)
    dropping = td.rate > 0 or td.start_rate > 0
    kept = [(tok, pos) for tok, pos, _, _ in items]
    if dropping:
        # A stream of its own: without dropping, batches stay exactly as they were.
        drng = np.random.default_rng([config.data.seed, 5, step])
        rates = packing.example_drop_rates(drng, len(items), rate, td.per_example, td.max_rate)
        kept = [packing.drop_tokens(drng, t, p, r)[:2] for (t, p), r in zip(kept, rates)]
    drop = rng.random(len(items)) < dc.text_dropout
    # Each item's caption as the model sees it: the empty one where CFG dropped it.
    captions = [
        (null_ids, null_mask) if dropped else (cap_ids, cap_mask)
        for (_, _, cap_ids, cap_mask), dropped in zip(items, drop)
    ]
    batch, placements = row_packer.pack(
        kept, length, text_lengths=[int(np.sum(m)) for _, m in captions]
    )
    lt = len(null_ids)
    ids = np.zeros((rows, max_segments, lt), np.int32)
    mask = np.zeros((rows, max_segments, lt), bool)
    emb = None
    if text_emb is not None:
        emb = np.zeros((rows, max_segments) + text_emb[1].shape, np.float32)
    for j, ((cap_ids, cap_mask), p, dropped) in enumerate(zip(captions, placements, drop)):
        if p is None:
            continue
        ids[p.row, p.segment - 1] = cap_ids
        mask[p.row, p.segment - 1] = cap_mask
        if emb is not None:
            emb[p.row, p.segment - 1] = text_emb[1] if dropped else text_emb[0][j]
    out = {
        "tokens": batch["tokens"],
        "segment_ids": batch["segment_ids"],
        "positions": batch["positions"],
        "caption_ids": ids,
        "caption_mask": mask,
    }
    if dropping:
        # Tokens of each whole video, for the resolution-dependent time shift.
        num_tokens = np.zeros((rows, max_segments), np.float32)
        for (tok, _, _, _), p in zip(items, placements):
            if p is not None:
                num_tokens[p.row, p.segment - 1] = len(tok)
        out["num_tokens"] = num_tokens
    if emb is not None:
        out["caption_emb"] = emb
    cond = dc.condition
    if cond.rate > 0:
        # A stream of its own: the draws above (and so old runs' batches) stay as they were.
        crng = np.random.default_rng([config.data.seed, 4, step])
        cond_mask = np.zeros(batch["segment_ids"].shape, bool)
        for (_, positions, _, _), (_, pos), p in zip(items, kept, placements):
            if p is None or crng.random() >= cond.rate:
                continue
            num_frames = int(positions[:, 0].max()) + 1  # before any token dropping
            drawn = conditioning.sample_frame_mask(
                crng, num_frames, dict(cond.mask_types), cond.random_frame_prob
            )
            if drawn is not None:
                cond_mask[p.row, p.start : p.start + p.length] = conditioning.token_mask(
                    drawn[1], pos
                )
        out["cond_mask"] = cond_mask
    return out

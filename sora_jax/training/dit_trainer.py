"""Stage 2: train the DiT (rectified flow or DDPM) on patch-n'-packed VAE latents.

The frozen VAE encodes a cache of moving-shapes videos once (so the VAE costs
nothing per step); each step packs a random draw of cached latents, of mixed
durations and aspect ratios, into fixed-length token rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sora_jax.data import packing, shapes
from sora_jax.diffusion import conditioning, objectives
from sora_jax.models import dit as dit_lib
from sora_jax.models import flops as flops_lib
from sora_jax.models import vae_inference
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.text import cache as text_cache
from sora_jax.text import encoders
from sora_jax.training import checkpoint, grad_accum, loop, vae_trainer
from sora_jax.training import train_state as ts


def build_text_encoder(config) -> encoders.TextEncoder:
    t = config.text
    return encoders.build_text_encoder(
        t.kind,
        max_length=t.max_length,
        vocabulary=shapes.VOCABULARY,
        width=t.width,
        depth=t.depth,
        num_heads=t.num_heads,
        mlp_ratio=t.mlp_ratio,
        path=t.path or None,
        tokenizer_path=t.tokenizer_path or None,
        dtype=t.dtype,
    )


def row_text_tokens(config) -> int:
    """Caption tokens the DiT projects and attends per packed row: dit.text_tokens when it
    packs the row's captions, else every slot's (max_segments x text.max_length)."""
    slots = config.dit.max_segments * config.text.max_length
    return min(config.dit.text_tokens, slots) if config.dit.text_tokens else slots


def build_dit(config, text_dim: int) -> dit_lib.DiT:
    m = config.dit.model
    pt, ph, pw = config.dit.patch
    return dit_lib.DiT(
        patch_dim=pt * ph * pw * config.vae.model.latent_channels,
        hidden=m.hidden,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        text_dim=text_dim,
        rope_theta=m.rope_theta,
        abs_positions=m.abs_positions,
        cond_embedding=m.cond_embedding,
        dtype=dit_lib.DTYPES[m.dtype],
        mlp=m.mlp,
        text_attention=m.text_attention,
        attention_layout=m.attention_layout,
        remat_policy=m.remat_policy,
        text_tokens=config.dit.text_tokens,
        # All-to-all sequence parallelism is the explicit choice (sora_jax/parallel/sequence.py);
        # 'gspmd' leaves the split attention to the compiler.
        attention_impl="sequence_parallel"
        if config.mesh.sequence_attention == "all_to_all"
        else m.attention_impl,
    )


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
            x = vae_trainer.to_model_range(np.stack([videos[i] for i in padded]))
            means = np.asarray(encode(vae_params, x))
            for i, m in zip(chunk, means):
                out[i] = m
    return out


def _captions(config, examples) -> list[str]:
    """The examples' captions, or their dense captions from `config.data.captions_manifest`
    (the output of `python -m sora_jax.recaption` over `captioning.export_shapes`) where it
    has them."""
    captions = [e["caption"] for e in examples]
    if not config.data.captions_manifest:
        return captions
    from sora_jax.captioning import manifest

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
    caption (and the empty one) encoded once, through the embedding cache (config.text.cache_dir)."""
    if text_encoder.trainable:
        return {}
    cache = text_cache.EmbeddingCache(text_encoder, config.text.cache_dir or None)
    table, _, index = text_cache.encode_unique(cache, list(captions) + [text_encoder.null_text])
    logging.info("text embeddings: %d distinct captions (%d cached)", len(table), cache.hits)
    return dict(text_emb=table, text_index=index[:-1], text_null_index=int(index[-1]))


def build_latent_cache(
    config, vae_model, vae_params, text_encoder, latent_mean, latent_std
) -> LatentCache:
    """Encodes the first `dit.latent_cache_size` videos and normalises their latents with the
    VAE's stored statistics ((z - latent_mean) / latent_std, f32[c] each)."""
    d = config.data
    source = shapes.MovingShapes(
        seed=d.seed,
        num_examples=d.num_examples,
        frame_choices=tuple(d.frame_choices),
        resolutions=tuple(tuple(r) for r in d.resolutions),
        image_fraction=d.image_fraction,
    )
    n = min(config.dit.latent_cache_size, len(source))
    examples = [source[i] for i in range(n)]
    latents = encode_videos(
        vae_model,
        vae_params,
        [e["video"] for e in examples],
        batch_size=config.data.encode_batch_size,
        inference=vae_inference.from_config(config),
    )
    mean, std = np.asarray(latent_mean, np.float32), np.asarray(latent_std, np.float32)
    flat = np.concatenate([l.reshape(-1, l.shape[-1]) for l in latents])
    captions = _captions(config, examples)
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


def length_plan(config, cache: LatentCache):
    """For `dit.pack_lengths`: (row lengths i[k], rows per batch of each length i[k] (from
    `packing.row_shapes`), each cached video's shortest row length it fits i[n], the lengths'
    shares of the cache's tokens f[k]); None without pack_lengths.
    Depends only on the cache, so a trainer computes it once and passes it to `dit_batch`."""
    dc = config.dit
    shapes = packing.row_shapes(dc.seq_len, dc.rows, dc.max_segments, dc.pack_lengths)
    if len(shapes) == 1:
        return None
    sizes = np.array([len(t) for t in cache.tokens])
    lengths = np.array(sorted(shapes))
    rows = np.array([shapes[l][0] for l in lengths])
    own = lengths[np.searchsorted(lengths, sizes)]  # shortest row length each fits
    share = np.array([sizes[own == l].sum() for l in lengths], np.float64)
    return lengths, rows, own, share / share.sum()


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
    `plan` = `length_plan(config, cache)`, computed here unless given) and packs rows x L
    (`packing.row_shapes`): L's videos first, then shorter ones into the tails' gaps.
    """
    dc = config.dit
    rng = np.random.default_rng([config.data.seed, 2, step])
    if isinstance(plan, str):
        plan = length_plan(config, cache)
    if plan is not None:
        # A stream of its own: without pack_lengths, batches stay exactly as they were.
        lengths, rows_per_length, own, p = plan
        lrng = np.random.default_rng([config.data.seed, 6, step])
        length = int(lrng.choice(lengths, p=p))
        rows = int(rows_per_length[np.searchsorted(lengths, length)])
        videos = rows * dc.max_segments
        idx = np.flatnonzero(own == length)
        shorter = np.flatnonzero(own < length)
        draw = np.concatenate(
            [
                lrng.choice(idx, size=min(len(idx), videos), replace=False),
                lrng.choice(shorter, size=min(len(shorter), videos), replace=False),
            ]
        ).astype(int)
        return _pack_drawn(config, cache, null_ids, null_mask, rng, step, draw, length, rows)
    n = len(cache.tokens)
    draw = rng.choice(n, size=min(n, dc.rows * dc.max_segments), replace=False)
    return _pack_drawn(config, cache, null_ids, null_mask, rng, step, draw)


def _pack_drawn(config, cache, null_ids, null_mask, rng, step, draw, seq_len=None, rows=None):
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
    return pack_batch(
        config, items, null_ids, null_mask, rng, step, rows=rows, text_emb=emb, seq_len=seq_len
    )


def pack_batch(
    config,
    items,
    null_ids,
    null_mask,
    rng: np.random.Generator,
    step: int,
    rows=None,
    text_emb=None,
    seq_len=None,
):
    """Packs (tokens f32[l d], positions i32[l 3], caption ids i32[lt], mask bool[lt]) items
    first-fit into `rows` (default dit.rows) sequences of `seq_len` (default dit.seq_len) tokens
    with at most dit.max_segments videos and dit.text_tokens caption tokens (if > 0) each
    (those that do not fit are left out), after
    dropping tokens at the `dit.token_drop` rate; `rng` replaces
    captions by the empty one at rate `text_dropout` (CFG).

    Adds 'num_tokens' f32[rows max_segments] (whole videos' token counts) when tokens are
    dropped; 'cond_mask' bool[rows seq_len] with `dit.condition.rate > 0`: the tokens of the
    latent frames given to each conditioned video (see `conditioning`; a stream of `step`);
    and, with `text_emb` = (per-item f32[lt dim] embeddings, the empty caption's) from a frozen
    encoder, 'caption_emb' f32[rows max_segments lt dim].
    """
    dc = config.dit
    max_segments = dc.max_segments
    seq_len = dc.seq_len if seq_len is None else seq_len
    rows = dc.rows if rows is None else rows
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
    batch, placements = packing.pack(
        kept,
        seq_len,
        rows,
        max_segments,
        text_lengths=[int(np.sum(m)) for _, m in captions],
        text_tokens=dc.text_tokens,
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


def text_features(text_encoder, text_params, ids, mask):
    """f32[b s lt dim] text embeddings for caption ids i32[b s lt]."""
    b, s, lt = ids.shape
    emb = text_encoder.encode(text_params, ids.reshape(b * s, lt), mask.reshape(b * s, lt))
    return emb.reshape(b, s, lt, -1)


def make_train_step(config, dit, text_encoder, tx, frozen_text_params=None):
    """Pure `train_step(state, batch, rng) -> (state, metrics)` for the DiT.

    With a trainable text encoder its params are state.params['text']; a frozen
    one's are passed in and closed over (they are not trained or checkpointed), unless the
    batch brings cached 'caption_emb' (then the encoder does not run in the step at all).
    """
    objective = objectives.from_config(config)
    accum = config.dit.train.grad_accum_steps
    cond_noise = float(config.dit.condition.noise)

    def draw(batch, rng):
        """The step's randomness for the whole batch (so microbatching does not change it)."""
        x0, seg = batch["tokens"], batch["segment_ids"]
        num_seg = batch["caption_mask"].shape[1]  # caption slots per row, from the batch
        rng_t, rng_n = jax.random.split(rng)
        # Tokens per segment f32[b s]: the token-dependent time shift of each video (the whole
        # video's count when tokens were dropped).
        counts = jnp.sum(seg[:, :, None] == jnp.arange(1, num_seg + 1), axis=1)
        counts = batch.get("num_tokens", counts.astype(jnp.float32))
        t = objective.sample_t(rng_t, seg.shape[:1] + (num_seg,), counts)
        # Given frames' time per segment f32[b s] with noise augmentation, else None (a
        # stream of its own, so that it leaves t and the noise unchanged).
        t_cond = None
        if cond_noise > 0:
            t_cond = cond_noise * jax.random.uniform(jax.random.fold_in(rng, 2), t.shape)
        return t, jax.random.normal(rng_n, x0.shape, x0.dtype), t_cond

    def loss_mask(batch):
        """bool[b l]: the tokens that carry loss (not padding, not given frames)."""
        valid = batch["segment_ids"] > 0
        return valid & ~batch["cond_mask"] if "cond_mask" in batch else valid

    def loss_fn(params, inputs):
        """Sum of the squared errors of (a microbatch of) the batch / the whole batch's count
        of loss elements (`denoms`, the same in every row)."""
        batch, t, noise, t_cond, denoms = inputs
        if "caption_emb" in batch:
            text = batch["caption_emb"]
        else:
            text_params = params["text"] if text_encoder.trainable else frozen_text_params
            text = text_features(
                text_encoder, text_params, batch["caption_ids"], batch["caption_mask"]
            )
        x0, seg = batch["tokens"], batch["segment_ids"]
        per_token = lambda a: jnp.take_along_axis(a, jnp.maximum(seg - 1, 0), axis=1)  # noqa: E731
        t_tok = per_token(t)[..., None]
        x_t = objective.corrupt(x0, noise, t_tok)
        valid = loss_mask(batch)
        if "cond_mask" in batch:
            # Given frames: at their own time (0, clean, without noise augmentation), and no
            # loss on them.
            cond = batch["cond_mask"] & (seg > 0)
            if t_cond is not None:
                tc_tok = per_token(t_cond)
                x_given = objective.corrupt(x0, noise, tc_tok[..., None])
            else:
                tc_tok, x_given = 0.0, x0
            x_t = jnp.where(cond[..., None], x_given, x_t)
            kw = dict(t_tok=jnp.where(cond, tc_tok, t_tok[..., 0]), cond_mask=cond)
        else:
            kw = {}
        out = dit.apply(
            {"params": params["dit"]},
            x_t,
            t,
            seg,
            batch["positions"],
            text,
            batch["caption_mask"],
            **kw,
        )
        diff = out - objective.target(x0, noise, t_tok)
        weight = valid[..., None] * objective.loss_weight(t_tok)
        return jnp.sum(diff**2 * weight) / denoms[0], {}

    def train_step(state: ts.TrainState, batch, rng):
        t, noise, t_cond = draw(batch, rng)
        seg = batch["segment_ids"]
        denom = jnp.sum(loss_mask(batch)) * batch["tokens"].shape[-1]
        # denom is the same for every microbatch: broadcast it along the batch axis.
        denoms = jnp.full(seg.shape[:1], denom, jnp.float32)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = grad_accum.sum_gradients(
            grad_fn, state.params, (batch, t, noise, t_cond, denoms), accum
        )
        aux["padding_fraction"] = 1.0 - jnp.mean(seg > 0)
        if "cond_mask" in batch:
            cond = batch["cond_mask"] & (seg > 0)
            aux["cond_fraction"] = jnp.sum(cond) / jnp.maximum(jnp.sum(seg > 0), 1)
        new_state = ts.apply_gradients(state, grads, tx, config.dit.train.ema_decay)
        return new_state, {"loss": loss, **aux, **ts.norms(grads, state.params)}

    return train_step


def init_params_fn(config, dit, text_encoder, batch_size: int = 1):
    """`init(key) -> params` ({'dit': ..., 'text': ... if trainable}), the DiT's params boxed
    with their logical axis names (nn.Partitioned): `nn.unbox` them for plain arrays, or
    `jax.eval_shape` + `nn.get_partition_spec` for shardings."""
    dc, lt = config.dit, config.text.max_length
    b = batch_size
    x = jnp.zeros((b, dc.seq_len, dit.patch_dim), jnp.float32)
    seg = jnp.ones((b, dc.seq_len), jnp.int32)
    pos = jnp.zeros((b, dc.seq_len, 3), jnp.int32)
    t = jnp.zeros((b, dc.max_segments), jnp.float32)
    text = jnp.zeros((b, dc.max_segments, lt, text_encoder.dim), jnp.float32)
    tmask = jnp.ones((b, dc.max_segments, lt), bool)

    def init(key):
        k_dit, k_text = jax.random.split(key)
        params = {"dit": dit.init(k_dit, x, t, seg, pos, text, tmask)["params"]}
        if text_encoder.trainable:
            ids = jnp.zeros((1, lt), jnp.int32)
            params["text"] = text_encoder.module.init(k_text, ids, jnp.ones((1, lt), bool))[
                "params"
            ]
        return params

    return init


def abstract_params(config, dit, text_encoder):
    """Shapes/dtypes of the (boxed) params, with no allocation."""
    return jax.eval_shape(init_params_fn(config, dit, text_encoder), jax.random.PRNGKey(0))


def model_summary(config) -> dict[str, float]:
    """Parameter counts and matmul FLOPs per token of the configured DiT (no allocation)."""
    text_encoder = build_text_encoder(config)
    dit = build_dit(config, text_encoder.dim)
    params = abstract_params(config, dit, text_encoder)
    dc = config.dit
    flops = flops_lib.dit_flops_per_token(dit, dc.seq_len, row_text_tokens(config))
    return {
        "dit_params": flops_lib.param_count(params["dit"]),
        "text_params": flops_lib.param_count(params.get("text", {})),
        "forward_flops_per_token": flops["forward"],
        "train_flops_per_token": flops["train"] + flops["remat"],
        "tokens_per_step": dc.rows * dc.seq_len,
    }


def boxed_init(config, dit, text_encoder, tx, extras, batch: int = 1):
    """`init(key) -> TrainState` whose DiT leaves are boxed with their logical axis names
    (for jax.eval_shape and the shardings; `init_state` unboxes)."""
    init_params = init_params_fn(config, dit, text_encoder, batch)
    return lambda key: ts.create(init_params(key), tx, extras)


def init_state(config, dit, text_encoder, tx, mesh, extras):
    """The initial TrainState, each array created already placed as config.mesh.rules say."""
    init = boxed_init(config, dit, text_encoder, tx, extras, mesh_lib.batch_size_divisor(mesh))
    rules = partitioning.rules_from_config(config.mesh.rules)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    state, _ = partitioning.init_sharded(init, mesh, rules, key)
    return state


def _extras(latent_mean, latent_std):
    return {"latent_mean": jnp.asarray(latent_mean), "latent_std": jnp.asarray(latent_std)}


def train(config: ml_collections.ConfigDict, workdir: str, mesh, writer):
    """Trains (or resumes, or skips if finished) the DiT; returns (state, history)."""
    vae_model, vae_state = vae_trainer.load_state(config, workdir, mesh)
    text_encoder = build_text_encoder(config)
    dit = build_dit(config, text_encoder.dim)
    t = config.dit.train
    tx = ts.make_optimizer(t)
    grain_source = config.data.source != "moving_shapes"
    ckpt = checkpoint.for_stage(config, workdir, "dit", with_data=grain_source)
    null_ids, null_mask = (np.asarray(a)[0] for a in text_encoder.tokenize([""]))
    vae_params = vae_state.ema_params
    if grain_source:
        from sora_jax.training import dit_input  # it builds on this module

        # Own videos are normalised with their own statistics (dit_input), the built-in set
        # with the VAE's stored ones; either way the DiT's checkpoint keeps the copy it trains
        # with (sampling uses that one), so a resumed run normalises as it started.
        batch_fn, mean, std = dit_input.build(
            config, vae_model, vae_params, text_encoder, mesh, os.path.join(workdir, "dit")
        )
        extras = _extras(mean, std)
    else:
        extras = vae_state.extras
    state = init_state(config, dit, text_encoder, tx, mesh, extras)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        if grain_source:
            batch_fn.set_state(ckpt.restore_data())
    if not grain_source:
        stats = jax.device_get(state.extras)
        cache = build_latent_cache(
            config, vae_model, vae_params, text_encoder, stats["latent_mean"], stats["latent_std"]
        )
        plan = length_plan(config, cache)
        batch_fn = functools.partial(dit_batch, config, cache, null_ids, null_mask, plan=plan)
    step_fn = loop.jit_train_step(
        make_train_step(config, dit, text_encoder, tx, text_encoder.params),
        mesh,
        loop.shardings_of(state),
        partitioning.rules_from_config(config.mesh.rules),
    )
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    state, history = loop.run("dit", state, step_fn, batch_fn, t, ckpt, writer, mesh, key)
    ckpt.close()
    return state, history


def load(config, workdir: str, mesh):
    """(dit module, text encoder, EMA params, extras) from the latest DiT checkpoint."""
    text_encoder = build_text_encoder(config)
    dit = build_dit(config, text_encoder.dim)
    tx = ts.make_optimizer(config.dit.train)
    with_data = config.data.source != "moving_shapes"  # a grain iterator state beside the model
    ckpt = checkpoint.for_stage(config, workdir, "dit", with_data=with_data)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"no DiT checkpoint under {ckpt.directory}: train the 'dit' stage first "
            f"(python -m sora_jax.train --config=... --workdir={workdir})"
        )
    c = config.vae.model.latent_channels
    target = init_state(
        config,
        dit,
        text_encoder,
        tx,
        mesh,
        _extras(np.zeros(c, np.float32), np.ones(c, np.float32)),
    )
    state = ckpt.restore(target)
    ckpt.close()
    return dit, text_encoder, state.ema_params, state.extras

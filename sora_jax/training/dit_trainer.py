"""Stage 2: train the DiT (rectified flow or DDPM) on patch-n'-packed VAE latents.

The frozen VAE encodes a cache of moving-shapes videos once (so the VAE costs
nothing per step); each step packs a random draw of cached latents, of mixed
durations and aspect ratios, into fixed-length token rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sora_jax.data import packing, shapes
from sora_jax.diffusion import conditioning, objectives
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae_inference
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.text import encoders
from sora_jax.training import checkpoint, loop, vae_trainer
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
    )


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


def encode_videos(
    vae_model,
    vae_params,
    videos: list[np.ndarray],
    batch_size: int = 32,
    inference: vae_inference.InferenceConfig = vae_inference.InferenceConfig(),
):
    """Posterior means f32[t' h' w' c] for uint8 videos of any (mixed) sizes; long or large
    videos chunked / tiled as `inference` (config.vae.inference) says."""
    encode = jax.jit(lambda p, x: vae_inference.encode(vae_model, p, x, inference)[0])
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


def build_latent_cache(config, vae_model, vae_params, text_encoder) -> LatentCache:
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
        inference=vae_inference.from_config(config),
    )
    flat = np.concatenate([l.reshape(-1, l.shape[-1]) for l in latents])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    tokens, positions = [], []
    for l in latents:
        tok, pos = packing.patchify((l - mean) / std, tuple(config.dit.patch))
        tokens.append(tok.astype(np.float32))
        positions.append(pos)
    ids, mask = text_encoder.tokenize(_captions(config, examples))
    logging.info(
        "latent cache: %d videos, %d tokens, latent std %s",
        n,
        sum(len(t) for t in tokens),
        np.round(std, 3),
    )
    return LatentCache(
        tokens,
        positions,
        np.asarray(ids),
        np.asarray(mask),
        mean.astype(np.float32),
        std.astype(np.float32),
    )


def dit_batch(
    config, cache: LatentCache, null_ids: np.ndarray, null_mask: np.ndarray, step: int
) -> dict[str, np.ndarray]:
    """The packed batch of step `step` (a pure function of the step).

    Draws `rows * max_segments` cached videos at random, packs them first-fit
    into `rows` sequences of `seq_len` tokens (those that do not fit are left
    out), and replaces captions by the empty one at rate `text_dropout` (CFG).
    With `dit.condition.rate > 0` it adds 'cond_mask' bool[rows seq_len]: the tokens of
    the latent frames given to each conditioned video (see `conditioning`).
    """
    dc = config.dit
    rng = np.random.default_rng([config.data.seed, 2, step])
    n = len(cache.tokens)
    draw = rng.choice(n, size=min(n, dc.rows * dc.max_segments), replace=False)
    batch, placements = packing.pack(
        [(cache.tokens[i], cache.positions[i]) for i in draw], dc.seq_len, dc.rows, dc.max_segments
    )
    lt = cache.caption_ids.shape[1]
    ids = np.zeros((dc.rows, dc.max_segments, lt), np.int32)
    mask = np.zeros((dc.rows, dc.max_segments, lt), bool)
    drop = rng.random(len(draw)) < dc.text_dropout
    for i, p, dropped in zip(draw, placements, drop):
        if p is None:
            continue
        ids[p.row, p.segment - 1] = null_ids if dropped else cache.caption_ids[i]
        mask[p.row, p.segment - 1] = null_mask if dropped else cache.caption_mask[i]
    out = {
        "tokens": batch["tokens"],
        "segment_ids": batch["segment_ids"],
        "positions": batch["positions"],
        "caption_ids": ids,
        "caption_mask": mask,
    }
    cond = dc.condition
    if cond.rate > 0:
        # A stream of its own: the draws above (and so old runs' batches) stay as they were.
        crng = np.random.default_rng([config.data.seed, 4, step])
        cond_mask = np.zeros(batch["segment_ids"].shape, bool)
        for i, p in zip(draw, placements):
            if p is None or crng.random() >= cond.rate:
                continue
            drawn = conditioning.sample_frame_mask(
                crng, p.grid[0], dict(cond.mask_types), cond.random_frame_prob
            )
            if drawn is not None:
                cond_mask[p.row, p.start : p.start + p.length] = conditioning.token_mask(
                    drawn[1], cache.positions[i]
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
    one's are passed in and closed over (they are not trained or checkpointed).
    """
    objective = objectives.from_config(config)
    num_seg = config.dit.max_segments

    def loss_fn(params, batch, rng):
        text_params = params["text"] if text_encoder.trainable else frozen_text_params
        text = text_features(text_encoder, text_params, batch["caption_ids"], batch["caption_mask"])
        x0, seg = batch["tokens"], batch["segment_ids"]
        rng_t, rng_n = jax.random.split(rng)
        # Tokens per segment f32[b s]: the token-dependent time shift of each video.
        counts = jnp.sum(seg[:, :, None] == jnp.arange(1, num_seg + 1), axis=1)
        t = objective.sample_t(rng_t, seg.shape[:1] + (num_seg,), counts.astype(jnp.float32))
        t_tok = jnp.take_along_axis(t, jnp.maximum(seg - 1, 0), axis=1)[..., None]
        noise = jax.random.normal(rng_n, x0.shape, x0.dtype)
        x_t = objective.corrupt(x0, noise, t_tok)
        valid = seg > 0
        aux = {}
        if "cond_mask" in batch:
            # Given frames: clean latents at their own time 0, and no loss on them.
            cond = batch["cond_mask"] & valid
            x_t = jnp.where(cond[..., None], x0, x_t)
            kw = dict(t_tok=jnp.where(cond, 0.0, t_tok[..., 0]), cond_mask=cond)
            valid = valid & ~cond
            aux["cond_fraction"] = jnp.sum(cond) / jnp.maximum(jnp.sum(seg > 0), 1)
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
        weight = valid[..., None] * objective.loss_weight(t_tok)
        err = (out - objective.target(x0, noise, t_tok)) ** 2 * weight
        loss = jnp.sum(err) / (jnp.sum(valid) * x0.shape[-1])
        return loss, {"padding_fraction": 1.0 - jnp.mean(seg > 0), **aux}

    def train_step(state: ts.TrainState, batch, rng):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        new_state = ts.apply_gradients(state, grads, tx, config.dit.train.ema_decay)
        return new_state, {"loss": loss, **aux, **ts.norms(grads, state.params)}

    return train_step


def init_state(config, dit, text_encoder, tx, mesh, extras):
    dc, lt = config.dit, config.text.max_length
    pt, ph, pw = dc.patch
    b = mesh.shape[mesh_lib.DATA]
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
        return ts.create(params, tx, extras)

    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    )


def _extras(latent_mean, latent_std):
    return {"latent_mean": jnp.asarray(latent_mean), "latent_std": jnp.asarray(latent_std)}


def train(config: ml_collections.ConfigDict, workdir: str, mesh, writer):
    """Trains (or resumes, or skips if finished) the DiT; returns (state, history)."""
    vae_model, vae_params = vae_trainer.load(config, workdir, mesh)
    text_encoder = build_text_encoder(config)
    dit = build_dit(config, text_encoder.dim)
    t = config.dit.train
    tx = ts.make_optimizer(t)
    ckpt = checkpoint.for_stage(config, workdir, "dit")
    cache = build_latent_cache(config, vae_model, vae_params, text_encoder)
    state = init_state(
        config, dit, text_encoder, tx, mesh, _extras(cache.latent_mean, cache.latent_std)
    )
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    null_ids, null_mask = (np.asarray(a)[0] for a in text_encoder.tokenize([""]))
    step_fn = loop.jit_train_step(
        make_train_step(config, dit, text_encoder, tx, text_encoder.params), mesh
    )
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    batch_fn = functools.partial(dit_batch, config, cache, null_ids, null_mask)
    state, history = loop.run("dit", state, step_fn, batch_fn, t, ckpt, writer, mesh, key)
    ckpt.close()
    return state, history


def load(config, workdir: str, mesh):
    """(dit module, text encoder, EMA params, extras) from the latest DiT checkpoint."""
    text_encoder = build_text_encoder(config)
    dit = build_dit(config, text_encoder.dim)
    tx = ts.make_optimizer(config.dit.train)
    ckpt = checkpoint.for_stage(config, workdir, "dit")
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

"""Sampling: text encoder -> DiT (any objective, sampler and CFG) -> VAE decode, in every mode.

Modes, all through `Pipeline.generate` (the other methods only choose its inputs):
  text->video / text->image     nothing given (num_frames=1 for an image);
  image->video                  `start_frames` = the image;
  continuation forward          `start_frames` = the last frames of a video;
  extension backward            `end_frames` = the first frames of a video;
  connecting two clips          `start_frames` from clip a and `end_frames` from clip b;
  editing (SDEdit)              `edit_video` noised to time `edit_strength`, then denoised.
Given frames are encoded by the VAE (start frames as a clip: its first frame alone, as the
causal VAE does; end frames after a copy of their first frame), their latent tokens enter the
DiT clean at time 0 (per-token time) and are re-set at every sampler step, so the output keeps
them exactly in latent space (sora_jax/diffusion/conditioning.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax import config as config_lib
from sora_jax import gallery
from sora_jax import inference_checkpoint
from sora_jax import prompts as prompts_lib
from sora_jax.data import packing, video_io
from sora_jax.diffusion import conditioning, guidance, objectives, samplers
from sora_jax.logging import progress as progress_lib
from sora_jax.models import geometry, vae_inference
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.text import cache as text_cache_lib
from sora_jax.training import dit_trainer, vae_trainer

CONFIG_FILE = "config.json"


def save_config(config: ml_collections.ConfigDict, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The validated config of a training workdir or an exported checkpoint."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: give a directory written by `python -m sora_jax.train` (a "
            f"workdir) or by `python -m sora_jax.export` (it holds the config and the weights)"
        )
    with open(path) as f:
        saved = config_lib.fill_added_keys(json.load(f))
    return config_lib.validate(ml_collections.ConfigDict(config_lib.json_tuples(saved)))


# Sampling options of `Pipeline.generate` -> their config.diffusion keys.
SAMPLING_OPTIONS = {
    "sampler": "sampler",
    "steps": "sample_steps",
    "spacing": "spacing",
    "time_shift": "time_shift",
    "eta": "ddim_eta",
    "guidance_scale": "guidance_scale",
    "guidance_interval": "guidance_interval",
    "guidance_rescale": "guidance_rescale",
    "condition_noise": "condition_noise",
}


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Everything that fixes the sampling program (hashable: a static jit argument)."""

    objective: objectives.RectifiedFlow | objectives.DDPM
    sampler: str
    steps: int
    spacing: str
    eta: float
    karras: tuple[float, float, float]  # (rho, sigma_min, sigma_max)
    guidance_scale: float
    guidance_interval: tuple[float, float]
    guidance_rescale: float
    condition_noise: float = 0.0  # time of the given frames (noise augmentation; 0: clean)
    t_start: float = 1.0  # < 1: start from a noised input at this time (SDEdit)

    @classmethod
    def from_config(cls, config, **overrides) -> SamplerSettings:
        """config.diffusion with `overrides` (SAMPLING_OPTIONS names; None keeps the config's),
        validated like the config: a bad value names its config key."""
        unknown = set(overrides) - set(SAMPLING_OPTIONS)
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}")
        c = config.copy_and_resolve_references()
        for name, value in overrides.items():
            if value is not None:
                key = SAMPLING_OPTIONS[name]
                c.diffusion[key] = tuple(value) if key == "guidance_interval" else value
        f = config_lib.validate(c).diffusion
        return cls(
            objective=objectives.from_config(c),
            sampler=f.sampler,
            steps=int(f.sample_steps),
            spacing=f.spacing,
            eta=float(f.ddim_eta),
            karras=(float(f.karras_rho), float(f.karras_sigma_min), float(f.karras_sigma_max)),
            guidance_scale=float(f.guidance_scale),
            guidance_interval=tuple(float(v) for v in f.guidance_interval),
            guidance_rescale=float(f.guidance_rescale),
            condition_noise=float(f.condition_noise),
        )

    def time_grid(self, num_tokens: int) -> jax.Array:
        """f32[steps + 1] from 1 (or t_start) to 0 for a video of `num_tokens` latent tokens."""
        rho, sigma_min, sigma_max = self.karras
        shift = self.objective.time.shift(num_tokens)
        return samplers.time_grid(
            self.objective, self.steps, self.spacing, shift, rho, sigma_min, sigma_max, self.t_start
        )


@dataclasses.dataclass(eq=False)
class Pipeline:
    """A ready-to-sample text-to-video model; params are pytrees, calls are jitted."""

    config: ml_collections.ConfigDict
    vae: object
    vae_params: object
    dit: object
    text_encoder: object
    params: dict  # {'dit': ..., 'text': ...} (EMA)
    latent_mean: np.ndarray
    latent_std: np.ndarray
    name: str = "sora_jax"  # the model name written into every video's provenance metadata
    # Frozen text encoders: prompt embeddings cache (made on first use; config.text.cache_dir).
    text_cache: text_cache_lib.EmbeddingCache | None = None

    def text_embeddings(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        """(f32[n lt dim], bool[n lt]) for `texts`: through the embedding cache for a frozen
        encoder, else the (EMA) trained encoder's params."""
        enc = self.text_encoder
        if not enc.trainable:
            if self.text_cache is None:
                self.text_cache = text_cache_lib.EmbeddingCache(
                    enc, self.config.text.get("cache_dir") or None
                )
            emb, mask = self.text_cache(texts)
            self.text_cache.flush()
            return jnp.asarray(emb), mask
        ids, mask = enc.tokenize(texts)
        return _encode_text(enc, self.params["text"], ids, mask), mask

    def generate(
        self,
        prompts: Sequence[str],
        *,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        negative_prompt: str = "",
        start_frames: np.ndarray | None = None,
        end_frames: np.ndarray | None = None,
        edit_video: np.ndarray | None = None,
        edit_strength: float = 1.0,
        factorized: bool | None = None,
        progress: bool = False,
        **sampling,
    ) -> np.ndarray:
        """uint8[n t h w 3] videos, one per prompt; the same seed gives the same videos.

        `sampling` overrides config.diffusion for this call: sampler, steps, spacing,
        time_shift, eta, guidance_scale, guidance_interval, guidance_rescale (None: config).
        `num_frames` that the causal VAE cannot produce (not 1 + k*compression) is
        rounded up to the next supported count and the extra frames are cut off.

        Conditioning (uint8 frames of any size, resized to height x width; [k h w 3] for
        every prompt or [n k h w 3] one per prompt): `start_frames` (1 + k*compression frames)
        become the first frames, `end_frames` (k*compression frames) the last ones; at least
        one latent frame must be left to generate. `edit_video` (at least num_frames frames;
        the first are used) is noised to time `edit_strength` in [0, 1] on the objective's
        path and denoised under the prompts: 0 returns its VAE round trip, 1 ignores it.

        `factorized` (None: config.sample.factorized) samples a video without given frames in
        two passes: the first frame as an image from the prompt (same seed; rewritten as
        config.sample.image_prompt says), then the video with that frame given.

        `progress` prints a progress line with ETA over the sampler steps to stderr.
        """
        prompts = list(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("every prompt must be a non-empty string")
        c = self.config
        ct, _ = geometry.vae_compression(c)
        gen_frames = generated_frames(c, num_frames)
        factorized = c.sample.factorized if factorized is None else factorized
        given = (start_frames, end_frames, edit_video)
        if factorized and gen_frames > 1 and all(v is None for v in given):
            kw = dict(height=height, width=width, seed=seed, negative_prompt=negative_prompt)
            image_prompts = prompts
            if c.sample.image_prompt == "first_frame":
                image_prompts = [prompts_lib.first_frame_prompt(p) for p in prompts]
            image = self.generate(image_prompts, num_frames=1, progress=progress, **kw, **sampling)
            return self.generate(
                prompts,
                num_frames=num_frames,
                start_frames=image,
                factorized=False,
                progress=progress,
                **kw,
                **sampling,
            )
        if end_frames is not None and gen_frames != num_frames:
            raise ValueError(
                f"num_frames={num_frames}: with frames given at the end the video must have "
                f"1 + {ct}*k frames (e.g. {gen_frames}), so that none are cut off"
            )
        grid = geometry.latent_grid(c, gen_frames, height, width)
        settings = SamplerSettings.from_config(c, **sampling)
        n = len(prompts)
        cond = None
        if start_frames is not None or end_frames is not None:
            cond = self._condition(n, grid, height, width, start_frames, end_frames)
        edit = None
        if edit_video is not None:
            if not 0.0 <= edit_strength <= 1.0:
                raise ValueError(f"edit strength {edit_strength}: must be in [0, 1]")
            video = _per_prompt(edit_video, n, "edit_video")
            if video.shape[1] < gen_frames:
                raise ValueError(
                    f"the video to edit has {video.shape[1]} frames; {gen_frames} are needed"
                )
            edit = self._tokens(self._encode(video[:, :gen_frames], height, width))
            settings = dataclasses.replace(settings, t_start=float(edit_strength))
        # Conditional and unconditional (negative) rows in one batch.
        text, text_mask = self.text_embeddings(prompts + [negative_prompt] * n)
        patch = tuple(c.dit.patch)
        global _progress
        if progress:
            num_tok = geometry.num_tokens(c, gen_frames, height, width)
            _progress = progress_lib.SamplerProgress(np.asarray(settings.time_grid(num_tok)))
        try:
            tokens = _sample_tokens(
                self.dit,
                patch,
                grid,
                settings,
                self.params,
                text,
                text_mask,
                jax.random.PRNGKey(seed),
                cond,
                edit,
                report=progress,
            )
            tokens = jax.block_until_ready(tokens)
            if progress:
                _progress.finish()
        finally:
            _progress = None
        videos = _decode(
            self.vae,
            vae_inference.from_config(c),
            patch,
            grid,
            self.vae_params,
            tokens,
            self.latent_mean,
            self.latent_std,
        )
        return vae_trainer.to_uint8(videos)[:, :num_frames]

    def _encode(self, video: np.ndarray, height: int, width: int) -> np.ndarray:
        """Normalised latents f32[n t' h' w' c] of uint8[n t h w 3] (t = 1 + k*compression),
        resized to height x width first."""
        video = np.stack([video_io.resize(v, height, width) for v in video])
        latents = _encode(
            self.vae,
            vae_inference.from_config(self.config),
            self.vae_params,
            vae_trainer.to_model_range(video),
        )
        return (np.asarray(latents) - self.latent_mean) / self.latent_std

    def _tokens(self, latents: np.ndarray) -> np.ndarray:
        """f32[n t h w c] latents -> f32[n l d] tokens (the order of `packing.patchify`)."""
        pt, ph, pw = self.config.dit.patch
        return einops.rearrange(
            latents, "n (t pt) (h ph) (w pw) c -> n (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
        )

    def _condition(self, n, grid, height, width, start_frames, end_frames):
        """(clean tokens f32[n l d], token mask bool[n l]) of the given start / end frames."""
        gt = grid[0]
        parts = []  # (uint8[n k h w 3], at the start?, latent frames)
        if start_frames is not None:
            parts.append((_per_prompt(start_frames, n, "start_frames"), True))
        if end_frames is not None:
            parts.append((_per_prompt(end_frames, n, "end_frames"), False))
        ks, ke = given_latent_frames(
            self.config,
            1 + (gt - 1) * geometry.vae_compression(self.config)[0],
            parts[0][0].shape[1] if start_frames is not None else 0,
            parts[-1][0].shape[1] if end_frames is not None else 0,
        )
        parts = [(v, first, ks if first else ke) for v, first in parts]
        latents = np.zeros((n, gt, grid[1], grid[2], self.config.vae.model.latent_channels))
        frame_mask = np.zeros(gt, bool)
        for video, first, k in parts:
            if first:
                latents[:, :k], frame_mask[:k] = self._encode(video, height, width), True
            else:  # behind a copy of their first frame, which plays the causal VAE's image
                video = np.concatenate([video[:, :1], video], axis=1)
                latents[:, gt - k :] = self._encode(video, height, width)[:, 1:]
                frame_mask[gt - k :] = True
        pt, ph, pw = self.config.dit.patch
        by_patch = frame_mask.reshape(-1, pt)
        if np.any(by_patch != by_patch[:, :1]):
            raise ValueError(
                f"given latent frames {np.nonzero(frame_mask)[0].tolist()} do not fill whole "
                f"temporal patches of {pt} latent frames"
            )
        pos = packing.grid_positions((gt // pt, grid[1] // ph, grid[2] // pw))
        mask = conditioning.token_mask(by_patch[:, 0], pos)
        tokens = self._tokens(latents.astype(np.float32))
        return tokens, np.broadcast_to(mask, tokens.shape[:2]).copy()

    # Modes: each picks the given frames / video and calls `generate` (same keywords).

    def image_to_video(self, prompts, image: np.ndarray, **kw) -> np.ndarray:
        """Videos whose first frame is `image` uint8[h w 3] (or [n h w 3], one per prompt)."""
        image = np.asarray(image)
        return self.generate(prompts, start_frames=image[..., None, :, :, :], **kw)

    def extend(self, prompts, video, direction: str = "forward", context_frames=None, **kw):
        """`forward`: the last `context_frames` frames of `video` uint8[t h w 3] become the
        first frames of the new video; `backward`: its first frames become the last ones."""
        return self.generate(
            prompts,
            **extend_inputs(self.config, video, direction, kw["num_frames"], context_frames),
            **kw,
        )

    def connect(self, prompts, video_a, video_b, context_frames=None, **kw):
        """The end of `video_a` at the start, the start of `video_b` at the end; the model
        fills the middle. `context_frames` = (frames of a, frames of b)."""
        return self.generate(
            prompts,
            **connect_inputs(self.config, video_a, video_b, kw["num_frames"], context_frames),
            **kw,
        )

    def edit(self, prompts, video, strength: float, **kw):
        """SDEdit: `video` noised to time `strength` and denoised under `prompts`."""
        return self.generate(prompts, edit_video=video, edit_strength=strength, **kw)


def generated_frames(config, num_frames: int) -> int:
    """The frame count the causal VAE makes for a request of `num_frames` (1 + k*compression,
    rounded up; the extra frames are cut off)."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be at least 1")
    ct, _ = geometry.vae_compression(config)
    return 1 + -(-(num_frames - 1) // ct) * ct


def given_latent_frames(config, num_frames: int, start: int, end: int) -> tuple[int, int]:
    """Latent frames filled by `start` frames given at the start and `end` at the end of a
    `num_frames` video; ValueError for counts the causal VAE cannot place or that leave no
    latent frame to generate."""
    ct, _ = geometry.vae_compression(config)
    gt = 1 + -(-(num_frames - 1) // ct)
    if start and (start - 1) % ct:
        raise ValueError(
            f"{start} frames given at the start: must be 1 + {ct}*j (the causal VAE encodes "
            f"the first frame alone, then {ct} frames per latent frame)"
        )
    if end % ct:
        raise ValueError(
            f"{end} frames given at the end: must be a multiple of {ct} (one latent frame per "
            f"{ct} frames)"
        )
    ks, ke = (1 + (start - 1) // ct if start else 0), end // ct
    if ks + ke >= gt:
        raise ValueError(
            f"too many given frames ({start} at the start, {end} at the end): they fill "
            f"{ks + ke} of the {gt} latent frames of a {1 + (gt - 1) * ct}-frame video and "
            f"leave none to generate; give fewer frames or ask for more (num_frames)"
        )
    return ks, ke


def default_context_frames(config, num_frames: int, mode: str) -> tuple[int, int]:
    """(frames at the start, frames at the end) given by default: 'forward' about half of
    the latent frames at the start, 'backward' at the end, 'connect' about a quarter each."""
    ct, _ = geometry.vae_compression(config)
    gt = 1 + -(-(num_frames - 1) // ct)  # latent frames
    half, quarter = (gt - 1) // 2, (gt - 1) // 4
    if mode == "forward":
        return 1 + ct * half, 0
    if mode == "backward":
        return 0, ct * max(1, half)
    if mode == "connect":
        return 1 + ct * quarter, ct * max(1, quarter)
    raise ValueError(f"unknown mode {mode!r}")


def _frames_needed(video, k: int, name: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] < k:
        raise ValueError(
            f"{name} has {video.shape[0] if video.ndim == 4 else 0} frames, {k} are needed"
        )
    return video


def extend_inputs(config, video, direction, num_frames, context_frames=None) -> dict:
    """`generate` keywords of an extension: the last frames of `video` uint8[t h w 3] at the
    start ('forward') or its first frames at the end ('backward')."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"extend direction {direction!r}: use 'forward' or 'backward'")
    k = context_frames or sum(default_context_frames(config, num_frames, direction))
    video = _frames_needed(video, k, "the video to extend")
    if direction == "forward":
        return {"start_frames": video[len(video) - k :]}
    return {"end_frames": video[:k]}


def connect_inputs(config, video_a, video_b, num_frames, context_frames=None) -> dict:
    """`generate` keywords connecting the end of `video_a` to the start of `video_b`."""
    ka, kb = context_frames or default_context_frames(config, num_frames, "connect")
    video_a = _frames_needed(video_a, ka, "the first video")
    video_b = _frames_needed(video_b, kb, "the second video")
    return {"start_frames": video_a[len(video_a) - ka :], "end_frames": video_b[:kb]}


def _per_prompt(frames, n: int, name: str) -> np.ndarray:
    """uint8[n k h w 3] from [h w 3], [k h w 3] (the same for every prompt) or [n k h w 3]."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames.size:
        raise ValueError(
            f"{name} must be uint8 frames [k h w 3] or [n k h w 3], got {frames.dtype} "
            f"{frames.shape}"
        )
    if frames.shape[0] not in (1, n):
        raise ValueError(f"{name} has {frames.shape[0]} videos for {n} prompts")
    return np.broadcast_to(frames, (n,) + frames.shape[1:])


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_text(text_encoder, text_params, ids, mask):
    """f32[n lt dim] embeddings of caption ids i32[n lt] under the given encoder params."""
    return text_encoder.encode(text_params, ids, mask)


# The progress of the `generate(progress=True)` call running now; the jitted sampler loop
# reports each model call's time to it (a module global: the callback must be static).
_progress: progress_lib.SamplerProgress | None = None


def _report_time(time):
    if _progress is not None:
        _progress.report(time)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), static_argnames=("report",))
def _sample_tokens(dit, patch, grid, settings: SamplerSettings, params, *args, report=False):
    """Sampled latent tokens f32[n l d] (normalised); params are traced, not baked in.

    `text` f32[2n lt dim], `text_mask` bool[2n lt]: the n prompts' embeddings, then the n
    negative (unconditional) ones. `cond` = (clean tokens f32[n l d], mask bool[n l]) of given
    frames or None; `edit` = tokens f32[n l d] of a video to noise to settings.t_start (SDEdit)
    or None. `report` sends each model call's time to the host (`_report_time`, for the
    progress line).
    """
    text, all_mask, key, cond, edit = args
    n = text.shape[0] // 2
    gt, gh, gw = (g // p for g, p in zip(grid, patch))
    num_tok = gt * gh * gw
    positions = jnp.asarray(packing.grid_positions((gt, gh, gw)))
    # One segment per row.
    text = text[:, None]
    seg = jnp.ones((2 * n, num_tok), jnp.int32)
    pos = jnp.broadcast_to(positions, (2 * n, num_tok, 3))

    noise = jax.random.normal(key, (n, num_tok, dit.patch_dim))
    tc = settings.condition_noise
    given = None
    if cond is not None:
        # Given tokens at their own fixed time tc (noise augmentation; clean at tc = 0).
        given = cond[0]
        if tc > 0:
            eps = jax.random.normal(jax.random.fold_in(key, 2), noise.shape)
            given = settings.objective.corrupt(cond[0], eps, jnp.float32(tc))

    def impose(x, tokens):
        """Given frames' `tokens` in place of the sampler's state."""
        return x if cond is None else jnp.where(cond[1][..., None], tokens, x)

    def model_fn(x, time):
        """Guided model output f32[n l d] at x f32[n l d], scalar time."""
        kw = {}
        if cond is not None:
            # The unconditional rows see the given tokens too: CFG only guides the text.
            t_tok = jnp.where(cond[1], tc, time)
            kw = dict(t_tok=jnp.concatenate([t_tok, t_tok]), cond_mask=jnp.tile(cond[1], (2, 1)))
        if report:
            jax.debug.callback(_report_time, time)
        x = impose(x, given)
        out = dit.apply(
            {"params": params["dit"]},
            jnp.concatenate([x, x]),
            jnp.full((2 * n, 1), time),
            seg,
            pos,
            text,
            all_mask[:, None],
            **kw,
        )
        return guidance.guide(
            out[:n],
            out[n:],
            time,
            settings.guidance_scale,
            settings.guidance_interval,
            settings.guidance_rescale,
        )

    if edit is not None:
        noise = samplers.start_state(settings.objective, edit, noise, settings.t_start)
    x = samplers.sample(
        settings.sampler,
        model_fn,
        settings.objective,
        noise,
        settings.time_grid(num_tok),
        eta=settings.eta,
        rng=jax.random.fold_in(key, 1),
    )
    return impose(x, None if cond is None else cond[0])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(vae, inference_cfg, vae_params, video):
    """Posterior means f32[n t' h' w' c] of videos f32[n t h w 3] in [-1, 1] (chunked / tiled
    as config.vae.inference says)."""
    return vae_inference.encode(vae, vae_params, video, inference_cfg)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _decode(vae, inference_cfg, patch, grid, vae_params, tokens, latent_mean, latent_std):
    """Videos f32[n t h w 3] in [-1, 1] (about) from normalised latent tokens f32[n l d].
    Long videos are decoded chunk by chunk (large frames tile by tile) as
    config.vae.inference says."""
    gt, gh, gw = (g // p for g, p in zip(grid, patch))
    channels = tokens.shape[-1] // (patch[0] * patch[1] * patch[2])
    latents = packing.unpatchify(tokens, (gt, gh, gw), patch, channels)
    latents = latents * latent_std + latent_mean
    return vae_inference.decode(vae, vae_params, latents, inference_cfg)


def load_pipeline(path: str, mesh=None) -> Pipeline:
    """A ready-to-sample Pipeline from an exported inference checkpoint
    (`python -m sora_jax.export`) or from a training workdir (its latest VAE and DiT
    checkpoints, EMA params)."""
    config = load_config(path)
    mesh = mesh or mesh_lib.local_mesh()
    if inference_checkpoint.is_export(path):
        *parts, meta = inference_checkpoint.load(path, config, mesh)
        return Pipeline(config, *parts, name=meta["name"])
    vae, vae_params = vae_trainer.load(config, path, mesh)
    dit, text_encoder, params, extras = dit_trainer.load(config, path, mesh)
    return Pipeline(
        config,
        vae,
        vae_params,
        dit,
        text_encoder,
        params,
        np.asarray(extras["latent_mean"]),
        np.asarray(extras["latent_std"]),
        name=os.path.basename(os.path.abspath(path)),
    )


def slug(text: str, max_len: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "video"


def provenance(model: str, prompt: str, seed: int) -> dict[str, str]:
    """Container metadata marking a video as AI-generated: mp4 keeps every key, gif the
    'comment' (see `video_io`); `video_io.read_metadata(path)` reads them back."""
    return {
        "title": prompt,
        "artist": f"sora_jax model {model}",
        "comment": f"AI-generated by sora_jax; model: {model}; prompt: {prompt}; seed: {seed}",
    }


def write_samples(
    pipe: Pipeline,
    prompts: Sequence[str],
    out_dir: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    **kwargs,
) -> list[str]:
    """Generates one video per prompt and writes each as .mp4 and .gif, with provenance
    metadata, then (re)writes `out_dir`/index.html, a gallery of every video there; returns
    the video paths."""
    videos = pipe.generate(
        prompts, num_frames=num_frames, height=height, width=width, seed=seed, **kwargs
    )
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
        meta = provenance(pipe.name, prompt, seed)
        for ext in ("mp4", "gif"):
            path = os.path.join(out_dir, f"{i:02d}_{slug(prompt)}_seed{seed}.{ext}")
            video_io.write_video(path, np.asarray(video), fps=pipe.config.data.fps, metadata=meta)
            paths.append(path)
    gallery.write_gallery(out_dir)
    return paths

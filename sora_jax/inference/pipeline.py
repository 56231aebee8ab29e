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

On a device mesh (`Pipeline(model, mesh=...)`, `load_pipeline(path, mesh)`) the DiT params are
sharded by config.mesh.rules and every sampler call runs sharded (`sampling.Layout`); with
config.vae.inference.shard_tiles the decode spreads its tile rows over the mesh too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sora_jax.data import packing, video_io
from sora_jax.diffusion import conditioning
from sora_jax.inference import loader
from sora_jax.inference import sampling as sampling_lib
from sora_jax.inference import prompts as prompts_lib
from sora_jax.inference import wan_pipeline
from sora_jax.models import builders, geometry, vae_inference
from sora_jax.models import vae as vae_lib
from sora_jax.text import cache as text_cache_lib


@dataclasses.dataclass(eq=False)
class Pipeline:
    """A ready-to-sample text-to-video model; params are pytrees, calls are jitted. With a
    `mesh` its params are placed on it (DiT by config.mesh.rules) and sampling runs sharded."""

    model: loader.InferenceModel
    # Frozen text encoders: prompt embeddings cache (made on first use; config.text.cache_dir).
    text_cache: text_cache_lib.EmbeddingCache | None = None
    mesh: Mesh | None = None

    def __post_init__(self):
        if self.mesh is not None:
            self.model = loader.place(self.model, self.mesh)

    @property
    def layout(self) -> sampling_lib.Layout | None:
        """The mesh and rules sampler calls run under (None: one device)."""
        return sampling_lib.Layout.from_config(self.config, self.mesh)

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.model.config

    @property
    def name(self) -> str:
        """The model name written into every video's provenance metadata."""
        return self.model.name

    def with_vae_inference(self, **overrides) -> Pipeline:
        """This pipeline with config.vae.inference keys changed (None keeps one), validated:
        e.g. `with_vae_inference(tiled=True, shard_tiles=True)` to decode over the mesh."""
        c = self.config.copy_and_resolve_references()
        for key, value in overrides.items():
            if key not in c.vae.inference:
                raise ValueError(f"unknown vae.inference key {key!r}")
            if value is not None:
                c.vae.inference[key] = value
        vae_lib.validate_config(c)
        model = dataclasses.replace(self.model, config=c)
        return dataclasses.replace(self, model=model)

    def text_embeddings(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        """(f32[n lt dim], bool[n lt]) for `texts`: through the embedding cache for a frozen
        encoder, else the (EMA) trained encoder's params."""
        enc = self.model.text_encoder
        if not enc.trainable:
            if self.text_cache is None:
                self.text_cache = text_cache_lib.EmbeddingCache(
                    enc, self.config.text.get("cache_dir") or None
                )
            emb, mask = self.text_cache(texts)
            self.text_cache.flush()
            return jnp.asarray(emb), mask
        ids, mask = enc.tokenize(texts)
        return _encode_text(enc, self.model.params["text"], ids, mask), mask

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
        expand_prompt: bool | str | None = None,
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

        `expand_prompt` (None: config.sample.expand_prompt; 'auto' for the built-in text
        encoder) rewrites the prompts in the training captions' style first
        (`prompts.expand_prompts`, seeded by `seed`).

        `progress` prints a progress line with ETA over the sampler steps to stderr.

        The videos are one per row of the packed sampling batch (`generate_packed` packs
        videos of different sizes into shared rows).
        """
        prompts = self.expand_prompts(_check_prompts(prompts), seed, num_frames, expand_prompt)
        c = self.config
        gen_frames = generated_frames(c, num_frames)
        factorized = c.sample.factorized if factorized is None else factorized
        given = (start_frames, end_frames, edit_video)
        if factorized and gen_frames > 1 and all(v is None for v in given):
            kw = dict(
                height=height,
                width=width,
                seed=seed,
                negative_prompt=negative_prompt,
                expand_prompt=False,
            )
            image = self.generate(
                self._image_prompts(prompts), num_frames=1, progress=progress, **kw, **sampling
            )
            return self.generate(
                prompts,
                num_frames=num_frames,
                start_frames=image,
                factorized=False,
                progress=progress,
                **kw,
                **sampling,
            )
        _check_end_frames(c, num_frames, end_frames)
        grid = geometry.latent_grid(c, gen_frames, height, width)
        settings = sampling_lib.SamplerSettings.from_config(c, **sampling)
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
        key = jax.random.PRNGKey(seed)
        num_tok = geometry.num_tokens(c, gen_frames, height, width)
        shape = (n, num_tok, self.model.dit.patch_dim)
        noise = np.asarray(jax.random.normal(key, shape))
        eps = None
        if cond is not None and settings.condition_noise > 0:
            eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), shape))
        videos = [
            sampling_lib.Video(
                grid=grid,
                noise=noise[i],
                prompt=i,
                negative=n + i,
                cond=None if cond is None else (cond[0][i], cond[1][i]),
                cond_eps=None if eps is None else eps[i],
                edit=None if edit is None else edit[i],
            )
            for i in range(n)
        ]
        # Conditional and unconditional (negative) embeddings in one batch.
        text = self.text_embeddings(prompts + [negative_prompt] * n)
        # One video per row, the rows in prompt order.
        packer = packing.Packer(num_tok, n, 1, buffer_size=n)
        tokens = self._sample(videos, text, settings, key, packer, progress)
        return self._to_videos(videos, tokens)[:, :num_frames]

    def generate_packed(
        self,
        requests: Sequence[Request],
        *,
        seq_len: int | None = None,
        rows: int = 1,
        max_segments: int | None = None,
        factorized: bool | None = None,
        expand_prompt: bool | str | None = None,
        progress: bool = False,
        **sampling,
    ) -> list[np.ndarray]:
        """uint8[t_i h_i w_i 3] per request: videos of any sizes sampled together, packed into
        rows of `seq_len` tokens (default: dit.seq_len, or the longest request's tokens if
        longer) with at most `max_segments` (default dit.max_segments) videos per row, `rows`
        rows per sampler call (as many calls as the packing needs). Each video equals what
        `generate([prompt], seed=request.seed, ...)` samples alone (deterministic samplers;
        DDIM's eta > 0 noise is drawn per packed batch). Same options as `generate`, except
        editing.
        """
        requests = list(requests)
        if not requests:
            raise ValueError("generate_packed: no requests")
        _check_prompts([r.prompt for r in requests])
        requests = [
            dataclasses.replace(
                r, prompt=self.expand_prompts([r.prompt], r.seed, r.num_frames, expand_prompt)[0]
            )
            for r in requests
        ]
        c = self.config
        factorized = c.sample.factorized if factorized is None else factorized
        plain = [r.start_frames is None and r.end_frames is None for r in requests]
        first = [
            i for i, r in enumerate(requests) if plain[i] and generated_frames(c, r.num_frames) > 1
        ]
        if factorized and first:
            images = self.generate_packed(
                [
                    dataclasses.replace(requests[i], prompt=p, num_frames=1)
                    for i, p in zip(first, self._image_prompts([requests[i].prompt for i in first]))
                ],
                seq_len=seq_len,
                rows=rows,
                max_segments=max_segments,
                factorized=False,
                expand_prompt=False,
                progress=progress,
                **sampling,
            )
            for i, image in zip(first, images):
                requests[i] = dataclasses.replace(requests[i], start_frames=image)
        settings = sampling_lib.SamplerSettings.from_config(c, **sampling)
        n = len(requests)
        videos = []
        for i, r in enumerate(requests):
            gen_frames = generated_frames(c, r.num_frames)
            _check_end_frames(c, r.num_frames, r.end_frames)
            grid = geometry.latent_grid(c, gen_frames, r.height, r.width)
            num_tok = geometry.num_tokens(c, gen_frames, r.height, r.width)
            key = jax.random.PRNGKey(r.seed)
            shape = (1, num_tok, self.model.dit.patch_dim)
            cond = eps = None
            if r.start_frames is not None or r.end_frames is not None:
                tok, mask = self._condition(
                    1, grid, r.height, r.width, r.start_frames, r.end_frames
                )
                cond = (tok[0], mask[0])
                if settings.condition_noise > 0:
                    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), shape))[0]
            noise = np.asarray(jax.random.normal(key, shape))[0]
            videos.append(sampling_lib.Video(grid, noise, i, n + i, cond, eps))
        text = self.text_embeddings(
            [r.prompt for r in requests] + [r.negative_prompt for r in requests]
        )
        longest = max(len(v.noise) for v in videos)
        seq_len = seq_len or max(c.dit.seq_len, longest)
        max_segments = max_segments or c.dit.max_segments
        packer = packing.Packer(seq_len, rows, max_segments, buffer_size=len(videos))
        tokens = self._sample(
            videos, text, settings, jax.random.PRNGKey(requests[0].seed), packer, progress
        )
        out = []
        for r, v, tok in zip(requests, videos, tokens):
            video = self._to_videos([v], tok[None])[0]
            out.append(video[: r.num_frames])
        return out

    def expand_prompts(self, prompts: list[str], seed: int, num_frames: int, expand=None):
        """The prompts as `generate` reads them (see its `expand_prompt`)."""
        expansions = prompts_lib.expand_prompts(self.config, prompts, seed, num_frames, expand)
        return prompts if expansions is None else [e.expanded for e in expansions]

    def _image_prompts(self, prompts: list[str]) -> list[str]:
        """The first-frame pass's prompts of factorised sampling (config.sample.image_prompt)."""
        if self.config.sample.image_prompt == "first_frame":
            return [prompts_lib.first_frame_prompt(p) for p in prompts]
        return prompts

    def _sample(self, videos, text, settings, key, packer, progress) -> list[np.ndarray]:
        """`sampling.run` of this model's DiT over `videos`."""
        positions = [packing.grid_positions(_token_grid(self.config, v.grid)) for v in videos]
        m = self.model
        return sampling_lib.run(
            m.dit, m.params, videos, positions, text, settings, key, packer, progress, self.layout
        )

    def _to_videos(self, videos, tokens) -> np.ndarray:
        """uint8[n t h w 3] of normalised latent tokens f32[n l d] of videos of one grid."""
        m = self.model
        grid = videos[0].grid
        decoded = _decode(
            m.vae,
            vae_inference.from_config(m.config),
            tuple(m.config.dit.patch),
            grid,
            m.vae_params,
            jnp.asarray(np.stack(tokens)),
            m.latent_mean,
            m.latent_std,
            self.mesh,
        )
        return builders.to_uint8(decoded)

    def _encode(self, video: np.ndarray, height: int, width: int) -> np.ndarray:
        """Normalised latents f32[n t' h' w' c] of uint8[n t h w 3] (t = 1 + k*compression),
        resized to height x width first."""
        video = np.stack([video_io.resize(v, height, width) for v in video])
        m = self.model
        latents = _encode(
            m.vae, vae_inference.from_config(m.config), m.vae_params, builders.to_model_range(video)
        )
        return (np.asarray(latents) - m.latent_mean) / m.latent_std

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


@dataclasses.dataclass(frozen=True)
class Request:
    """One video of `Pipeline.generate_packed`: its prompt, size, seed and given frames
    (uint8[k h w 3], as `generate`'s start_frames / end_frames for one prompt)."""

    prompt: str
    num_frames: int
    height: int
    width: int
    seed: int = 0
    negative_prompt: str = ""
    start_frames: np.ndarray | None = None
    end_frames: np.ndarray | None = None


def _check_prompts(prompts) -> list[str]:
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("every prompt must be a non-empty string")
    return prompts


def _check_end_frames(config, num_frames: int, end_frames) -> None:
    gen_frames = generated_frames(config, num_frames)
    if end_frames is not None and gen_frames != num_frames:
        ct, _ = geometry.vae_compression(config)
        raise ValueError(
            f"num_frames={num_frames}: with frames given at the end the video must have "
            f"1 + {ct}*k frames (e.g. {gen_frames}), so that none are cut off"
        )


def _token_grid(config, grid) -> tuple[int, int, int]:
    """The patch grid (t h w) of a latent grid."""
    return tuple(g // p for g, p in zip(grid, config.dit.patch))


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_text(text_encoder, text_params, ids, mask):
    """f32[n lt dim] embeddings of caption ids i32[n lt] under the given encoder params."""
    return text_encoder.encode(text_params, ids, mask)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(vae, inference_cfg, vae_params, video):
    """Posterior means f32[n t' h' w' c] of videos f32[n t h w 3] in [-1, 1] (chunked / tiled
    as config.vae.inference says)."""
    return vae_inference.encode(vae, vae_params, video, inference_cfg)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 8))
def _decode(
    vae, inference_cfg, patch, grid, vae_params, tokens, latent_mean, latent_std, mesh=None
):
    """Videos f32[n t h w 3] in [-1, 1] (about) from normalised latent tokens f32[n l d].
    Long videos are decoded chunk by chunk (large frames tile by tile) as
    config.vae.inference says; tile rows over `mesh`'s devices with its shard_tiles."""
    gt, gh, gw = (g // p for g, p in zip(grid, patch))
    channels = tokens.shape[-1] // (patch[0] * patch[1] * patch[2])
    latents = packing.unpatchify(tokens, (gt, gh, gw), patch, channels)
    latents = latents * latent_std + latent_mean
    return vae_inference.decode(vae, vae_params, latents, inference_cfg, mesh)


def load_pipeline(
    path: str, mesh: Mesh | None = None, adapters: str | None = None
) -> Pipeline | wan_pipeline.WanPipeline:
    """A ready-to-sample Pipeline from an exported inference checkpoint
    (`python -m sora_jax.export`) or from a training workdir (its latest VAE and DiT
    checkpoints, EMA params), with the LoRA `adapters` folder (`--adapters_only` export)
    merged into its DiT if given; on `mesh` (None: one device) it samples sharded.

    A diffusers Wan folder (a public model, or `export --format=diffusers`) gives a
    `wan_pipeline.WanPipeline` on one device, sampling as diffusers' WanPipeline does."""
    if wan_pipeline.is_wan_folder(path):
        if adapters or mesh is not None:
            raise ValueError(
                f"{path} is a diffusers Wan folder: it loads on one device without adapters "
                f"(fine-tune it with --config.init.from_pretrained for LoRA or a mesh)"
            )
        return wan_pipeline.load_folder(path)
    return Pipeline(loader.load(path, mesh, adapters), mesh=mesh)

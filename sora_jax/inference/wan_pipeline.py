"""Text -> video with a Wan model read from a local diffusers folder (`WanPipeline` layout).

A folder holds `model_index.json`, `vae/` (AutoencoderKLWan), `transformer/`
(WanTransformer3DModel), `text_encoder/` (UMT5EncoderModel), `tokenizer/` and `scheduler/`
(UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler, flow sigmas with a time shift).
`load_folder` reads all of it; `WanPipeline.generate` samples as diffusers' `WanPipeline` does:

  prompt   cleaned (html entities, whitespace), tokenized to `max_sequence_length` with </s>,
           UMT5 states zero past the prompt's tokens; the transformer attends to all of them,
           padding included (Wan was trained that way, so no key mask).
  grid     the scheduler's grid: UniPC's is samplers' 'flow_match' spacing with flow_shift;
           flow-match Euler's is linspace(1, s(1/1000), n) shifted by s (the shift applied
           twice to its end, as diffusers does), then 0. The transformer sees the
           scheduler's timesteps (sigma * 1000, truncated to integers by UniPC), the solver
           the exact sigmas.
  solver   'unipc' (UniPC-2, Wan's default) or 'euler' (FlowMatchEulerDiscreteScheduler) or any
           other of sora_jax.diffusion.samplers on the same grid.
  CFG      conditional and negative-prompt rows in one transformer batch:
           v = v_neg + g (v_cond - v_neg); g = 1 skips the negative rows.
  decode   latents * latents_std + latents_mean, the VAE decoded one latent frame at a time
           (memory flat in the length), pixels (x + 1) / 2 clipped to [0, 1].

Latent layout here is channels-last, `f32[b t h w c]` (diffusers: `[b c t h w]`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Sequence
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import objectives, samplers
from sora_jax.models import wan_transformer_weights, wan_vae, wan_vae_weights
from sora_jax.models.wan_folder import check_folder, is_wan_folder  # noqa: F401 (API)
from sora_jax.text import hf_tokenizer, t5

SCHEDULERS = {
    # diffusers class -> (default sampler, the transformer sees integer timesteps)
    "UniPCMultistepScheduler": ("unipc", True),
    "FlowMatchEulerDiscreteScheduler": ("euler", False),
}
# Fields of UniPCMultistepScheduler whose non-default values would change the solver.
_UNIPC_FIXED = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "use_dynamic_shifting": False,
    "num_train_timesteps": samplers.FLOW_MATCH_TRAIN_STEPS,
}
_EULER_FIXED = {
    "use_dynamic_shifting": False,
    "num_train_timesteps": samplers.FLOW_MATCH_TRAIN_STEPS,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


def clean_prompt(text: str) -> str:
    """diffusers' Wan prompt cleaning without ftfy: html entities (twice), whitespace runs."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """What of a scheduler/ config the sampler needs."""

    sampler: str  # the scheduler's own solver
    shift: float  # flow_shift (UniPC) / shift (flow-match Euler)
    integer_timesteps: bool  # the transformer sees floor(sigma * 1000)
    grid: str  # "unipc" | "euler": whose time grid

    def time_grid(self, steps: int, shift: float | None = None) -> np.ndarray:
        """f32[steps + 1] sigmas from (almost) 1 down to 0."""
        s = self.shift if shift is None else shift
        if self.grid == "unipc":
            return np.asarray(
                samplers.time_grid(objectives.RectifiedFlow(), steps, "flow_match", shift=s)
            )

        def shifted(x):
            return s * x / (1.0 + (s - 1.0) * x)

        end = shifted(1.0 / samplers.FLOW_MATCH_TRAIN_STEPS)
        ts = shifted(np.linspace(1.0, end, steps, dtype=np.float64))
        ts[0] -= 1e-6  # a finite log-SNR at the start, as the 'flow_match' spacing does
        return np.concatenate([ts, [0.0]]).astype(np.float32)


def read_scheduler(folder: str) -> Scheduler:
    """scheduler/scheduler_config.json -> Scheduler; a setting this solver does not reproduce
    is a ValueError naming it."""
    path = os.path.join(folder, "scheduler_config.json")
    with open(path) as f:
        d = json.load(f)
    name = d.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"{path}: scheduler {name!r} is not one of {sorted(SCHEDULERS)}")
    fixed = _UNIPC_FIXED if name == "UniPCMultistepScheduler" else _EULER_FIXED
    for key, want in fixed.items():
        if key in d and d[key] != want:
            raise ValueError(f"{path}: {key}={d[key]!r} is not supported (only {want!r})")
    sampler, integer = SCHEDULERS[name]
    shift = d.get("flow_shift", 1.0) if name == "UniPCMultistepScheduler" else d.get("shift", 1.0)
    return Scheduler(sampler=sampler, shift=float(shift), integer_timesteps=integer, grid=sampler)


def model_timesteps(ts: np.ndarray, integer: bool) -> np.ndarray:
    """f32[n] the transformer's timestep at each grid point but the last: sigma * 1000, truncated
    as diffusers' UniPC does (in float64, so a sigma just below a multiple of 1/1000 truncates
    the same way)."""
    t = np.asarray(ts[:-1], np.float64) * samplers.FLOW_MATCH_TRAIN_STEPS
    return (np.floor(t) if integer else t).astype(np.float32)


# (params, latents f32[b t h w c], timestep f32[b], text f32[b s d]) -> velocity f32[b t h w c]
TransformerFn = Callable[[dict, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(eq=False)
class WanPipeline:
    """A loaded Wan folder: VAE, transformer, UMT5 and tokenizer, scheduler settings."""

    vae: wan_vae.WanVAE
    vae_params: dict
    transformer: TransformerFn
    transformer_params: dict
    latent_channels: int
    text_encoder: t5.T5Encoder
    text_params: dict
    tokenize: hf_tokenizer.TokenizeFn
    scheduler: Scheduler
    max_sequence_length: int = 512

    def __post_init__(self):
        self._encode_text = jax.jit(
            lambda p, ids, mask: self.text_encoder.apply({"params": p}, ids, mask)
        )
        self._sample = jax.jit(self._sample_impl, static_argnames=("sampler", "guided"))
        self._decode = jax.jit(
            lambda p, z: wan_vae.chunked_decode(
                self.vae, p, wan_vae.denormalize_latents(z, self.vae.config)
            )
        )

    def encode_prompts(self, prompts: Sequence[str]) -> jax.Array:
        """f32[n max_sequence_length d] UMT5 states, zero past each prompt's tokens."""
        ids, mask = self.tokenize([clean_prompt(p) for p in prompts])
        return self._encode_text(self.text_params, jnp.asarray(ids), jnp.asarray(mask))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(t', h', w', c) of the latents of a num_frames x height x width video."""
        t, h, w, _ = self.vae.config.latent_shape(num_frames, height, width)
        return t, h, w, self.latent_channels

    def _sample_impl(self, params, text, negative, noise, ts, steps_t, scale, *, sampler, guided):
        def velocity(x, t):
            step_t = steps_t[jnp.argmin(jnp.abs(ts[:-1] - t))]
            if not guided:
                return self.transformer(params, x, jnp.full((x.shape[0],), step_t), text)
            both = jnp.concatenate([x, x])
            v = self.transformer(
                params, both, jnp.full((both.shape[0],), step_t), jnp.concatenate([text, negative])
            )
            cond, neg = jnp.split(v, 2)
            return neg + scale * (cond - neg)

        return samplers.sample(sampler, velocity, objectives.RectifiedFlow(), noise, ts)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        negative_prompts: Sequence[str] | None = None,
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        steps: int = 50,
        guidance_scale: float = 5.0,
        sampler: str | None = None,
        shift: float | None = None,
        seed: int = 0,
        noise: jax.Array | None = None,
        return_latents: bool = False,
    ) -> np.ndarray:
        """f32[n num_frames height width 3] videos in [0, 1] (or the final latents
        f32[n t' h' w' c] with return_latents). `noise` f32[n t' h' w' c] replaces the seed's;
        `sampler` / `shift` default to the scheduler's."""
        prompts = list(prompts)
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
        sampler = sampler or self.scheduler.sampler
        if sampler not in samplers.SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {samplers.SAMPLERS}")
        negative_prompts = list(negative_prompts or [""] * len(prompts))
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        shape = (len(prompts), *self.latent_shape(num_frames, height, width))
        if noise is None:
            noise = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the video needs {shape}")
        ts = self.scheduler.time_grid(steps, shift)
        steps_t = model_timesteps(ts, self.scheduler.integer_timesteps)
        guided = guidance_scale != 1.0
        text = self.encode_prompts(prompts)
        negative = self.encode_prompts(negative_prompts) if guided else text
        z = self._sample(
            self.transformer_params,
            text,
            negative,
            jnp.asarray(noise, jnp.float32),
            ts,
            jnp.asarray(steps_t),
            jnp.float32(guidance_scale),
            sampler=sampler,
            guided=guided,
        )
        if return_latents:
            return np.asarray(z)
        video = self._decode(self.vae_params, z)
        return np.clip((np.asarray(video, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def load_folder(
    folder: str, dtype=jnp.float32, compute_dtype=jnp.float32, max_sequence_length: int = 512
) -> WanPipeline:
    """A WanPipeline from a local diffusers Wan folder; params in `dtype`, compute in
    `compute_dtype` (the text encoder and VAE too)."""
    check_folder(folder)
    vae, vae_params = wan_vae_weights.load_folder(
        os.path.join(folder, "vae"), dtype=dtype, compute_dtype=compute_dtype
    )
    model, transformer_params = wan_transformer_weights.load_transformer(
        os.path.join(folder, "transformer"), dtype=dtype, compute_dtype=compute_dtype
    )

    def transformer(params, latents, timestep, text):
        # diffusers attends over every text position (the padding is zeros), so no mask.
        return model.apply({"params": params}, latents, timestep, text, method=model.video)

    text_encoder, text_params = t5.load_t5(os.path.join(folder, "text_encoder"), dtype)
    tokenize = hf_tokenizer.load_tokenizer(os.path.join(folder, "tokenizer"), max_sequence_length)
    return WanPipeline(
        vae=vae,
        vae_params=vae_params,
        transformer=transformer,
        transformer_params=transformer_params,
        latent_channels=model.config.in_channels,
        text_encoder=text_encoder,
        text_params=text_params,
        tokenize=tokenize,
        scheduler=read_scheduler(os.path.join(folder, "scheduler")),
        max_sequence_length=max_sequence_length,
    )

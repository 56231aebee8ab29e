"""Text-to-video sampling: text encoder -> DiT (any objective, sampler and CFG) -> VAE decode."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing, video_io
from sora_jax.diffusion import guidance, objectives, samplers
from sora_jax.models import vae_inference
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, vae_trainer

CONFIG_FILE = "config.json"


def save_config(config: ml_collections.ConfigDict, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: --workdir must be a directory written by "
            f"`python -m sora_jax.train` (it holds the config and the checkpoints)"
        )
    with open(path) as f:
        saved = config_lib.fill_added_keys(json.load(f))
    return config_lib.validate(ml_collections.ConfigDict(_tuples(saved)))


def _tuples(x):
    """JSON turns tuples into lists; configs use tuples (hashable, as in the files)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


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
        )

    def time_grid(self, num_tokens: int) -> jax.Array:
        """f32[steps + 1] from 1 to 0 for a video of `num_tokens` latent tokens."""
        rho, sigma_min, sigma_max = self.karras
        shift = self.objective.time.shift(num_tokens)
        return samplers.time_grid(
            self.objective, self.steps, self.spacing, shift, rho, sigma_min, sigma_max
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

    def generate(
        self,
        prompts: Sequence[str],
        *,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        negative_prompt: str = "",
        **sampling,
    ) -> np.ndarray:
        """uint8[n t h w 3] videos, one per prompt; the same seed gives the same videos.

        `sampling` overrides config.diffusion for this call: sampler, steps, spacing,
        time_shift, eta, guidance_scale, guidance_interval, guidance_rescale (None: config).
        `num_frames` that the causal VAE cannot produce (not 1 + k*compression) is
        rounded up to the next supported count and the extra frames are cut off.
        """
        prompts = list(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("every prompt must be a non-empty string")
        c = self.config
        ct, _ = config_lib.vae_compression(c)
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames}: must be at least 1")
        gen_frames = 1 + -(-(num_frames - 1) // ct) * ct
        grid = config_lib.latent_grid(c, gen_frames, height, width)
        settings = SamplerSettings.from_config(c, **sampling)
        ids, mask = self.text_encoder.tokenize(prompts)
        nids, nmask = self.text_encoder.tokenize([negative_prompt] * len(prompts))
        patch = tuple(c.dit.patch)
        tokens = _sample_tokens(
            self.dit,
            self.text_encoder,
            patch,
            grid,
            settings,
            self.params,
            ids,
            mask,
            nids,
            nmask,
            jax.random.PRNGKey(seed),
        )
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


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sample_tokens(dit, text_encoder, patch, grid, settings: SamplerSettings, params, *args):
    """Sampled latent tokens f32[n l d] (normalised); params are traced, not baked in."""
    ids, mask, nids, nmask, key = args
    n = ids.shape[0]
    gt, gh, gw = (g // p for g, p in zip(grid, patch))
    num_tok = gt * gh * gw
    positions = jnp.asarray(packing.grid_positions((gt, gh, gw)))
    # Conditional and unconditional rows in one batch: one segment per row.
    all_ids, all_mask = jnp.concatenate([ids, nids]), jnp.concatenate([mask, nmask])
    text = dit_trainer.text_features(
        text_encoder, params.get("text"), all_ids[:, None], all_mask[:, None]
    )
    seg = jnp.ones((2 * n, num_tok), jnp.int32)
    pos = jnp.broadcast_to(positions, (2 * n, num_tok, 3))

    def model_fn(x, time):
        """Guided model output f32[n l d] at x f32[n l d], scalar time."""
        out = dit.apply(
            {"params": params["dit"]},
            jnp.concatenate([x, x]),
            jnp.full((2 * n, 1), time),
            seg,
            pos,
            text,
            all_mask[:, None],
        )
        return guidance.guide(
            out[:n],
            out[n:],
            time,
            settings.guidance_scale,
            settings.guidance_interval,
            settings.guidance_rescale,
        )

    noise = jax.random.normal(key, (n, num_tok, dit.patch_dim))
    return samplers.sample(
        settings.sampler,
        model_fn,
        settings.objective,
        noise,
        settings.time_grid(num_tok),
        eta=settings.eta,
        rng=jax.random.fold_in(key, 1),
    )


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


def load_pipeline(workdir: str, mesh=None) -> Pipeline:
    """Loads the config and the latest VAE and DiT checkpoints of a training workdir."""
    config = load_config(workdir)
    mesh = mesh or mesh_lib.create_mesh(1)
    vae, vae_params = vae_trainer.load(config, workdir, mesh)
    dit, text_encoder, params, extras = dit_trainer.load(config, workdir, mesh)
    return Pipeline(
        config,
        vae,
        vae_params,
        dit,
        text_encoder,
        params,
        np.asarray(extras["latent_mean"]),
        np.asarray(extras["latent_std"]),
    )


def slug(text: str, max_len: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "video"


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
    """Generates one video per prompt and writes each as .mp4 and .gif; returns the paths."""
    videos = pipe.generate(
        prompts, num_frames=num_frames, height=height, width=width, seed=seed, **kwargs
    )
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
        meta = {
            "title": prompt,
            "comment": f"AI-generated by sora_jax; prompt: {prompt}; seed: {seed}",
        }
        for ext in ("mp4", "gif"):
            path = os.path.join(out_dir, f"{i:02d}_{slug(prompt)}_seed{seed}.{ext}")
            video_io.write_video(path, np.asarray(video), fps=pipe.config.data.fps, metadata=meta)
            paths.append(path)
    return paths

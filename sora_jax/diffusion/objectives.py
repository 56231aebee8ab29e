"""Training objectives behind one small interface, shared by the trainer and the samplers.

Every objective is a Gaussian path x_t = alpha_t x0 + sigma_t eps over t in [0, 1] (t = 0 is
data, t = 1 is (nearly) pure noise) and a parametrisation of the model output:

  sample_t(rng, shape, num_tokens)   training times f32[shape]
  alpha_sigma(t)                     the path's coefficients
  corrupt(x0, noise, t)              x_t
  target(x0, noise, t)               what the model regresses; loss_weight(t) its MSE weight
  to_x0_eps(out, x_t, t)             (x0, eps) predictions from a model output (samplers)
  flow_time(t), flow_velocity(...)   the same path rescaled into a flow: x_t = c_t y, with
                                     y = (1 - tau) x0 + tau eps (Euler / Heun integrate it)

The DiT sees t itself (it embeds 1000 t), so DDPM's t = step / T gives its usual step numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.common import config_checks as cc
from sora_jax.diffusion import ddpm, samplers
from sora_jax.diffusion import rectified_flow as rf

OBJECTIVES = ("rectified_flow", "ddpm")


@dataclasses.dataclass(frozen=True)
class TimeSampling:
    """Training-time distribution and the (fixed or token-dependent) time shift."""

    kind: str = "logit_normal"  # rf.TIMESTEP_SAMPLINGS
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift_mode: str = "fixed"  # 'fixed': time_shift; 'tokens': rf.token_shift
    time_shift: float = 1.0
    shift_base_tokens: int = 256
    shift_max: float = 4.0
    shift_in_training: bool = False

    def shift(self, num_tokens):
        """The shift for videos of `num_tokens` latent tokens (a number or an array)."""
        if self.shift_mode == "fixed":
            return self.time_shift
        if self.shift_mode == "tokens":
            return rf.token_shift(
                num_tokens, self.time_shift, self.shift_base_tokens, self.shift_max
            )
        raise ValueError(f"unknown shift mode {self.shift_mode!r}: use one of {rf.SHIFT_MODES}")

    def sample(self, rng, shape, num_tokens=None) -> jax.Array:
        """f32[shape] in (0, 1); `num_tokens` (broadcastable to shape) for the token shift."""
        t = rf.sample_timesteps(
            rng, shape, self.kind, self.logit_mean, self.logit_std, self.mode_scale
        )
        if self.shift_in_training:
            t = rf.shift_time(t, self.shift(num_tokens))
        return t


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """alpha = 1 - t, sigma = t; the model predicts the velocity v = eps - x0."""

    time: TimeSampling = TimeSampling()
    name: ClassVar[str] = "rectified_flow"

    def sample_t(self, rng, shape, num_tokens=None):
        return self.time.sample(rng, shape, num_tokens)

    def alpha_sigma(self, t):
        return 1.0 - t, t

    def corrupt(self, x0, noise, t):
        return rf.interpolate(x0, noise, t)

    def target(self, x0, noise, t):
        return rf.velocity_target(x0, noise)

    def loss_weight(self, t):
        return jnp.ones_like(t)

    def to_x0_eps(self, out, x_t, t):
        return x_t - t * out, x_t + (1.0 - t) * out

    def flow_time(self, t):
        return jnp.ones_like(t), t

    def flow_velocity(self, out, x_t, t):
        return out

    def t_from_noise_ratio(self, r: np.ndarray) -> np.ndarray:
        """t where sigma / alpha = r (for noise-level spacings such as Karras')."""
        return r / (1.0 + r)

    def noise_ratio_range(self) -> tuple[float, float]:
        return 0.0, float("inf")


@dataclasses.dataclass(frozen=True)
class DDPM:
    """Variance-preserving DDPM over `num_train_steps` steps; eps-, x0- or v-prediction."""

    time: TimeSampling = TimeSampling()
    prediction: str = "eps"  # ddpm.PREDICTIONS
    schedule: str = "linear"  # ddpm.SCHEDULES
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    zero_terminal_snr: bool = False
    min_snr_gamma: float = 0.0  # 0: plain MSE of the parametrisation
    name: ClassVar[str] = "ddpm"

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha^2, sigma^2) f64[T+1] at steps 0..T; step 0 is clean data. Both in f64 so
        that sigma near 0 keeps its precision."""
        ac = ddpm.alphas_cumprod(
            self.schedule,
            self.num_train_steps,
            self.beta_start,
            self.beta_end,
            self.cosine_s,
            self.zero_terminal_snr,
        )
        return np.concatenate([[1.0], ac]), np.concatenate([[0.0], 1.0 - ac])

    def alpha_sigma(self, t):
        a2, s2 = self._tables()
        steps = jnp.arange(self.num_train_steps + 1, dtype=jnp.float32)
        u = jnp.asarray(t, jnp.float32) * self.num_train_steps
        a2 = jnp.interp(u, steps, jnp.asarray(a2, jnp.float32))
        s2 = jnp.interp(u, steps, jnp.asarray(s2, jnp.float32))
        return jnp.sqrt(jnp.maximum(a2, 0.0)), jnp.sqrt(jnp.maximum(s2, 0.0))

    def sample_t(self, rng, shape, num_tokens=None):
        """The time distribution, rounded up to the discrete steps 1..T (as t = step / T)."""
        n = self.num_train_steps
        u = self.time.sample(rng, shape, num_tokens)
        return jnp.clip(jnp.ceil(u * n), 1, n) / n

    def corrupt(self, x0, noise, t):
        a, s = self.alpha_sigma(t)
        return a * x0 + s * noise

    def target(self, x0, noise, t):
        a, s = self.alpha_sigma(t)
        return ddpm.from_x0_eps(self.prediction, x0, noise, a, s)

    def loss_weight(self, t):
        a, s = self.alpha_sigma(t)
        return ddpm.min_snr_weight(self.prediction, a, s, self.min_snr_gamma)

    def to_x0_eps(self, out, x_t, t):
        a, s = self.alpha_sigma(t)
        return ddpm.to_x0_eps(self.prediction, out, x_t, a, s)

    def flow_time(self, t):
        # x_t / (alpha + sigma) = (1 - tau) x0 + tau eps with tau = sigma / (alpha + sigma).
        a, s = self.alpha_sigma(t)
        return a + s, s / (a + s)

    def flow_velocity(self, out, x_t, t):
        x0, eps = self.to_x0_eps(out, x_t, t)
        return eps - x0

    def _log_noise_ratios(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, log(sigma / alpha)) where finite: drops step 0 and a zero-SNR last step."""
        a2, s2 = self._tables()
        ok = (a2 > 0) & (s2 > 0)
        return np.arange(self.num_train_steps + 1)[ok], 0.5 * (np.log(s2[ok]) - np.log(a2[ok]))

    def t_from_noise_ratio(self, r: np.ndarray) -> np.ndarray:
        steps, log_ratio = self._log_noise_ratios()
        return np.interp(np.log(r), log_ratio, steps) / self.num_train_steps

    def noise_ratio_range(self) -> tuple[float, float]:
        _, log_ratio = self._log_noise_ratios()
        return float(np.exp(log_ratio[0])), float(np.exp(log_ratio[-1]))


def from_config(config) -> RectifiedFlow | DDPM:
    """The objective that `config.diffusion` describes."""
    f = config.diffusion
    time = TimeSampling(
        kind=f.timestep_sampling,
        logit_mean=f.logit_mean,
        logit_std=f.logit_std,
        mode_scale=f.mode_scale,
        shift_mode=f.shift_mode,
        time_shift=f.time_shift,
        shift_base_tokens=f.shift_base_tokens,
        shift_max=f.shift_max,
        shift_in_training=f.shift_in_training,
    )
    if f.objective == "rectified_flow":
        return RectifiedFlow(time)
    if f.objective == "ddpm":
        d = f.ddpm
        return DDPM(
            time,
            prediction=d.prediction,
            schedule=d.schedule,
            num_train_steps=d.num_train_steps,
            beta_start=d.beta_start,
            beta_end=d.beta_end,
            cosine_s=d.cosine_s,
            zero_terminal_snr=d.zero_terminal_snr,
            min_snr_gamma=d.min_snr_gamma,
        )
    raise ValueError(f"config.diffusion.objective={f.objective!r}: use one of {OBJECTIVES}")


def validate_config(config):
    """Checks config.diffusion.* (the objective, its time sampling, the sampler and CFG)."""
    f = config.diffusion
    cc.one_of(config, "diffusion.objective", OBJECTIVES)
    cc.one_of(config, "diffusion.timestep_sampling", rf.TIMESTEP_SAMPLINGS)
    cc.one_of(config, "diffusion.shift_mode", rf.SHIFT_MODES)
    cc.one_of(config, "diffusion.sampler", samplers.SAMPLERS)
    cc.one_of(config, "diffusion.spacing", samplers.SPACINGS)
    cc.positive(
        config,
        "diffusion.sample_steps",
        "diffusion.time_shift",
        "diffusion.logit_std",
        "diffusion.shift_base_tokens",
        "diffusion.karras_rho",
        "diffusion.karras_sigma_min",
    )
    # f_mode is a monotone map of [0, 1] onto itself only in this range (SD3, eq. 20).
    mode_max = 2.0 / (math.pi - 2.0)
    cc.check(
        -1.0 <= f.mode_scale <= mode_max,
        "diffusion.mode_scale",
        f.mode_scale,
        f"must be in [-1, {mode_max:.3f}]",
    )
    cc.check(f.shift_max >= 1.0, "diffusion.shift_max", f.shift_max, "must be >= 1")
    cc.check(
        f.karras_sigma_max > f.karras_sigma_min,
        "diffusion.karras_sigma_max",
        f.karras_sigma_max,
        f"must be > diffusion.karras_sigma_min={f.karras_sigma_min}",
    )
    cc.check(0.0 <= f.ddim_eta <= 1.0, "diffusion.ddim_eta", f.ddim_eta, "must be in [0, 1]")
    cc.check(f.guidance_scale >= 0, "diffusion.guidance_scale", f.guidance_scale, "must be >= 0")
    gi = f.guidance_interval
    cc.check(
        isinstance(gi, Sequence) and len(gi) == 2 and 0.0 <= gi[0] <= gi[1] <= 1.0,
        "diffusion.guidance_interval",
        gi,
        "must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1",
    )
    cc.check(
        0.0 <= f.guidance_rescale <= 1.0,
        "diffusion.guidance_rescale",
        f.guidance_rescale,
        "must be in [0, 1]",
    )
    cc.check(
        0.0 <= f.condition_noise < 1.0,
        "diffusion.condition_noise",
        f.condition_noise,
        "must be in [0, 1)",
    )
    d = f.ddpm
    cc.one_of(config, "diffusion.ddpm.prediction", ddpm.PREDICTIONS)
    cc.one_of(config, "diffusion.ddpm.schedule", ddpm.SCHEDULES)
    cc.positive(config, "diffusion.ddpm.num_train_steps", "diffusion.ddpm.cosine_s")
    cc.check(
        0.0 < d.beta_start < d.beta_end < 1.0,
        "diffusion.ddpm.beta_start",
        (d.beta_start, d.beta_end),
        "needs 0 < beta_start < beta_end < 1",
    )
    cc.check(d.min_snr_gamma >= 0, "diffusion.ddpm.min_snr_gamma", d.min_snr_gamma, "must be >= 0")
    cc.check(
        not (d.zero_terminal_snr and d.prediction == "eps"),
        "diffusion.ddpm.prediction",
        d.prediction,
        "eps-prediction cannot denoise pure noise (x0 = (x - sigma eps) / 0): use 'v' or "
        "'x0' with diffusion.ddpm.zero_terminal_snr",
    )

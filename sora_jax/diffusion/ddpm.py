"""DDPM (variance-preserving) noise schedules and the eps / x0 / v parametrisations.

x_t = alpha_t x_0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1, alpha_t^2 = alphas_cumprod[t].
Schedules are tables over the `T` training steps (numpy, built once at trace time); the
objective reads them at continuous times t in [0, 1] (t = step / T, t = 0 is clean data).

The three parametrisations of one denoiser, given x_t:
  eps:  x0 = (x_t - sigma eps) / alpha
  x0:   eps = (x_t - alpha x0) / sigma
  v = alpha eps - sigma x0 (Salimans & Ho):  x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")


def betas(
    schedule: str,
    num_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
) -> np.ndarray:
    """f64[T] per-step noise variances."""
    if schedule == "linear":  # Ho et al. 2020
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if schedule == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta)
        return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021; the clip keeps the last step finite
        u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}: use one of {SCHEDULES}")


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Alg. 1: shift and scale sqrt(alphas_cumprod) so the last step is pure
    noise (SNR exactly 0) while the first step is unchanged; training then sees the same
    input at t=1 that sampling starts from."""
    s = np.sqrt(alphas_cumprod)
    first, last = s[0], s[-1]
    s = (s - last) * first / (first - last)
    return s**2


def alphas_cumprod(
    schedule: str,
    num_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    zero_terminal_snr: bool = False,
) -> np.ndarray:
    """f64[T]: alpha_t^2 after steps 1..T (decreasing)."""
    ac = np.cumprod(1.0 - betas(schedule, num_steps, beta_start, beta_end, cosine_s))
    return rescale_zero_terminal_snr(ac) if zero_terminal_snr else ac


def snr(alpha: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    return alpha**2 / sigma**2


def _safe_div(a, b):
    """a / b where b != 0, else 0 (the quotient is then multiplied by 0 by every caller)."""
    return jnp.where(b != 0, a / jnp.where(b != 0, b, 1.0), 0.0)


def to_x0_eps(prediction: str, out, x_t, alpha, sigma):
    """(x0, eps) from the model output `out` of the given parametrisation."""
    if prediction == "eps":
        return _safe_div(x_t - sigma * out, alpha), out
    if prediction == "x0":
        return out, _safe_div(x_t - alpha * out, sigma)
    if prediction == "v":
        return alpha * x_t - sigma * out, sigma * x_t + alpha * out
    raise ValueError(f"unknown prediction {prediction!r}: use one of {PREDICTIONS}")


def from_x0_eps(prediction: str, x0, eps, alpha, sigma):
    """The model output of the given parametrisation for the pair (x0, eps): the loss target."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}: use one of {PREDICTIONS}")


def min_snr_weight(prediction: str, alpha, sigma, gamma: float):
    """Min-SNR-gamma loss weight (Hang et al. 2023): the x0-space weight min(SNR, gamma),
    expressed for each parametrisation's own MSE. gamma <= 0 turns it off (weight 1)."""
    if gamma <= 0:
        return jnp.ones_like(alpha)
    s = snr(alpha, sigma)
    clipped = jnp.minimum(s, gamma)
    if prediction == "eps":  # |eps err|^2 = SNR |x0 err|^2
        return _safe_div(clipped, s)
    if prediction == "x0":
        return clipped
    if prediction == "v":  # |v err|^2 = (SNR + 1) |x0 err|^2
        return clipped / (s + 1.0)
    raise ValueError(f"unknown prediction {prediction!r}: use one of {PREDICTIONS}")

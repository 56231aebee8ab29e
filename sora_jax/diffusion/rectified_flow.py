"""Rectified flow: straight paths from data (t=0) to noise (t=1), velocity prediction.

x_t = (1 - t) x_0 + t eps, and the model learns v = eps - x_0, so dx/dt = v and
sampling integrates the ODE from t=1 (pure noise) back to t=0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIMESTEP_SAMPLINGS = ("logit_normal", "uniform", "mode")
SHIFT_MODES = ("fixed", "tokens")


def sample_timesteps(
    rng: jax.Array,
    shape: tuple[int, ...],
    kind: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> jax.Array:
    """f32[shape] in (0, 1). Logit-normal and mode sampling concentrate training on mid noise
    levels (SD3, Esser et al. 2024); uniform spreads it evenly."""
    if kind == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, shape))
    if kind == "uniform":
        return jax.random.uniform(rng, shape, minval=1e-5, maxval=1.0 - 1e-5)
    if kind == "mode":
        # f_mode(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u): monotone for -1 <= s <= 2/(pi-2),
        # s = 0 is uniform, s > 0 puts more mass around t = 0.5.
        u = jax.random.uniform(rng, shape, minval=1e-5, maxval=1.0 - 1e-5)
        t = 1.0 - u - mode_scale * (jnp.cos(jnp.pi / 2 * u) ** 2 - 1.0 + u)
        return jnp.clip(t, 1e-5, 1.0 - 1e-5)
    raise ValueError(f"unknown timestep sampling {kind!r}: use one of {TIMESTEP_SAMPLINGS}")


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t for t broadcastable against x0 (e.g. f32[b l 1] for tokens f32[b l d])."""
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    return noise - x0


def shift_time(t: jax.Array, shift: float) -> jax.Array:
    """Maps t -> s t / (1 + (s - 1) t): monotone, fixes 0 and 1; s > 1 favours high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def token_shift(num_tokens, base_shift: float, base_tokens: int, max_shift: float):
    """Resolution/duration-dependent shift: base_shift * sqrt(num_tokens / base_tokens),
    clipped to [1/max_shift, max_shift].

    More tokens of one video average out more noise, so the same t destroys less of the
    signal (SD3 sec. 5.3.2: the SNR must fall by the token ratio to match, a shift by its
    square root). Works on Python numbers and on arrays (per-segment counts in training).
    """
    s = base_shift * (num_tokens / base_tokens) ** 0.5
    if isinstance(s, (int, float)):
        return float(min(max(s, 1.0 / max_shift), max_shift))
    return jnp.clip(s, 1.0 / max_shift, max_shift)


def time_grid(num_steps: int, shift: float = 1.0) -> jax.Array:
    """f32[num_steps + 1] from 1 down to 0."""
    return shift_time(jnp.linspace(1.0, 0.0, num_steps + 1), shift)

"""Samplers for any objective of `sora_jax.diffusion.objectives`: pure functions over a model.

`model_fn(x, t) -> out` is the model's native output (velocity, eps, x0 or v) for the state
`x f32[...]` at the time `t`; guidance, text and any conditioning (e.g. a per-token mask with
clean conditioning latents) live in that closure. Each sampler walks a time grid `ts f32[n+1]`
from 1 (noise) down to 0 (data) with `lax.scan`, one model call per step (Heun: two, except
into t = 0), and returns x at t = 0 with `noise`'s shape. The grid may also be
`ts f32[n+1 ...]`, one grid per element broadcast against x (e.g. f32[n+1 b l 1]: a time per
token, for packed rows of videos whose grids differ); `t` is then `ts[i]`. A grid that
starts at t_start < 1 (`time_grid(..., t_start=)`) starts every sampler from a partly noised
state x_{t_start} given as `noise` (SDEdit); with t_start = 0 the grid is [0] and x is returned.

- euler / heun: the probability-flow ODE of the path rescaled into a flow
  (x_t = c_t y, y = (1 - tau) x0 + tau eps, dy/dtau = eps - x0), first / second order.
- ddim: x_next = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z with c = eta * the DDPM posterior
  std; eta = 0 is the deterministic DDIM (= Euler on the flow), eta = 1 is ancestral DDPM.
- dpmpp_2m: DPM-Solver++(2M) (Lu et al. 2022), the data-prediction multistep solver in
  lambda = log(alpha / sigma), second order from the previous step's x0.
- unipc: UniPC (Zhao et al. 2023), B2(h) variant, data prediction, order 2: the multistep
  predictor of dpmpp_2m's family followed, after each model call, by the UniC corrector that
  reuses that call; the sampler Wan uses (as diffusers' UniPCMultistepScheduler with
  solver_order=2, bh2, lower_order_final, on the same grid to float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.common import config_checks as cc
from sora_jax.diffusion import rectified_flow as rf
from sora_jax.models import geometry
from sora_jax.parallel import mesh as mesh_lib

SAMPLERS = ("euler", "heun", "ddim", "dpmpp_2m", "unipc")
SPACINGS = ("uniform", "shifted", "karras", "flow_match")
# flow_match: the grid of diffusers' flow-matching schedulers (Wan's): n points of
# linspace(1, 1 / FLOW_MATCH_TRAIN_STEPS, n + 1), shifted, then 0.
FLOW_MATCH_TRAIN_STEPS = 1000
# config.sample.image_prompt: the factorized text->video's image pass is prompted with the
# prompt itself or with its first-frame rewrite (sora_jax.inference.prompts.first_frame_prompt).
IMAGE_PROMPTS = ("same", "first_frame")

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def time_grid(
    objective,
    num_steps: int,
    spacing: str = "shifted",
    shift: float = 1.0,
    rho: float = 7.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    t_start: float = 1.0,
) -> jax.Array:
    """f32[num_steps + 1] times from 1 down to 0; with t_start < 1, f32[k + 1] from t_start.

    uniform: evenly spaced ("trailing": it starts at t = 1 exactly).
    shifted: uniform then t -> s t / (1 + (s - 1) t) (more steps at high noise for s > 1).
    karras: noise ratios sigma / alpha spaced as in Karras et al. 2022 (rho; dense near
      sigma_min), mapped to t by the objective; the first point is replaced by t = 1 so that
      sampling starts from pure noise like the others.
    flow_match: the first n points of linspace(1, 1/1000, n + 1), shifted as above, the first
      lowered by 1e-6 (a finite log-SNR), then 0: the grid Wan's pipelines sample on.
    t_start: the tail of the full grid below t_start, led by t_start itself (as in SDEdit
      with a truncated schedule: the remaining steps keep their sizes; t_start = 1 is the full
      grid, t_start = 0 the single point [0], i.e. no step).
    """
    if not 0.0 <= t_start <= 1.0:
        raise ValueError(f"t_start={t_start}: must be in [0, 1]")
    args = (objective, num_steps, spacing, shift, rho, sigma_min, sigma_max)
    if t_start >= 1.0:
        return _full_grid(*args)
    # The grid's length depends on its values: computed now, even when called under jit.
    with jax.ensure_compile_time_eval():
        full = np.asarray(_full_grid(*args))
    tail = full[full < t_start]
    return jnp.asarray(np.concatenate([[t_start], tail]), jnp.float32)


def start_state(objective, x0: jax.Array, noise: jax.Array, t_start: float) -> jax.Array:
    """x at t_start on the objective's path from data x0 (SDEdit's start): pure `noise` at
    t_start = 1, as when sampling from scratch, so strength 1 ignores x0 exactly."""
    if t_start >= 1.0:
        return noise
    return objective.corrupt(x0, noise, jnp.asarray(t_start, jnp.float32))


def _full_grid(objective, num_steps, spacing, shift, rho, sigma_min, sigma_max) -> jax.Array:
    if spacing == "uniform":
        return rf.time_grid(num_steps, 1.0)
    if spacing == "shifted":
        return rf.time_grid(num_steps, shift)
    if spacing == "karras":
        ramp = np.linspace(0.0, 1.0, num_steps)
        # Within the noise ratios the objective can reach (a DDPM table has a finite range).
        r_min, r_max = objective.noise_ratio_range()
        sigma_min, sigma_max = max(sigma_min, r_min), min(sigma_max, r_max)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        ratios = (hi + ramp * (lo - hi)) ** rho
        ts = np.asarray(objective.t_from_noise_ratio(ratios), np.float64)
        ts = np.concatenate([[1.0], ts[1:], [0.0]])
        return jnp.asarray(ts, jnp.float32)
    if spacing == "flow_match":
        t = np.linspace(1.0, 1.0 / FLOW_MATCH_TRAIN_STEPS, num_steps + 1)[:-1]
        t = shift * t / (1.0 + (shift - 1.0) * t)
        t[0] = min(t[0], 1.0 - 1e-6)
        return jnp.asarray(np.concatenate([t, [0.0]]), jnp.float32)
    raise ValueError(f"unknown time spacing {spacing!r}: use one of {SPACINGS}")


def euler(model_fn: ModelFn, objective, noise: jax.Array, ts: jax.Array) -> jax.Array:
    def step(x, i):
        t, t_next = ts[i], ts[i + 1]
        (c, tau), (c_next, tau_next) = objective.flow_time(t), objective.flow_time(t_next)
        d = objective.flow_velocity(model_fn(x, t), x, t)
        return c_next * (x / c + (tau_next - tau) * d), None

    x, _ = jax.lax.scan(step, noise, jnp.arange(ts.shape[0] - 1))
    return x


def heun(model_fn: ModelFn, objective, noise: jax.Array, ts: jax.Array) -> jax.Array:
    """Heun's trapezoidal corrector on the flow ODE; the step into t = 0 stays Euler (the
    model is not trained at t = 0, and an eps-model's x0 there is undefined)."""

    def step(x, i):
        t, t_next = ts[i], ts[i + 1]
        (c, tau), (c_next, tau_next) = objective.flow_time(t), objective.flow_time(t_next)
        h = tau_next - tau
        y = x / c
        d = objective.flow_velocity(model_fn(x, t), x, t)
        y_euler = y + h * d

        def correct(_):
            x_euler = c_next * y_euler
            d_next = objective.flow_velocity(model_fn(x_euler, t_next), x_euler, t_next)
            return y + h * 0.5 * (d + d_next)

        # Every video reaches t = 0 at the grid's last point only: one branch for all tokens.
        y_next = jax.lax.cond(jnp.all(t_next > 0), correct, lambda _: y_euler, None)
        return c_next * y_next, None

    x, _ = jax.lax.scan(step, noise, jnp.arange(ts.shape[0] - 1))
    return x


def ddim(
    model_fn: ModelFn,
    objective,
    noise: jax.Array,
    ts: jax.Array,
    eta: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """`rng` draws the fresh noise of eta > 0 (step i uses fold_in(rng, i))."""
    if eta > 0 and rng is None:
        raise ValueError("ddim with eta > 0 needs an rng")

    def step(x, i):
        t, t_next = ts[i], ts[i + 1]
        a, s = objective.alpha_sigma(t)
        a_next, s_next = objective.alpha_sigma(t_next)
        x0, eps = objective.to_x0_eps(model_fn(x, t), x, t)
        if eta == 0:
            return a_next * x0 + s_next * eps, None
        # Posterior std of x_next given (x_t, x0) on this path: s' sqrt(1 - (a s' / (a' s))^2).
        ratio = (a * s_next) / (a_next * s)
        c2 = eta**2 * s_next**2 * jnp.clip(1.0 - ratio**2, 0.0, 1.0)
        z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
        x_next = a_next * x0 + jnp.sqrt(jnp.maximum(s_next**2 - c2, 0.0)) * eps
        return x_next + jnp.sqrt(c2) * z, None

    x, _ = jax.lax.scan(step, noise, jnp.arange(ts.shape[0] - 1))
    return x


def _log_snr_half(a, s):
    """lambda = log(alpha / sigma), with +-inf at the pure-noise and clean ends."""
    return jnp.log(a) - jnp.log(s)


def dpmpp_2m(model_fn: ModelFn, objective, noise: jax.Array, ts: jax.Array) -> jax.Array:
    """First order on the first step and into t = 0 (where the step in lambda is infinite)."""

    def step(carry, i):
        x, x0_prev, h_prev = carry
        t, t_next = ts[i], ts[i + 1]
        a, s = objective.alpha_sigma(t)
        a_next, s_next = objective.alpha_sigma(t_next)
        x0, _ = objective.to_x0_eps(model_fn(x, t), x, t)
        h = _log_snr_half(a_next, s_next) - _log_snr_half(a, s)
        # Second order needs a previous x0 and finite, non-zero steps (repeated grid points
        # give h = 0; the steps out of pure noise and into t = 0 are infinite).
        second = (i > 0) & (s_next > 0) & (h > 0) & (h_prev > 0)
        r = jnp.where(second, h_prev / jnp.where(second, h, 1.0), 1.0)
        d = jnp.where(second, (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev, x0)
        # x' = (s'/s) x + a' (1 - e^-h) D with e^-h = a s' / (a' s), exact at both ends.
        decay = (a * s_next) / (a_next * s)
        x_next = (s_next / s) * x + a_next * (1.0 - decay) * d
        return (x_next, x0, h), None

    carry = (noise, jnp.zeros_like(noise), jnp.ones(jnp.shape(ts[0]), noise.dtype))
    (x, _, _), _ = jax.lax.scan(step, carry, jnp.arange(ts.shape[0] - 1))
    return x


def unipc(model_fn: ModelFn, objective, noise: jax.Array, ts: jax.Array) -> jax.Array:
    """UniPC-2 with B(h) = e^-h - 1 in lambda = log(alpha / sigma), data prediction.

    Step i calls the model at the predicted x_i, corrects x_i with that x0 (UniC, order of the
    step that predicted it), then predicts x_{i+1} from the corrected x_i: second order from the
    last two x0 where both steps are finite, first order on the first step, the last step (into
    t = 0, lower_order_final) and wherever a step out of pure noise makes lambda infinite. The
    last prediction is not corrected (that would take one more model call).
    """
    n = ts.shape[0] - 1

    def lam(a, s):
        return _log_snr_half(a, s)

    def step(carry, i):
        # x: the predicted x_i; x_last: the corrected x_{i-1}; m1, m2: x0 at steps i-1, i-2.
        x, x_last, m1, m2 = carry
        t_prev2, t_prev, t, t_next = (
            ts[jnp.maximum(i - 2, 0)],
            ts[jnp.maximum(i - 1, 0)],
            ts[i],
            ts[i + 1],
        )
        (a2, s2), (a1, s1) = objective.alpha_sigma(t_prev2), objective.alpha_sigma(t_prev)
        (a, s), (a_n, s_n) = objective.alpha_sigma(t), objective.alpha_sigma(t_next)
        l2, l1, l0, l_n = lam(a2, s2), lam(a1, s1), lam(a, s), lam(a_n, s_n)
        m0, _ = objective.to_x0_eps(model_fn(x, t), x, t)

        # UniC on x_i, from x_{i-1} with (m1, m2) and the new m0. Its order is the order the
        # predictor of step i - 1 used: 2 from step 2 on where lambda_{i-2} is finite.
        h = l0 - l1
        phi = jnp.expm1(-h)  # -1 where the step is infinite (out of noise, into data)
        hh = -h
        b1 = (phi / hh - 1.0) / phi
        b2 = 2.0 * ((phi / hh - 1.0) / hh - 0.5) / phi
        second_c = (i >= 2) & jnp.isfinite(l2) & (i - 1 < n - 1)
        rk = jnp.where(second_c, (l2 - l1) / jnp.where(second_c, h, 1.0), -1.0)
        rho0 = jnp.where(second_c, (b1 - b2) / (1.0 - rk), 0.0)
        rho1 = jnp.where(second_c, b1 - rho0, 0.5)
        d1 = jnp.where(second_c, (m2 - m1) / rk, 0.0)
        corrected = (s / s1) * x_last - a * phi * m1 - a * phi * (rho0 * d1 + rho1 * (m0 - m1))
        x = jnp.where(i > 0, corrected, x)

        # Predictor from x_i to x_{i+1}: rho = 1/2 on the difference with the previous x0.
        h_n = l_n - l0
        phi_n = jnp.expm1(-h_n)
        second_p = (i >= 1) & jnp.isfinite(l1) & (i < n - 1)
        rk_n = jnp.where(second_p, (l1 - l0) / jnp.where(second_p, h_n, 1.0), 1.0)
        d1_n = jnp.where(second_p, (m1 - m0) / rk_n, 0.0)
        x_next = (s_n / s) * x - a_n * phi_n * m0 - a_n * phi_n * 0.5 * d1_n
        return (x_next, x, m0, m1), None

    zeros = jnp.zeros_like(noise)
    (x, _, _, _), _ = jax.lax.scan(step, (noise, zeros, zeros, zeros), jnp.arange(n))
    return x


def sample(
    sampler: str,
    model_fn: ModelFn,
    objective,
    noise: jax.Array,
    ts: jax.Array,
    *,
    eta: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Runs the named sampler; `eta` and `rng` are used by 'ddim' only."""
    if sampler == "euler":
        return euler(model_fn, objective, noise, ts)
    if sampler == "heun":
        return heun(model_fn, objective, noise, ts)
    if sampler == "ddim":
        return ddim(model_fn, objective, noise, ts, eta, rng)
    if sampler == "dpmpp_2m":
        return dpmpp_2m(model_fn, objective, noise, ts)
    if sampler == "unipc":
        return unipc(model_fn, objective, noise, ts)
    raise ValueError(f"unknown sampler {sampler!r}: use one of {SAMPLERS}")


def validate_sample_config(config):
    """Checks config.sample.* and config.eval.* (what sampling and the prompt-following
    evaluation generate); the VAE and DiT sections must be valid already."""
    s = config.sample
    geometry.check_size(config, "sample", s.num_frames, s.height, s.width)
    cc.one_of(config, "sample.image_prompt", IMAGE_PROMPTS)
    if s.mesh not in ("", "config"):
        try:
            mesh_lib.parse_sizes(s.mesh)
        except ValueError as e:
            cc.check(False, "sample.mesh", s.mesh, f"'' (one device), 'config' or {e}")
    cc.positive(config, "eval.num_prompts")

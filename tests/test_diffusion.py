"""Objectives and samplers, checked against exact denoisers of known distributions.

For a Gaussian and a 2-Gaussian mixture in 4 dimensions the optimal model output of every
objective has a closed form (sora_jax.diffusion.analytic), so a correct sampler must
reproduce the target's mean and covariance, and its error must fall as the steps grow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import _fixed_dit_batch, _parent, micro_config

from sora_jax import config as config_lib
from sora_jax.diffusion import analytic, ddpm, guidance, samplers
from sora_jax.diffusion import objectives as obj
from sora_jax.diffusion import rectified_flow as rf
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, vae_trainer
from sora_jax.training import train_state as ts
from sora_jax.inference import loader
from sora_jax.models import builders

D, N = 4, 20_000


def _gaussian():
    a = np.random.default_rng(0).normal(size=(D, D)) * 0.5
    cov = a @ a.T + 0.1 * np.eye(D)
    return analytic.GaussianMixture(np.array([1.0]), np.array([[1.0, -0.5, 0.3, 2.0]]), cov[None])


TARGETS = {"gaussian": _gaussian(), "mixture": analytic.two_gaussians()}
FLOW = obj.RectifiedFlow()
DDPM_VARIANTS = {
    "eps-linear": obj.DDPM(prediction="eps"),
    "x0-cosine": obj.DDPM(prediction="x0", schedule="cosine"),
    "v-scaled-linear-ztsnr": obj.DDPM(
        prediction="v",
        schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        zero_terminal_snr=True,
    ),
}
NOISE = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (N, D)))
# Moment error of N exact samples: the Monte Carlo floor every tolerance sits above.
FLOOR = {
    k: analytic.moment_error(t.sample(np.random.default_rng(2), N), t) for k, t in TARGETS.items()
}


def run(target, objective, sampler, steps, spacing="uniform", eta=0.0, rng=None, noise=NOISE):
    ts_ = samplers.time_grid(objective, steps, spacing)
    fn = jax.jit(
        lambda z, key: samplers.sample(
            sampler, target.model_fn(objective), objective, z, ts_, eta=eta, rng=key
        )
    )
    return np.asarray(fn(jnp.asarray(noise), rng if rng is not None else jax.random.PRNGKey(0)))


def err(target, x):
    return analytic.moment_error(x, target)


# ------------------------------------------------------------------ samplers vs targets

# Steps at which each sampler is converged to within the Monte Carlo floor (first-order
# samplers need many more).
CONVERGED = {"euler": 200, "heun": 20, "ddim": 200, "dpmpp_2m": 30, "unipc": 20}


@pytest.mark.parametrize("target_name", ["gaussian", "mixture"])
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_flow_samplers_reproduce_target(target_name, sampler):
    target = TARGETS[target_name]
    x = run(target, FLOW, sampler, CONVERGED[sampler])
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(0), target.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), target.cov, atol=0.12)
    assert err(target, x) < FLOOR[target_name] + 0.06, (err(target, x), FLOOR[target_name])
    if target_name == "mixture":
        # Both modes are kept with their weights (assign samples to the likelier component).
        x0, _ = target.posterior(jnp.asarray(x), 1.0, 0.0)
        near0 = np.linalg.norm(x - target.means[0], axis=1) < np.linalg.norm(
            x - target.means[1], axis=1
        )
        assert abs(near0.mean() - 0.3) < 0.03, near0.mean()
        np.testing.assert_allclose(np.asarray(x0), x, atol=1e-3)  # the denoiser at t=0 is x


def test_flow_error_falls_with_steps():
    """Distribution error (above the Monte Carlo floor) and discretisation error (RMS distance
    to a 200-step Heun solution from the same noise) both fall with steps and order."""
    target = TARGETS["mixture"]
    ref = run(target, FLOW, "heun", 200)
    runs = [("euler", 10), ("euler", 50), ("heun", 10), ("dpmpp_2m", 10), ("unipc", 10)]
    x = {k: run(target, FLOW, *k) for k in runs}
    dist = {k: err(target, v) - FLOOR["mixture"] for k, v in x.items()}
    ode = {k: float(np.sqrt(np.mean((v - ref) ** 2))) for k, v in x.items()}
    for e in (dist, ode):
        assert e["euler", 50] < 0.5 * e["euler", 10], e
        assert e["heun", 10] < 0.25 * e["euler", 10], e
    # DPM-Solver++ takes one model call per step (Heun two); its first steps out of pure noise
    # are first order (the step in log-SNR is infinite), so it gains less at 10 steps.
    assert dist["dpmpp_2m", 10] < 0.3 * dist["euler", 10], dist
    assert ode["dpmpp_2m", 10] < 0.6 * ode["euler", 10], ode
    # UniPC's corrector reuses the model call of the next step, so it stays one call per step
    # and still beats DPM-Solver++ at 10 steps.
    assert dist["unipc", 10] < 0.5 * dist["dpmpp_2m", 10], dist
    assert ode["unipc", 10] < 0.5 * ode["dpmpp_2m", 10], ode


@pytest.mark.parametrize("variant", DDPM_VARIANTS)
def test_ddpm_samplers_reproduce_target_and_converge(variant):
    objective, target = DDPM_VARIANTS[variant], TARGETS["mixture"]
    for sampler in ("heun", "dpmpp_2m"):
        x = run(target, objective, sampler, 50)
        assert err(target, x) < FLOOR["mixture"] + 0.06, (sampler, err(target, x))
    e10 = {s: err(target, run(target, objective, s, 10)) for s in ("euler", "dpmpp_2m")}
    assert e10["dpmpp_2m"] < 0.5 * e10["euler"], e10


def test_euler_is_ddim_on_the_flow_path_and_ddim_eta0_ignores_rng():
    target = TARGETS["gaussian"]
    a = run(target, FLOW, "euler", 8)
    b = run(target, FLOW, "ddim", 8, rng=jax.random.PRNGKey(1))
    c = run(target, FLOW, "ddim", 8, rng=jax.random.PRNGKey(2))
    np.testing.assert_allclose(a, b, atol=2e-5)
    np.testing.assert_array_equal(b, c)


@pytest.mark.parametrize("objective", [FLOW, DDPM_VARIANTS["v-scaled-linear-ztsnr"]])
def test_stochastic_ddim_matches_target_and_is_seeded(objective):
    target = TARGETS["mixture"]
    x = run(target, objective, "ddim", 200, eta=1.0, rng=jax.random.PRNGKey(3))
    assert err(target, x) < FLOOR["mixture"] + 0.08, err(target, x)
    small = NOISE[:256]
    same = [run(target, objective, "ddim", 5, eta=0.5, rng=jax.random.PRNGKey(4), noise=small)]
    same.append(run(target, objective, "ddim", 5, eta=0.5, rng=jax.random.PRNGKey(4), noise=small))
    other = run(target, objective, "ddim", 5, eta=0.5, rng=jax.random.PRNGKey(5), noise=small)
    np.testing.assert_array_equal(same[0], same[1])
    assert np.abs(other - same[0]).mean() > 1e-2


# ------------------------------------------------------------------------- time grids


@pytest.mark.parametrize("objective", [FLOW, *DDPM_VARIANTS.values()], ids=lambda o: o.name)
@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_time_grids_run_from_noise_to_data(objective, spacing):
    for steps in (1, 7, 30):
        grid = np.asarray(samplers.time_grid(objective, steps, spacing, shift=3.0))
        # flow_match starts a hair below 1 (as diffusers' grid does) so log-SNR stays finite.
        start = 1.0 - 1e-6 if spacing == "flow_match" else 1.0
        assert grid.shape == (steps + 1,) and grid[-1] == 0.0
        np.testing.assert_allclose(grid[0], start, rtol=0, atol=1e-7)
        assert np.all(np.diff(grid) < 0), grid
    uniform = samplers.time_grid(objective, 10, "uniform")
    shifted = samplers.time_grid(objective, 10, "shifted", shift=3.0)
    assert np.all(np.asarray(shifted)[1:-1] > np.asarray(uniform)[1:-1])


def test_time_shift_and_token_dependent_shift():
    t = jnp.linspace(0.0, 1.0, 101)
    for s in (0.5, 1.0, 3.0):
        y = rf.shift_time(t, s)
        assert float(y[0]) == 0.0 and float(y[-1]) == 1.0
        assert np.all(np.diff(np.asarray(y)) > 0)
    np.testing.assert_allclose(rf.shift_time(t, 1.0), t)
    shifts = [rf.token_shift(n, 1.0, 256, 4.0) for n in (16, 64, 256, 1024, 4096, 10**6)]
    assert shifts == sorted(shifts) and shifts[2] == 1.0 and shifts[3] == 2.0
    assert shifts[0] == 0.25 and shifts[-1] == 4.0  # clipped to [1/shift_max, shift_max]
    arr = rf.token_shift(jnp.array([64.0, 1024.0]), 1.0, 256, 4.0)
    np.testing.assert_allclose(arr, [0.5, 2.0])
    fixed = obj.TimeSampling(shift_mode="fixed", time_shift=3.0)
    tokens = obj.TimeSampling(shift_mode="tokens", time_shift=1.0, shift_base_tokens=100)
    assert fixed.shift(10) == fixed.shift(10_000) == 3.0
    assert tokens.shift(400) == 2.0 and tokens.shift(100) == 1.0


def test_timestep_distributions():
    key = jax.random.PRNGKey(0)
    shape = (50_000,)
    for kind in rf.TIMESTEP_SAMPLINGS:
        t = np.asarray(rf.sample_timesteps(key, shape, kind))
        assert t.min() > 0 and t.max() < 1, kind
    uniform = np.asarray(rf.sample_timesteps(key, shape, "uniform"))
    mode0 = np.asarray(rf.sample_timesteps(key, shape, "mode", mode_scale=0.0))
    mode = np.asarray(rf.sample_timesteps(key, shape, "mode", mode_scale=1.29))
    assert abs(mode0.mean() - 0.5) < 0.01 and abs(mode0.std() - uniform.std()) < 0.01
    assert mode.std() < 0.8 * uniform.std() and abs(np.median(mode) - 0.5) < 0.01
    # Token shift in training: more tokens -> noisier training times, per segment.
    ts_ = obj.TimeSampling(kind="uniform", shift_mode="tokens", shift_in_training=True)
    t = ts_.sample(key, (2, 20_000), jnp.array([[64.0], [1024.0]]))
    assert float(jnp.median(t[1])) > float(jnp.median(t[0])) + 0.2
    # DDPM rounds up to its discrete steps 1..T.
    d = obj.DDPM(time=obj.TimeSampling(kind="uniform"), num_train_steps=50)
    steps = np.asarray(d.sample_t(key, shape)) * 50
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert steps.min() >= 1 and steps.max() <= 50 and len(np.unique(np.round(steps))) == 50


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("schedule", ddpm.SCHEDULES)
def test_schedules_and_zero_terminal_snr(schedule):
    kw = dict(beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" else {}
    ac = ddpm.alphas_cumprod(schedule, 1000, **kw)
    assert np.all(np.diff(ac) < 0) and 0 < ac[-1] < ac[0] < 1
    zt = ddpm.alphas_cumprod(schedule, 1000, zero_terminal_snr=True, **kw)
    assert zt[-1] == 0.0 and np.all(np.diff(zt) < 0)
    np.testing.assert_allclose(zt[0], ac[0], rtol=1e-12)  # first step unchanged
    o = obj.DDPM(schedule=schedule, zero_terminal_snr=True, prediction="v", **kw)
    a, s = o.alpha_sigma(jnp.array([0.0, 1.0]))
    assert float(a[1]) == 0.0 and float(ddpm.snr(a[1], s[1])) == 0.0  # exactly 0 final SNR
    assert float(a[0]) == 1.0 and float(s[0]) == 0.0  # t = 0 is clean data
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
    # Discrete steps are read exactly from the table.
    step = jnp.array([1, 500, 999]) / 1000
    np.testing.assert_allclose(o.alpha_sigma(step)[0] ** 2, zt[[0, 499, 998]], rtol=1e-5, atol=1e-9)


def test_ddpm_parametrisations_round_trip():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k1, (64, D))
    eps = jax.random.normal(k2, (64, D))
    t = jax.random.uniform(k3, (64, 1), minval=0.01, maxval=0.99)
    for objective in [FLOW, *DDPM_VARIANTS.values()]:
        x_t = objective.corrupt(x0, eps, t)
        out = objective.target(x0, eps, t)
        got_x0, got_eps = objective.to_x0_eps(out, x_t, t)
        np.testing.assert_allclose(got_x0, x0, atol=2e-4, err_msg=objective.name)
        np.testing.assert_allclose(got_eps, eps, atol=2e-4, err_msg=objective.name)
        # The flow rescaling of the path: x_t = c y with y = (1 - tau) x0 + tau eps.
        c, tau = objective.flow_time(t)
        np.testing.assert_allclose(x_t / c, (1 - tau) * x0 + tau * eps, atol=2e-5)
        np.testing.assert_allclose(objective.flow_velocity(out, x_t, t), eps - x0, atol=2e-4)
    a, s = DDPM_VARIANTS["eps-linear"].alpha_sigma(t)
    for p in ddpm.PREDICTIONS:
        out = ddpm.from_x0_eps(p, x0, eps, a, s)
        x_t = a * x0 + s * eps
        for q in ddpm.PREDICTIONS:  # any parametrisation converts to any other
            x0_, eps_ = ddpm.to_x0_eps(p, out, x_t, a, s)
            np.testing.assert_allclose(
                ddpm.from_x0_eps(q, x0_, eps_, a, s), ddpm.from_x0_eps(q, x0, eps, a, s), atol=2e-4
            )
    np.testing.assert_allclose(ddpm.from_x0_eps("v", x0, eps, a, s), a * eps - s * x0)


def test_min_snr_weights():
    # SNR = alpha^2 / sigma^2 = 10 and 2, gamma = 5.
    snr = jnp.array([10.0, 2.0])
    a, s = jnp.sqrt(snr / (1 + snr)), jnp.sqrt(1 / (1 + snr))
    want = {"eps": [0.5, 1.0], "x0": [5.0, 2.0], "v": [5.0 / 11.0, 2.0 / 3.0]}
    for p, w in want.items():
        np.testing.assert_allclose(ddpm.min_snr_weight(p, a, s, 5.0), w, rtol=1e-5)
        np.testing.assert_array_equal(ddpm.min_snr_weight(p, a, s, 0.0), [1.0, 1.0])
    # Zero terminal SNR: v keeps a finite weight (0), no NaN.
    w = ddpm.min_snr_weight("v", jnp.array(0.0), jnp.array(1.0), 5.0)
    assert float(w) == 0.0


# ------------------------------------------------------------------------- guidance


def test_classifier_free_guidance():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    cond = jax.random.normal(k1, (3, 10, 4))
    uncond = jax.random.normal(k2, (3, 10, 4))
    t = jnp.float32(0.5)
    np.testing.assert_allclose(guidance.guide(cond, uncond, t, 1.0), cond, atol=1e-6)
    plain = uncond + 4.0 * (cond - uncond)
    np.testing.assert_allclose(guidance.guide(cond, uncond, t, 4.0), plain, atol=1e-6)
    np.testing.assert_array_equal(
        guidance.guide(cond, uncond, t, 4.0, rescale=0.0), guidance.guide(cond, uncond, t, 4.0)
    )
    for outside in ((0.6, 1.0), (0.0, 0.4)):
        np.testing.assert_array_equal(guidance.guide(cond, uncond, t, 4.0, outside), cond)
    np.testing.assert_allclose(guidance.guide(cond, uncond, t, 4.0, (0.5, 0.5)), plain, atol=1e-6)
    full = guidance.guide(cond, uncond, t, 4.0, rescale=1.0)  # std pulled back to cond's
    np.testing.assert_allclose(jnp.std(full, axis=(1, 2)), jnp.std(cond, axis=(1, 2)), rtol=1e-5)
    half = guidance.guide(cond, uncond, t, 4.0, rescale=0.5)
    np.testing.assert_allclose(half, 0.5 * full + 0.5 * plain, atol=1e-5)


# --------------------------------------------------------------------- DiT and pipeline


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_tiny_dit_ddpm_train_step_reduces_loss(prediction):
    c = micro_config()
    c.diffusion.objective = "ddpm"
    c.diffusion.ddpm.prediction = prediction
    c.diffusion.ddpm.min_snr_gamma = 5.0 if prediction == "v" else 0.0
    config_lib.validate(c)
    text, batch = _fixed_dit_batch(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
    losses = []
    for _ in range(12):
        state, m = step(state, batch, jax.random.PRNGKey(0))
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.93 * losses[0], losses


def random_pipeline(c):
    """A pipeline over freshly initialised (randomly perturbed) VAE and DiT params."""
    mesh = mesh_lib.create_mesh(1)
    vae = builders.build_vae(c)
    vae_params = vae_trainer.init_state(c, vae, ts.make_optimizer(c.vae.train), mesh).params
    text = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text.dim)
    ch = c.vae.model.latent_channels
    state = dit_trainer.init_state(
        c,
        dit,
        text,
        ts.make_optimizer(c.dit.train),
        mesh,
        dit_trainer._extras(np.zeros(ch, np.float32), np.ones(ch, np.float32)),
    )
    # adaLN-Zero makes a fresh DiT output zeros: perturb so the sampler has work to do.
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    params = jax.tree.unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )
    model = loader.InferenceModel(
        config=c,
        vae=vae,
        vae_params=vae_params,
        dit=dit,
        text_encoder=text,
        params=params,
        latent_mean=np.zeros(ch, np.float32),
        latent_std=np.ones(ch, np.float32),
        name="random",
    )
    return pipeline_lib.Pipeline(model)


@pytest.mark.parametrize("objective", ["rectified_flow", "ddpm"])
def test_pipeline_samples_with_each_sampler(objective, monkeypatch):
    c = micro_config()
    c.diffusion.objective = objective
    c.diffusion.ddpm.prediction = "v"
    pipe = random_pipeline(config_lib.validate(c))
    real = pipeline_lib._decode
    finite = []

    def decode(vae, inference_cfg, patch, grid, vae_params, tokens, *stats):
        finite.append(bool(jnp.all(jnp.isfinite(tokens))))
        return real(vae, inference_cfg, patch, grid, vae_params, tokens, *stats)

    monkeypatch.setattr(pipeline_lib, "_decode", decode)
    prompts = ["a small blue square moves up quickly on a black background"] * 2
    runs = {
        "euler": {},
        "heun": {"guidance_interval": (0.2, 0.8), "guidance_rescale": 0.7},
        "ddim": {"eta": 0.5},
        "dpmpp_2m": {"spacing": "karras"},
    }
    videos = {}
    for sampler, extra in runs.items():
        kw = dict(num_frames=5, height=16, width=16, sampler=sampler, steps=3, **extra)
        a = pipe.generate(prompts, seed=1, **kw)
        assert a.shape == (2, 5, 16, 16, 3) and a.dtype == np.uint8 and all(finite), sampler
        np.testing.assert_array_equal(a, pipe.generate(prompts, seed=1, **kw), err_msg=sampler)
        other = pipe.generate(prompts, seed=2, **kw)
        assert np.abs(a.astype(int) - other.astype(int)).mean() > 0.1, sampler
        videos[sampler] = a
    assert np.abs(videos["euler"].astype(int) - videos["heun"].astype(int)).mean() > 0.1
    with pytest.raises(ValueError, match="config.diffusion.sampler='rk4'"):
        pipe.generate(prompts, num_frames=5, height=16, width=16, sampler="rk4")


def test_bad_objective_and_sampler_config_errors_name_the_key():
    bad = {
        "diffusion.objective": ("score", "config.diffusion.objective='score'"),
        "diffusion.sampler": ("rk4", "config.diffusion.sampler='rk4'"),
        "diffusion.spacing": ("log", "config.diffusion.spacing='log'"),
        "diffusion.timestep_sampling": ("beta", "config.diffusion.timestep_sampling='beta'"),
        "diffusion.shift_mode": ("pixels", "config.diffusion.shift_mode='pixels'"),
        "diffusion.ddpm.prediction": ("score", "config.diffusion.ddpm.prediction='score'"),
        "diffusion.ddpm.schedule": ("sigmoid", "config.diffusion.ddpm.schedule='sigmoid'"),
        "diffusion.ddim_eta": (1.5, "config.diffusion.ddim_eta=1.5"),
        "diffusion.guidance_interval": ((0.8, 0.2), "config.diffusion.guidance_interval"),
        "diffusion.guidance_rescale": (2.0, "config.diffusion.guidance_rescale=2.0"),
        "diffusion.mode_scale": (3.0, "config.diffusion.mode_scale=3.0"),
        "diffusion.ddpm.beta_end": (1e-5, "config.diffusion.ddpm.beta_start"),
    }
    for key, (value, message) in bad.items():
        c = micro_config()
        node, leaf = _parent(c, key)
        with node.ignore_type():
            node[leaf] = value
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config_lib.validate(c)
    c = micro_config()
    c.diffusion.ddpm.zero_terminal_snr = True  # eps cannot denoise pure noise
    with pytest.raises(ValueError, match="config.diffusion.ddpm.prediction='eps'"):
        config_lib.validate(c)

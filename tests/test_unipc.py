"""UniPC against diffusers' UniPCMultistepScheduler as Wan configures it (flow sigmas with a
time shift, flow prediction, order 2, bh2), on a fixed nonlinear velocity field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import objectives, samplers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def velocity(x, t, tanh):
    """A smooth field that depends on x and t (numpy, jax or torch through `tanh`)."""
    return 0.6 * x - 0.9 * tanh(1.5 * x + t) + 0.3 * t


def diffusers_unipc(noise, steps, shift):
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
        lower_order_final=True,
    )
    sched.set_timesteps(steps)
    x = torch.from_numpy(noise)
    for i, step_t in enumerate(sched.timesteps):
        out = velocity(x, sched.sigmas[i], torch.tanh)
        x = sched.step(out, step_t, x).prev_sample
    return x.numpy(), sched.sigmas.numpy()


@pytest.mark.parametrize("steps,shift", [(2, 1.0), (5, 3.0), (12, 5.0), (30, 3.0)])
def test_unipc_matches_diffusers(steps, shift):
    noise = np.random.default_rng(steps).standard_normal((3, 5, 4)).astype(np.float32)
    want, sigmas = diffusers_unipc(noise, steps, shift)
    objective = objectives.RectifiedFlow()
    ts = samplers.time_grid(objective, steps, "flow_match", shift=shift)
    np.testing.assert_allclose(np.asarray(ts), sigmas, rtol=0, atol=1e-7)
    got = jax.jit(
        lambda z: samplers.sample("unipc", lambda x, t: velocity(x, t, jnp.tanh), objective, z, ts)
    )(noise)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0)
    # Not trivially so: Euler on the same grid lands elsewhere.
    euler = samplers.sample("euler", lambda x, t: velocity(x, t, jnp.tanh), objective, noise, ts)
    if steps > 2:
        assert np.abs(np.asarray(euler) - want).max() > 50 * np.abs(np.asarray(got) - want).max()

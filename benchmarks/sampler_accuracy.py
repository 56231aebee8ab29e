"""How accurate is each sampler, per step count, on a target whose exact denoiser is known?

  python benchmarks/sampler_accuracy.py [--samples=20000] [--spacing=uniform]

The target is a 4-d mixture of two anisotropic Gaussians (sora_jax.diffusion.analytic), so the
optimal model output of each objective has a closed form and every error is the sampler's own.
For each objective and sampler, at 5/10/20/50 steps, prints
  w2:  2-Wasserstein distance between Gaussians with the samples' and the target's mean and
       covariance (distribution error; exact samples of the same size score the 'floor');
  ode: RMS distance to a 500-step Heun solution from the same noise (discretisation error
       of the deterministic samplers; '-' for stochastic DDIM).
and the ratios DPM-Solver++ 2M @ 10 steps / Euler @ 50 steps.
"""

import argparse
import time

import jax
import numpy as np

from sora_jax.diffusion import analytic, samplers
from sora_jax.diffusion import objectives as obj

STEPS = (5, 10, 20, 50)
SAMPLERS = {  # name -> (sampler, eta, model calls per step)
    "euler": ("euler", 0.0, 1),
    "heun": ("heun", 0.0, 2),
    "ddim eta=0": ("ddim", 0.0, 1),
    "ddim eta=1": ("ddim", 1.0, 1),
    "dpmpp_2m": ("dpmpp_2m", 0.0, 1),
}
OBJECTIVES = {
    "rectified_flow": obj.RectifiedFlow(),
    "ddpm eps (linear)": obj.DDPM(prediction="eps"),
    "ddpm v (scaled_linear, zero terminal SNR)": obj.DDPM(
        prediction="v",
        schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        zero_terminal_snr=True,
    ),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--spacing", default="uniform", choices=samplers.SPACINGS)
    args = p.parse_args()
    target = analytic.two_gaussians()
    noise = jax.random.normal(jax.random.PRNGKey(0), (args.samples, 4))
    floor = analytic.gaussian_w2(target.sample(np.random.default_rng(0), args.samples), target)
    print(f"target: 4-d mixture of 2 Gaussians; {args.samples} samples; spacing {args.spacing}")
    print(f"floor (exact samples): w2 {floor:.4f}\n")
    start = time.time()
    for name, objective in OBJECTIVES.items():

        def run(sampler, steps, eta=0.0, spacing=args.spacing):
            ts = samplers.time_grid(objective, steps, spacing)
            fn = jax.jit(
                lambda z, key: samplers.sample(
                    sampler, target.model_fn(objective), objective, z, ts, eta=eta, rng=key
                )
            )
            return np.asarray(fn(noise, jax.random.PRNGKey(1)))

        ref = run("heun", 500, spacing="uniform")
        print(f"## {name}")
        print("| sampler | calls/step | " + " | ".join(f"{n} steps w2 / ode" for n in STEPS) + " |")
        print("| --- | --- |" + " --- |" * len(STEPS))
        results = {}
        for label, (sampler, eta, calls) in SAMPLERS.items():
            cells = []
            for n in STEPS:
                x = run(sampler, n, eta)
                w2 = analytic.gaussian_w2(x, target)
                ode = float(np.sqrt(np.mean((x - ref) ** 2))) if eta == 0 else float("nan")
                results[label, n] = (w2, ode)
                cells.append(f"{w2:.4f} / " + ("-" if eta else f"{ode:.4f}"))
            print(f"| {label} | {calls} | " + " | ".join(cells) + " |")
        (w_d, o_d), (w_e, o_e) = results["dpmpp_2m", 10], results["euler", 50]
        print(
            f"\nDPM-Solver++ 2M @10 / Euler @50: w2 {w_d / w_e:.2f}, ode {o_d / o_e:.2f}; "
            f"DPM-Solver++ 2M @10 / Euler @10: w2 {w_d / results['euler', 10][0]:.2f}, "
            f"ode {o_d / results['euler', 10][1]:.2f}\n"
        )
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()

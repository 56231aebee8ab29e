"""Peak memory and time of VAE decode vs video length: chunked (causal cache) vs full.

  PYTHONPATH=. python benchmarks/vae_memory.py [--config=configs/default.py --height=64
      --width=64 --frames=17,33,65,129 --chunk_latent_frames=4]

Each (mode, length) runs in its own subprocess (a fresh heap, so peak RSS is that run's) and
reports: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the child), the
RSS just before the decode is compiled (params + runtime: the baseline), XLA's compiled memory
analysis of the decode program (temp = working buffers, output) and compile / run time (the
best of ``--repeats`` runs). Weights are random: memory and time do not depend on them. The
summary prints peak(longest) / peak(shortest) for both modes (target: chunked <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> dict:
    import jax
    import jax.numpy as jnp

    from sora_jax import config as config_lib
    from sora_jax.models import builders, vae_inference

    config = config_lib.load(args.config)
    model = builders.build_vae(config)
    t_lat, h_lat, w_lat, c = model.latent_shape(args.frames, args.height, args.width)
    x1 = jnp.zeros((1, 1, args.height, args.width, 3))
    init = jax.jit(lambda k: model.init({"params": k}, x1, sample_posterior=False)["params"])
    params = init(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (1, t_lat, h_lat, w_lat, c))
    if args.mode == "chunked":  # always chunked (config.vae.inference skips one-chunk videos)
        fn = jax.jit(
            lambda p, z: vae_inference.chunked_decode(model, p, z, args.chunk_latent_frames)
        )
    else:
        fn = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
    base = _rss_mib()
    t0 = time.perf_counter()
    compiled = fn.lower(params, z).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compiled(params, z).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {
        "mode": args.mode,
        "frames": args.frames,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mib": base,
        "xla_temp_mib": mem.temp_size_in_bytes / 2**20,
        "xla_output_mib": mem.output_size_in_bytes / 2**20,
        "xla_argument_mib": mem.argument_size_in_bytes / 2**20,
        "compile_s": compile_s,
        "decode_s": min(times),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", default="17,33,65,129")
    p.add_argument("--chunk_latent_frames", type=int, default=4)
    p.add_argument("--modes", default="chunked,full")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--mode", help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args()
    if args.mode:
        args.frames = int(args.frames)
        print("RESULT " + json.dumps(child(args)))
        return
    rows = []
    for mode in args.modes.split(","):
        for frames in (int(f) for f in args.frames.split(",")):
            cmd = [sys.executable, __file__, f"--mode={mode}", f"--frames={frames}"]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("config", "height", "width")]
            cmd += [f"--chunk_latent_frames={args.chunk_latent_frames}"]
            cmd += [f"--repeats={args.repeats}"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"child {mode} {frames} failed:\n{out.stderr[-3000:]}")
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            rows.append(json.loads(line[len("RESULT ") :]))
            r = rows[-1]
            print(
                f"{mode:8s} T={frames:4d}  peak RSS {r['peak_rss_mib']:8.1f} MiB  "
                f"(baseline {r['baseline_rss_mib']:7.1f})  XLA temp {r['xla_temp_mib']:8.1f} MiB"
                f"  out {r['xla_output_mib']:6.1f} MiB  compile {r['compile_s']:6.1f} s  "
                f"decode {r['decode_s']:7.2f} s",
                flush=True,
            )
    print(f"\n{args.config} at {args.height}x{args.width}, batch 1, float32:")
    for mode in args.modes.split(","):
        rs = [r for r in rows if r["mode"] == mode]
        lo, hi = rs[0], rs[-1]
        print(
            f"{mode:8s} peak RSS ratio T={hi['frames']}/T={lo['frames']}: "
            f"{hi['peak_rss_mib'] / lo['peak_rss_mib']:.2f}   "
            f"above baseline: {(hi['peak_rss_mib'] - hi['baseline_rss_mib']) / max(lo['peak_rss_mib'] - lo['baseline_rss_mib'], 1e-9):.2f}   "
            f"XLA temp ratio: {hi['xla_temp_mib'] / max(lo['xla_temp_mib'], 1e-9):.2f}   "
            f"XLA temp+output ratio: "
            f"{(hi['xla_temp_mib'] + hi['xla_output_mib']) / (lo['xla_temp_mib'] + lo['xla_output_mib']):.2f}"
        )


if __name__ == "__main__":
    main()

"""Achieved FLOP/s of the DiT train step over the same process's large-matmul FLOP/s.

  python benchmarks/dit_step.py [--config=configs/dit.py:S] [--depth=2] [--seq_len=512] \
      [--rows=2] [--dtype=float32] [--modulation=segment] [--repeats=5] [--steps_per_call=10]

The DiT is the config's (default: DiT-S width, 384, 6 heads) with depth / row shape
overridable to fit a CPU; FLOPs per step are the useful matmuls of sora_jax.models.flops
(train = 3 x forward, + the remat re-forward): adaLN per conditioning entry, attention as the
kernel executes it on the videos packed in each row. XLA's own count of the compiled step
is printed beside them (it also counts what the useful count leaves out, e.g. per-token
adaLN under --modulation=token). The reference is a jitted f32[n n] @ f32[n n] matmul.
The two are timed alternately in one process (the CPU is shared: noisy), best and median.
With --steps_per_call=k the same step also runs k per host call (one compiled loop, as
dit.train.steps_per_call trains), timed against one per call: per-step time, its ratio, and
the system CPU time per step (the step's temporary buffers mapped afresh on every call).
"""

import argparse
import dataclasses
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.models import builders
from sora_jax.models import flops as flops_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, loop
from sora_jax.training import train_state as ts


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/dit.py:S")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--modulation", default="segment", help="segment, token or shared")
    p.add_argument("--matmul", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--steps_per_call",
        type=int,
        default=0,
        help="k > 1: also time k steps per call (loop.jit_train_steps) against one per call",
    )
    args = p.parse_args()
    path, _, arg = args.config.partition(":")
    c = config_lib.load_with_arg(path, arg) if arg else config_lib.load(path)
    c.dit.model.depth, c.dit.model.dtype = args.depth, args.dtype
    c.dit.model.modulation = args.modulation
    c.dit.seq_len, c.dit.rows, c.dit.max_segments = args.seq_len, args.rows, 8
    c.data.resolutions = ((64, 64),)
    c = config_lib.validate(c)

    text = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
    step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
    # A full batch of mixed sizes packed into the rows (values do not matter for speed).
    rng = np.random.default_rng(0)
    items, used = [], 0
    while used < args.rows * args.seq_len * 0.97:
        grid = (int(rng.integers(1, 5)), int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        n = int(np.prod(grid))
        items.append((rng.standard_normal((n, dit.patch_dim)).astype(np.float32),
                      packing.grid_positions(grid)))  # fmt: skip
        used += n
    batch, placements = packing.pack(items, args.seq_len, args.rows, 8)
    ids, mask = (np.asarray(a) for a in text.tokenize(["a red circle moves right"]))
    batch["caption_ids"] = np.broadcast_to(ids, (args.rows, 8, ids.shape[1])).copy()
    batch["caption_mask"] = np.broadcast_to(mask, (args.rows, 8, ids.shape[1])).copy()
    key = jax.random.PRNGKey(0)
    compiled = step.lower(state, batch, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    step_flops = 0.0
    for row in range(args.rows):
        videos = [pl.grid for pl in placements if pl is not None and pl.row == row]
        # Useful work: adaLN once per conditioning entry whatever --modulation computes.
        f = flops_lib.dit_flops_per_token(
            dataclasses.replace(dit, modulation="segment"),
            args.seq_len,
            builders.row_text_tokens(c),
            videos=videos,
            entries=builders.adaln_entries(c),
        )
        step_flops += (f["train"] + f["remat"]) * args.seq_len
    jax.block_until_ready(compiled(state, batch, key))

    n = args.matmul
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(jnp.dot)
    jax.block_until_ready(matmul(a, b))
    t_mm, t_step = [], []
    for _ in range(args.repeats):  # interleaved
        t_mm += timed(lambda: matmul(a, b), 1)
        t_step += timed(lambda: compiled(state, batch, key), 1)
    mm = 2 * n**3 / np.array(t_mm)
    st = step_flops / np.array(t_step)
    m = c.dit.model
    print(
        f"DiT hidden={m.hidden} depth={m.depth} heads={m.num_heads} dtype={m.dtype} "
        f"remat={m.remat_policy} modulation={m.modulation}, batch {args.rows} x {args.seq_len} tokens; "
        f"params {flops_lib.param_count(state.params['dit']):,}"
    )
    print(
        f"train step FLOPs: useful matmuls {step_flops / 1e9:.1f} GFLOP, XLA count "
        f"{cost['flops'] / 1e9:.1f} GFLOP; step time best {min(t_step):.2f} s, median "
        f"{np.median(t_step):.2f} s"
    )
    print(
        f"matmul {n}x{n} f32: best {mm.max() / 1e9:.1f} GFLOP/s, median "
        f"{np.median(mm) / 1e9:.1f}; DiT step: best {st.max() / 1e9:.1f} GFLOP/s, median "
        f"{np.median(st) / 1e9:.1f}"
    )
    print(
        f"achieved / matmul FLOP/s: best/best {st.max() / mm.max():.2f}, "
        f"median/median {np.median(st) / np.median(mm):.2f}"
    )
    if args.steps_per_call > 1:
        per_call(c, dit, text, tx, batch, args.steps_per_call, args.repeats)


def per_call(c, dit, text, tx, batch, k, repeats):
    """Prints the time and system CPU time per step at k steps per call and at one step per
    call (`loop.jit_train_steps`, as the trainer runs them), interleaved."""
    mesh = mesh_lib.create_mesh(1)
    key = jax.random.PRNGKey(0)
    runs = {}
    for n in (1, k):
        state = dit_trainer.init_state(c, dit, text, tx, mesh, None)
        steps = loop.jit_train_steps(
            dit_trainer.make_train_step(c, dit, text, tx), mesh, loop.shardings_of(state),
            per_call=n,
        )  # fmt: skip
        placed = mesh_lib.shard_batch(batch, mesh)
        state = jax.block_until_ready(steps(state, [placed] * n, key, 0)[0])  # compile
        runs[n] = [steps, state, placed, [], []]
    for _ in range(repeats):
        for n, run in runs.items():
            steps, state, placed, wall, system = run
            t0, s0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
            for i in range(k // n):
                state = steps(state, [placed] * n, key, i * n)[0]
            jax.block_until_ready(state)
            wall.append((time.perf_counter() - t0) / k)
            system.append((resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0) / k)
            run[1] = state
    one, many = (np.median(runs[n][3]) for n in (1, k))
    for n in (1, k):
        print(
            f"{n:3d} step(s) per call: median {np.median(runs[n][3]) * 1e3:.1f} ms / step, best "
            f"{min(runs[n][3]) * 1e3:.1f}; system CPU {np.median(runs[n][4]) * 1e3:.1f} ms / step"
        )
    print(f"{k} steps per call / 1 per call, step time (median): {many / one:.2f}")


if __name__ == "__main__":
    main()

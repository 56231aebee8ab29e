"""Attention at video lengths: memory of the DiT train step per doubling of L, and what block
skipping saves on packed rows and factorised layouts (one run, CPU).

  python benchmarks/attention.py [--lengths=4096,8192,16384,32768] [--time_length=4096] \
      [--layout_length=8192] [--repeats=3]

1. Compiled temporary memory (``memory_analysis()``, nothing allocated) of the DiT-B train
   step (configs/dit.py:B, bf16, one packed row) at each length, with the blockwise kernel and
   with the dense-mask 'xla' attention, and the growth per doubling of L.
2. Attention alone (forward + backward, DiT-B heads: 12 x 64, float32, blockwise kernel): a
   row of 4 equal segments over one segment of the same length (ideal 0.25), and the
   factorised layout (mean of a spatial and a temporal block) over full 3D attention on one
   8 x 32 x 32 video.

Last line: ``memory_growth_per_doubling=<blockwise> packed_speedup_4seg=<1 seg / 4 seg time>``.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.kernels.segments import Segments, layout_segments
from sora_jax.models import attention as attention_lib
from sora_jax.models import builders
from sora_jax.training import dit_trainer, planning
from sora_jax.training import train_state as ts

CONFIG = "configs/dit.py"


def dit_b(seq_len: int, kernel: str):
    c = config_lib.load_with_arg(CONFIG, "B")
    c.dit.model.attention_impl = kernel
    c.dit.seq_len, c.dit.rows, c.dit.max_segments = seq_len, 1, 4
    c.data.resolutions = ((256, 256),)
    c.data.frame_choices = (1,)
    return config_lib.validate(c)


def step_temp_bytes(seq_len: int, kernel: str) -> tuple[int, float]:
    """(temporary bytes, compile seconds) of the compiled DiT-B train step on one row."""
    c = dit_b(seq_len, kernel)
    text = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    init = dit_trainer.boxed_init(c, dit, text, tx, None)
    state = nn.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    batch = planning.abstract_batch(c, dit, text)
    step = dit_trainer.make_train_step(c, dit, text, tx, text.params)
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(state, batch, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes, time.perf_counter() - t0


def timed(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


@jax.jit
def attention_step(q, k, v, segments: Segments):
    """Gradients of a loss through the blockwise kernel (ids are arguments, not constants)."""
    loss = lambda q, k, v: jnp.sum(attention_lib.attention(q, k, v, segments, "blockwise"))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def qkv(length: int):
    r = np.random.default_rng(0)
    return tuple(jnp.asarray(r.normal(size=(1, length, 12, 64)), jnp.float32) for _ in range(3))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="4096,8192,16384,32768")
    p.add_argument("--time_length", type=int, default=4096)
    p.add_argument("--layout_length", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    print("DiT-B train step, one row, bf16: compiled temporary memory (GiB)")
    temps = {}
    for kernel in ("blockwise", "xla"):
        for n in lengths:
            temps[kernel, n], secs = step_temp_bytes(n, kernel)
            print(
                f"  {kernel:9s} L={n:6d}: {temps[kernel, n] / 2**30:8.2f} GiB (compiled in {secs:.0f} s)"
            )
    growth = {}
    for kernel in ("blockwise", "xla"):
        ratios = [temps[kernel, b] / temps[kernel, a] for a, b in zip(lengths, lengths[1:])]
        growth[kernel] = max(ratios)
        print(
            f"  {kernel}: growth per doubling {', '.join(f'{r:.2f}' for r in ratios)} (max {max(ratios):.2f})"
        )

    n = args.time_length
    q, k, v = qkv(n)
    one = Segments(jnp.ones((1, n), jnp.int32))
    four = Segments(jnp.asarray(np.repeat(np.arange(1, 5), n // 4)[None], jnp.int32))
    t_one = timed(attention_step, (q, k, v, one), args.repeats)
    t_four = timed(attention_step, (q, k, v, four), args.repeats)
    print(f"attention fwd+bwd L={n}: 1 segment {t_one:.3f} s, 4 equal segments {t_four:.3f} s, "
          f"ratio {t_four / t_one:.3f} (ideal 0.25)")  # fmt: skip

    n = args.layout_length
    frames = n // 1024
    ids = jnp.ones((1, n), jnp.int32)
    pos = jnp.asarray(packing.grid_positions((frames, 32, 32))[None], jnp.int32)
    q, k, v = qkv(n)
    t_full = timed(attention_step, (q, k, v, layout_segments(ids, pos, "thw")), args.repeats)
    t_hw = timed(attention_step, (q, k, v, layout_segments(ids, pos, "hw")), args.repeats)
    t_t = timed(attention_step, (q, k, v, layout_segments(ids, pos, "t")), args.repeats)
    factorised = (t_hw + t_t) / 2
    print(f"attention fwd+bwd L={n} ({frames}x32x32): full 3D {t_full:.3f} s, spatial {t_hw:.3f} s, "
          f"temporal {t_t:.3f} s; factorised / full {factorised / t_full:.3f}")  # fmt: skip
    print(
        f"memory_growth_per_doubling={growth['blockwise']:.2f} packed_speedup_4seg={t_one / t_four:.2f}"
    )


if __name__ == "__main__":
    main()

"""Full vs LoRA fine-tuning of the DiT: compiled memory, optimizer state and step time.

  python benchmarks/finetune.py [--config=configs/dit.py:B] [--depth=4] [--seq_len=512] \
      [--rows=2] [--lora_rank=16] [--repeats=5]

The same train step (sora_jax.training.dit_trainer) is compiled for each mode: 'full' (every
parameter in the optimizer), 'freeze' (full, text and time projections frozen), 'lora' (adapters on the
attention, cross-attention and MLP layers; the base frozen). Printed per mode: trainable
parameters, optimizer-state bytes, the compiled step's argument / temporary memory
(`memory_analysis()`), step time (best / median, one process, interleaved), and each ratio to
'full' measured in the same run.
"""

import argparse
import time

import flax.linen as nn
import jax
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.models import builders
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer, finetune
from sora_jax.training import train_state as ts

MODES = ("full", "freeze", "lora")


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def _config(args, mode):
    path, _, arg = args.config.partition(":")
    c = config_lib.load_with_arg(path, arg) if arg else config_lib.load(path)
    c.dit.model.depth = args.depth
    c.dit.seq_len, c.dit.rows, c.dit.max_segments = args.seq_len, args.rows, 8
    c.data.resolutions = ((64, 64),)
    c.dit.finetune.mode = "lora" if mode == "lora" else "full"
    c.dit.finetune.freeze = "text_proj|time_mlp" if mode == "freeze" else ""
    c.dit.finetune.lora_rank = args.lora_rank
    return config_lib.validate(c)


def _batch(args, patch_dim, text):
    rng = np.random.default_rng(0)
    items, used = [], 0
    while used < args.rows * args.seq_len * 0.97:
        grid = (int(rng.integers(1, 5)), int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        n = int(np.prod(grid))
        items.append(
            (rng.standard_normal((n, patch_dim)).astype(np.float32), packing.grid_positions(grid))
        )
        used += n
    batch, _ = packing.pack(items, args.seq_len, args.rows, 8)
    ids, mask = (np.asarray(a) for a in text.tokenize(["a red circle moves right"]))
    batch["caption_ids"] = np.broadcast_to(ids, (args.rows, 8, ids.shape[1])).copy()
    batch["caption_mask"] = np.broadcast_to(mask, (args.rows, 8, ids.shape[1])).copy()
    return batch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/dit.py:B")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--lora_rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    key = jax.random.PRNGKey(0)
    runs = {}
    for mode in MODES:
        c = _config(args, mode)
        text = builders.build_text_encoder(c)
        dit = builders.build_dit(c, text.dim)
        abstract = nn.unbox(builders.abstract_dit_params(c, dit, text))
        tx = finetune.optimizer(c, ts.make_optimizer(c.dit.train), abstract)
        state = dit_trainer.init_state(c, dit, text, tx, mesh_lib.create_mesh(1), None)
        batch = _batch(args, dit.patch_dim, text)
        compiled = (
            jax.jit(dit_trainer.make_train_step(c, dit, text, tx))
            .lower(state, batch, key)
            .compile()
        )
        mem = compiled.memory_analysis()
        mask = builders.trainable_mask(c, state.params)
        leaves = jax.tree.leaves(state.params)
        trainable = (
            sum(x.size for x in leaves)
            if mask is None
            else sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m)
        )
        jax.block_until_ready(compiled(state, batch, key))
        runs[mode] = dict(
            compiled=compiled,
            state=state,
            batch=batch,
            params=sum(x.size for x in leaves),
            trainable=trainable,
            opt=_bytes(state.opt_state),
            arg=mem.argument_size_in_bytes,
            temp=mem.temp_size_in_bytes,
            times=[],
        )
    for _ in range(args.repeats):  # interleaved: the machine's load hits every mode alike
        for r in runs.values():
            t0 = time.perf_counter()
            jax.block_until_ready(r["compiled"](r["state"], r["batch"], key))
            r["times"].append(time.perf_counter() - t0)
    m = _config(args, "full").dit.model
    print(
        f"DiT hidden={m.hidden} depth={m.depth} heads={m.num_heads}, batch {args.rows} x "
        f"{args.seq_len} tokens, lora rank {args.lora_rank}"
    )
    print("| mode | trainable params | optimizer state MiB | argument MiB | temp MiB "
          "| step s best / median | vs full: opt state, argument, temp, step (median) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    full = runs["full"]
    mib = 2.0**20
    for mode, r in runs.items():
        t = np.array(r["times"])
        ft = np.median(full["times"])
        print(
            f"| {mode} | {r['trainable']:,} of {r['params']:,} | {r['opt'] / mib:.1f} | "
            f"{r['arg'] / mib:.1f} | {r['temp'] / mib:.1f} | {t.min():.2f} / {np.median(t):.2f} "
            f"| {r['opt'] / full['opt']:.3f}, {r['arg'] / full['arg']:.2f}, "
            f"{r['temp'] / full['temp']:.2f}, {np.median(t) / ft:.2f} |"
        )


if __name__ == "__main__":
    main()

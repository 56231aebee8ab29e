"""Loading a Wan transformer: time and host memory, per-slice load vs whole-file read.

  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/wan_load.py [--sizes=tiny,1.3b] \
      [--abstract=1.3b,14b] [--dir=/tmp/wan_load]

For each of --sizes it writes a diffusers ``transformer/`` folder of random bfloat16 weights
(sharded as diffusers' save_pretrained does, 10 GiB a file) and loads it as float32 params in a
fresh process each way, printing load seconds and the peak resident memory above the process's
resident memory (after imports; VmHWM - VmRSS), with the ratio to the weights' float32 bytes:

  slices   ``wan_transformer_weights.load_sharded`` onto the param shardings (one CPU device:
           every slice is the whole tensor; on a pod each host reads only its devices' part);
  whole    ``load_transformer``: the folder's tensors read whole, then converted.

For each of --abstract it builds the model's parameter shapes without any weights
(``wan_transformer.param_shapes``, what the planner and the trainer's sharded init start from)
and prints the seconds and peak memory of that.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import time

import numpy as np

TINY = dict(
    num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
    freq_dim=16, ffn_dim=48, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip
SHARD_BYTES = 10 * 2**30


def _arch(name: str) -> dict:
    from sora_jax.models import wan_presets

    return {
        "tiny": TINY,
        "1.3b": wan_presets.WAN_2_1_T2V_1_3B,
        "14b": wan_presets.WAN_2_1_T2V_14B,
    }[name]


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB. Not ru_maxrss: that survives the exec of a
    spawned child, so it would start from the parent's peak (the folder writer's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def write_folder(name: str, folder: str) -> int:
    """A transformer folder of random bf16 weights; returns the parameter count."""
    import ml_dtypes
    import safetensors.numpy

    from sora_jax.models import wan_transformer as wt
    from sora_jax.models import wan_transformer_weights as ww

    cfg = wt.WanTransformerConfig.from_diffusers(_arch(name))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ww.CONFIG_NAME), "w") as f:
        json.dump(cfg.to_diffusers(), f)
    rng = np.random.default_rng(0)
    shards, weight_map, size, count = [{}], {}, 0, 0
    stem, ext = ww.WEIGHTS_NAME.rsplit(".", 1)

    def flush():
        path = f"{stem}-{len(set(weight_map.values())) + 1:05d}.{ext}"
        safetensors.numpy.save_file(shards[-1], os.path.join(folder, path), {"format": "pt"})
        weight_map.update({k: path for k in shards[-1]})
        shards[-1] = {}

    for e in ww.weight_table(cfg):
        n = math.prod(e.torch_shape)
        count += n
        if shards[-1] and size + 2 * n > SHARD_BYTES:
            flush()
            size = 0
        x = rng.standard_normal(n, dtype=np.float32) * 0.02
        shards[-1][e.key] = x.astype(ml_dtypes.bfloat16).reshape(e.torch_shape)
        size += 2 * n
    flush()
    index = {"metadata": {"total_size": 2 * count}, "weight_map": weight_map}
    with open(os.path.join(folder, ww.INDEX_NAME), "w") as f:
        json.dump(index, f)
    return count


def _measure(kind: str, folder: str, name: str, out):
    import flax.linen as nn
    import jax

    from sora_jax.models import wan_transformer as wt
    from sora_jax.models import wan_transformer_weights as ww

    jax.devices()  # the backend's own memory is part of the baseline
    base = _status_mib("VmRSS")
    start = time.perf_counter()
    if kind == "abstract":
        shapes = wt.param_shapes(
            wt.WanTransformer(wt.WanTransformerConfig.from_diffusers(_arch(name)))
        )
        leaves = jax.tree.leaves(nn.unbox(shapes))
    elif kind == "slices":
        cfg = json.load(open(os.path.join(folder, ww.CONFIG_NAME)))
        model = wt.WanTransformer.from_diffusers_config(cfg)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
            nn.unbox(wt.param_shapes(model)),
        )
        leaves = jax.tree.leaves(jax.block_until_ready(ww.load_sharded(folder, target)))
    else:
        leaves = jax.tree.leaves(jax.block_until_ready(ww.load_transformer(folder)[1]))
    seconds = time.perf_counter() - start
    out.put((seconds, _status_mib("VmHWM") - base, sum(math.prod(x.shape) for x in leaves)))


def measure(kind: str, folder: str = "", name: str = "") -> tuple[float, float, int]:
    """(seconds, peak MiB above baseline, params) of one load in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, folder, name, out))
    p.start()
    result = out.get()
    p.join()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="tiny,1.3b")
    p.add_argument("--abstract", default="1.3b,14b")
    p.add_argument("--dir", default="/tmp/wan_load")
    args = p.parse_args()
    print("model | weights | load | seconds | peak host MiB above baseline | peak / f32 params")
    for name in filter(None, args.sizes.split(",")):
        folder = os.path.join(args.dir, name)
        shutil.rmtree(folder, ignore_errors=True)
        count = write_folder(name, folder)
        f32_mib = 4 * count / 2**20
        for kind in ("slices", "whole"):
            seconds, mib, n = measure(kind, folder)
            assert n == count, (n, count)
            print(f"{name} | {count:,} bf16 | {kind} | {seconds:.2f} | {mib:,.0f} | "
                  f"{mib / f32_mib:.2f}", flush=True)  # fmt: skip
        shutil.rmtree(folder)
    for name in filter(None, args.abstract.split(",")):
        seconds, mib, n = measure("abstract", name=name)
        print(
            f"{name} | {n:,} (shapes only) | abstract | {seconds:.2f} | {mib:,.0f} | -", flush=True
        )


if __name__ == "__main__":
    main()

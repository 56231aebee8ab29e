"""Per-chip memory of the real DiT train step compiled ahead of time for a TPU slice, on any
host with libtpu installed (``pip install -e ".[tpu]"``; nothing runs on a TPU).

  JAX_PLATFORMS=cpu python benchmarks/tpu_compile.py [--config=configs/dit.py:XL] \
      [--topology=v5p-8] [--mesh=fsdp:4] [--lengths=8192,16384,32768,65536] \
      [--attention_impl=auto]

One packed row per chip (rows = chips / (tensor x sequence)). Prints per length: argument /
output / temporary bytes per chip from ``memory_analysis()``, the peak (XLA's, else their sum), the HBM the
kind has (sora_jax.training.planning.DEVICES), whether any [L, L] array is left in the program,
and the compile time.
"""

import argparse
import re

from sora_jax import config as config_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import planning


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/dit.py:XL")
    p.add_argument("--topology", default="v5p-8", help="e.g. v5p-8, v5e-8, 'v5p:2x2x1'")
    p.add_argument("--mesh", default="fsdp:4")
    p.add_argument("--lengths", default="8192,16384,32768,65536")
    p.add_argument("--attention_impl", default="auto")
    args = p.parse_args()
    path, _, arg = args.config.partition(":")
    devices = planning.topology_devices(args.topology)
    shape = planning.parse_mesh(args.mesh)
    hbm = planning.DEVICES[planning.parse_topology(args.topology).kind][0]
    print(f"{args.config} on {args.topology} ({len(devices)} chips), mesh {shape}, "
          f"attention {args.attention_impl}; per chip (GiB, HBM {hbm}):")  # fmt: skip
    print("  L       | args   | out    | temp   | peak   | fits | [L,L] | compile")
    for length in (int(x) for x in args.lengths.split(",")):
        c = config_lib.load_with_arg(path, arg) if arg else config_lib.load(path)
        c.dit.model.attention_impl = args.attention_impl
        c.dit.seq_len = length
        c.dit.rows = len(devices) // (shape["tensor"] * shape["sequence"])
        c.data.resolutions = ((256, 256),)
        c.data.frame_choices = (1,)
        for axis, size in shape.items():
            c.mesh[axis] = size
        c.mesh.num_devices = len(devices)
        c = config_lib.validate(c)
        mesh = mesh_lib.create_mesh(len(devices), ici=shape, devices=devices)
        r = planning.compiled_step(c, mesh)
        gib = lambda n: n / 2**30
        total = gib(planning.compiled_peak(r)[0])
        if r["oom"]:
            print(f"  {length:7d} | does not fit: {r['message']}", flush=True)
            continue
        square = bool(re.search(rf"\[[0-9,]*{length},{length}[\],]", r["hlo"]))
        print(f"  {length:7d} | {gib(r['argument_bytes']):6.2f} | {gib(r['output_bytes']):6.2f} | "
              f"{gib(r['temp_bytes']):6.2f} | {total:6.2f} | {'yes' if total <= hbm else 'NO':4s} | "
              f"{'yes' if square else 'no':5s} | {r['compile_seconds']:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

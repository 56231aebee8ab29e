"""Per-device compiled memory of the sampling decode: a 720p x 129-frame video, one device vs
its tile rows spread over N devices (``vae_inference.sharded_decode``).

  PYTHONPATH=. python benchmarks/sample_memory.py [--config=configs/default.py --frames=129
      --height=720 --width=1280 --devices=2,4,8 --tiles=32/8,16/4 --chunk_latent_frames=4]

Nothing is allocated or run: each decode is lowered with shape-only inputs and compiled for N
simulated CPU devices, and XLA's memory analysis gives its per-device temp (working buffers)
and output bytes. Rows: the one-device decodes (chunked whole frames, the default; chunked
and tiled), then the sharded tiled decode on each N whose device count divides the tile rows.
Ratios are per-device (temp + output) over the one-device tiled decode's and over the video.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time


def _rows(args):
    import jax
    import jax.numpy as jnp

    from sora_jax import config as config_lib
    from sora_jax.models import builders
    from sora_jax.models import vae_inference as vi
    from sora_jax.parallel import mesh as mesh_lib

    config = config_lib.load(args.config)
    model = builders.build_vae(config)
    params = jax.eval_shape(builders.vae_init_fn(config, model), jax.random.key(0))
    latent = model.latent_shape(args.frames, args.height, args.width)  # (t' h' w' c)
    z = jax.ShapeDtypeStruct((1, *latent), jnp.float32)
    chunked = vi.from_config(config)
    chunked = dataclasses.replace(
        chunked,
        chunked=True,
        chunk_latent_frames=args.chunk_latent_frames or chunked.chunk_latent_frames,
        tiled=False,
        shard_tiles=False,
    )

    def measure(cfg, mesh):
        t0 = time.perf_counter()
        fn = jax.jit(lambda p, z: vi.decode(model, p, z, cfg, mesh))
        m = fn.lower(params, z).compile().memory_analysis()
        return m.temp_size_in_bytes, m.output_size_in_bytes, time.perf_counter() - t0

    yield "chunked", "-", 1, measure(chunked, None)
    for tiles in args.tiles.split(","):
        size, overlap = (int(v) for v in tiles.split("/"))
        cfg = dataclasses.replace(
            chunked, tiled=True, tile_latent_size=size, tile_latent_overlap=overlap
        )
        rows = len(vi.tile_starts(z.shape[2], size, overlap))
        yield "tiled", f"{tiles} ({rows} rows)", 1, measure(cfg, None)
        for n in (int(v) for v in args.devices.split(",")):
            if rows % n:
                continue
            mesh = mesh_lib.inference_mesh(None, f"data:{n}")
            cfg_n = dataclasses.replace(cfg, shard_tiles=True)
            yield "sharded", f"{tiles} ({rows} rows)", n, measure(cfg_n, mesh)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--devices", default="2,4,8")
    p.add_argument("--tiles", default="32/8,16/4", help="tile_latent_size/overlap pairs")
    p.add_argument("--chunk_latent_frames", type=int, default=0, help="0: config.vae.inference's")
    args = p.parse_args()
    most = max(int(v) for v in args.devices.split(","))
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={most}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    video = args.frames * args.height * args.width * 3 * 4
    print(
        f"{args.config} VAE, {args.frames}x{args.height}x{args.width}, batch 1, f32: "
        f"video {video / 2**20:.0f} MiB; chunk_latent_frames={args.chunk_latent_frames or 'config'}"
    )
    print(
        "| decode | tiles | devices | temp MiB | output MiB | temp+output MiB | "
        "/ one-device tiled | / video | compile s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for mode, tiles, n, (temp, out, secs) in _rows(args):
        total = temp + out
        if mode == "tiled":
            base = total
        ratio = f"{total / base:.3f}" if base and mode != "chunked" else "-"
        print(
            f"| {mode} | {tiles} | {n} | {temp / 2**20:.0f} | {out / 2**20:.0f} | "
            f"{total / 2**20:.0f} | {ratio} | {total / video:.3f} | {secs:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Sizes of each config's models: parameters and DiT forward FLOPs per token (the README's
table of configs). Nothing is materialised: shapes by `jax.eval_shape`, FLOPs from XLA's cost
analysis of one packed row of `dit.seq_len` tokens (attention included).

  python benchmarks/model_sizes.py configs/tiny.py configs/default.py
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp

from sora_jax import config as config_lib
from sora_jax.models import builders, geometry


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def sizes(path: str) -> dict:
    c = config_lib.validate(config_lib.load(path))
    vae = builders.build_vae(c)
    t, h, w = c.vae.train.buckets[0]
    x = jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.float32)
    vae_params = jax.eval_shape(
        lambda x: vae.init({"params": jax.random.key(0), "posterior": jax.random.key(0)}, x), x
    )["params"]
    text = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text.dim)
    lt, l, s = c.text.max_length, c.dit.seq_len, c.dit.max_segments
    args = (
        jax.ShapeDtypeStruct((1, l, dit.patch_dim), jnp.float32),
        jax.ShapeDtypeStruct((1, s), jnp.float32),
        jax.ShapeDtypeStruct((1, l), jnp.int32),
        jax.ShapeDtypeStruct((1, l, 3), jnp.int32),
        jax.ShapeDtypeStruct((1, s, lt, text.dim), jnp.float32),
        jax.ShapeDtypeStruct((1, s, lt), jnp.bool_),
    )
    dit_params = jax.eval_shape(lambda *a: dit.init(jax.random.key(0), *a), *args)["params"]
    text_params = 0
    if text.trainable:
        ids = jnp.zeros((1, lt), jnp.int32)
        text_params = count(
            jax.eval_shape(lambda: text.module.init(jax.random.key(0), ids, ids > -1))["params"]
        )
    cost = (
        jax.jit(lambda p, *a: dit.apply({"params": p}, *a))
        .lower(dit_params, *args)
        .compile()
        .cost_analysis()
    )
    cost = cost[0] if isinstance(cost, list) else cost
    ct, cs = geometry.vae_compression(c)
    m = c.dit.model
    return {
        "config": path,
        "vae_params": count(vae_params),
        "dit_params": count(dit_params),
        "text_params": text_params,
        "dit": f"hidden {m.hidden}, depth {m.depth}, heads {m.num_heads}",
        "patch": tuple(c.dit.patch),
        "compression": f"{ct}x{cs}x{cs}",
        "seq_len": l,
        "gflops_per_token": cost["flops"] / l / 1e9,
    }


def millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def main(paths):
    print(
        "| config | VAE params | DiT | DiT params | text params | latent compression (t x h x w) "
        "| DiT patch | seq_len | DiT GFLOPs/token (fwd) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        r = sizes(path)
        print(
            f"| `{r['config']}` | {millions(r['vae_params'])} | {r['dit']} | "
            f"{millions(r['dit_params'])} | {millions(r['text_params'])} | {r['compression']} "
            f"| {'x'.join(map(str, r['patch']))} | {r['seq_len']} | {r['gflops_per_token']:.4f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/tiny.py", "configs/default.py"])

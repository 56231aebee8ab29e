"""Packed vs padded DiT training throughput in useful (non-padding) tokens per second.

  python benchmarks/packing_throughput.py [--config=configs/tiny.py] [--steps=20]

Both variants run the same jitted train step on the same mix of moving-shapes
latent sizes (random latents: throughput does not depend on values). Padded =
one video per row, padded to the longest video; packed = first-fit patch-n'-pack.
Prints the ratio of useful tokens/s measured in this one run.
"""

import argparse
import time

import jax
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing, shapes
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer
from sora_jax.training import train_state as ts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    c = config_lib.validate(config_lib.load(args.config))
    d = c.data
    source = shapes.MovingShapes(
        d.seed, 4096, tuple(d.frame_choices), tuple(map(tuple, d.resolutions)), d.image_fraction
    )
    rng = np.random.default_rng(0)
    pt, ph, pw = c.dit.patch
    lat_c = c.vae.model.latent_channels
    items = []
    for i in range(512):
        a = source[i]["attributes"]
        t, h, w = config_lib.latent_grid(c, a["num_frames"], a["height"], a["width"])
        lat = rng.normal(size=(t, h, w, lat_c)).astype(np.float32)
        items.append(packing.patchify(lat, (pt, ph, pw)))
    longest = max(len(tok) for tok, _ in items)
    text = dit_trainer.build_text_encoder(c)
    ids, mask = text.tokenize([source[0]["caption"]])
    dit = dit_trainer.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    mesh = mesh_lib.create_mesh(1)

    def run(seq_len, rows, max_segments):
        cv = c.copy_and_resolve_references()
        cv.dit.seq_len, cv.dit.rows, cv.dit.max_segments = seq_len, rows, max_segments
        state = dit_trainer.init_state(cv, dit, text, tx, mesh, None)
        step = jax.jit(dit_trainer.make_train_step(cv, dit, text, tx), donate_argnums=0)
        batches, cursor = [], 0
        for _ in range(args.steps + 1):
            batch, placed = packing.pack(
                items[cursor : cursor + rows * max_segments], seq_len, rows, max_segments
            )
            cursor = (cursor + sum(p is not None for p in placed)) % (len(items) - 64)
            b = batch["segment_ids"].shape[0]
            batch["caption_ids"] = np.broadcast_to(ids, (b, max_segments, ids.shape[1])).copy()
            batch["caption_mask"] = np.broadcast_to(mask, (b, max_segments, ids.shape[1])).copy()
            batches.append(batch)
        state, m = step(state, batches[0], jax.random.PRNGKey(0))  # compile
        jax.block_until_ready(m)
        useful = 0
        t0 = time.perf_counter()
        for batch in batches[1:]:
            state, m = step(state, batch, jax.random.PRNGKey(0))
            useful += int((batch["segment_ids"] > 0).sum())
        jax.block_until_ready(m)
        dt = time.perf_counter() - t0
        return useful / dt, float(
            np.mean([packing.padding_fraction(b["segment_ids"]) for b in batches])
        )

    rows = c.dit.rows
    packed, packed_pad = run(c.dit.seq_len, rows, c.dit.max_segments)
    # Padded: as many rows as fit the same token budget, one video per row.
    padded, padded_pad = run(longest, rows * c.dit.seq_len // longest, 1)
    print(f"config={args.config} longest video={longest} tokens, seq_len={c.dit.seq_len}")
    print(f"padded: {padded:,.0f} useful tokens/s (padding {padded_pad:.1%})")
    print(f"packed: {packed:,.0f} useful tokens/s (padding {packed_pad:.1%})")
    print(f"packed/padded useful-token throughput ratio: {packed / padded:.2f}")


if __name__ == "__main__":
    main()

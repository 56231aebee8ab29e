"""Patch-n'-pack on a realistic size mix: padding, packer speed, packed vs padded-to-bucket.

  python benchmarks/packing.py [--steps=7] [--hidden=384] [--depth=1] [--buffer_size=128] \
      [--pack_lengths=64,128,256,320,512,640] [--max_segments=16] [--pack_segments=6] \
      [--text_tokens=36]

The stream mixes images (20 %) and videos of 1-8 s at 240p / 360p / 480p / 720p, landscape
16:9, portrait 9:16 and square, scaled down to run on a CPU: one latent frame per second
(+1), and the short side in patches = short side in pixels / 120 (720p 8 s landscape = 9 x 6 x
11 = 594 tokens). Random latents (throughput does not depend on values); each example has a
caption of the moving-shapes grammar, in its row's caption slot.

1. Packer (host, numpy, this process): examples/s and tokens/s, padding per batch of a
   `Packer(seq_len, rows, max_segments, buffer_size)` over the stream.
2. DiT train steps (tiny DiT from configs/tiny.py, widened by --hidden): packed batches of
   `rows x seq_len` vs padded-to-bucket batches with the same token budget (one video per row,
   padded to the next of the power-of-two buckets up to seq_len, rows = budget / bucket),
   and length-bucketed packed batches (`Packer(..., seq_lens=--pack_lengths)`: rows of one
   of a few lengths, same token budget, short videos packed into short rows). With
   `--text_tokens` the length-bucketed arm also packs each row's captions into that many
   tokens (`dit.text_tokens`: the packer keeps a row's captions within it, the DiT projects
   and attends only those; outputs unchanged). The single-length arm's rows hold ~6 videos
   and keep every slot; the padded arm's one caption per row is the same either way.
   Same stream, same process. Every arm packs the WHOLE stream; a dense step's time depends
   on its shape only, so each distinct shape is compiled once and timed `--steps` times, the
   shapes' steps interleaved (the CPU is shared: interleaving exposes all to the same load),
   and an arm's time is the sum over its batches of their shape's best (and median) time.
   This weighs each arm's shapes as the whole stream does (a few sampled steps per arm would
   not: the lengths they draw vary from run to run). Reports useful (non-padding) tokens/s of
   each and their ratios to padded-to-bucket.
"""

import argparse
import time

import jax
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.data import shapes as moving_shapes
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer
from sora_jax.training import train_state as ts
from sora_jax.models import builders

SHORT_SIDES = {240: 2, 360: 3, 480: 4, 720: 6}  # pixels -> patches (scaled down)


def realistic_sizes(rng, n, image_fraction=0.2):
    """(t, h, w) patch grids of `n` examples of the mix described above."""
    out = []
    for _ in range(n):
        short = SHORT_SIDES[int(rng.choice(list(SHORT_SIDES)))]
        long = int(round(short * 16 / 9))
        h, w = [(short, long), (long, short), (short, short)][int(rng.integers(3))]
        t = 1 if rng.random() < image_fraction else 1 + int(rng.integers(1, 9))
        out.append((t, h, w))
    return out


def stream(rng, sizes, dim):
    for key, grid in enumerate(sizes):
        n = int(np.prod(grid))
        yield key, rng.standard_normal((n, dim)).astype(np.float32), packing.grid_positions(grid)


def packer_throughput(sizes, dim, seq_len, rows, max_segments, buffer_size, seq_lens=()):
    """Packs the whole stream; returns (examples/s, tokens/s, padding per batch)."""
    items = list(stream(np.random.default_rng(1), sizes, dim))
    packer = packing.Packer(seq_len, rows, max_segments, buffer_size, seq_lens)
    t0 = time.perf_counter()
    batches = [b for item in items if (b := packer.add(*item)) is not None]
    dt = time.perf_counter() - t0
    tokens = sum(len(b.batch["segment_ids"].nonzero()[0]) for b in batches)
    examples = sum(len(b.keys) for b in batches)
    return examples / dt, tokens / dt, [b.padding_fraction for b in batches]


def bucketed(items, buckets, budget):
    """Padded-to-bucket batches: one video per row, rows = budget / bucket, in stream order;
    yields (batch, keys, placements)."""
    pending = {b: [] for b in buckets}
    for key, tok, pos in items:
        b = min(x for x in buckets if x >= len(tok))
        pending[b].append((key, tok, pos))
        if len(pending[b]) == budget // b:
            batch, placements = packing.pack([it[1:] for it in pending[b]], b, budget // b, 1)
            yield batch, [it[0] for it in pending[b]], placements
            pending[b] = []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--steps", type=int, default=7, help="timed steps per shape")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=640)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--buffer_size", type=int, default=128)
    p.add_argument("--max_segments", type=int, default=16, help="videos per row, packed arm")
    # Length-bucketed rows hold one or two long videos or a few short ones (2.5 on average on
    # this stream); with --text_tokens a slot costs its caption's tokens only, not lt.
    p.add_argument(
        "--pack_segments", type=int, default=6, help="videos per row, length-bucketed arm"
    )
    p.add_argument(
        "--pack_lengths",
        default="64,128,256,320,512,640",
        help="row lengths of the length-bucketed arm",
    )
    p.add_argument(
        "--text_tokens",
        type=int,
        default=36,
        help="caption tokens per length-bucketed row (dit.text_tokens; 0 = every slot's)",
    )
    args = p.parse_args()
    c = config_lib.load(args.config)
    c.dit.model.hidden, c.dit.model.depth = args.hidden, args.depth
    c.dit.model.num_heads = args.hidden // 64
    c.dit.seq_len, c.dit.rows, c.dit.max_segments = args.seq_len, args.rows, args.max_segments
    c = config_lib.validate(c)
    pt, ph, pw = c.dit.patch
    dim = pt * ph * pw * c.vae.model.latent_channels
    sizes = realistic_sizes(np.random.default_rng(0), 4000)
    longest = max(int(np.prod(s)) for s in sizes)
    assert longest <= args.seq_len, longest

    pack_lengths = tuple(int(x) for x in args.pack_lengths.split(","))
    print(
        f"stream: {len(sizes)} examples, mean {np.mean([np.prod(s) for s in sizes]):.0f} "
        f"tokens, longest {longest}; Packer(seq_len={args.seq_len}, rows={args.rows}, "
        f"max_segments={args.max_segments} (length-bucketed: {args.pack_segments}), "
        f"buffer_size={args.buffer_size})"
    )
    for lengths, segs in (((), args.max_segments), (pack_lengths, args.pack_segments)):
        ex_s, tok_s, fracs = packer_throughput(
            sizes, dim, args.seq_len, args.rows, segs, args.buffer_size, lengths
        )
        print(
            f"packer seq_lens={lengths or (args.seq_len,)} (1 core, numpy): {ex_s:,.0f} "
            f"examples/s, {tok_s:,.0f} tokens/s; padding per batch mean {np.mean(fracs):.2%}, "
            f"median {np.median(fracs):.2%}, max {np.max(fracs):.2%} over {len(fracs)} batches"
        )

    # Every example gets a caption of the moving-shapes grammar (images 8-9 tokens, videos 11-12).
    text = builders.build_text_encoder(c)
    crng = np.random.default_rng(3)
    captions = [
        moving_shapes.caption(moving_shapes.sample_attributes(crng, is_image=t == 1))
        for t, _, _ in sizes
    ]
    ids, mask = (np.asarray(a) for a in text.tokenize(captions))
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    mesh = mesh_lib.create_mesh(1)
    budget = args.rows * args.seq_len
    buckets = [b for b in (32, 64, 128, 256, 512) if b < args.seq_len] + [args.seq_len]

    def with_text(batch, keys, placements, segments):
        """The batch with its videos' captions in their rows' slots."""
        shape = batch["segment_ids"].shape[:1] + (segments, ids.shape[1])
        batch["caption_ids"], batch["caption_mask"] = (
            np.zeros(shape, np.int32),
            np.zeros(shape, bool),
        )
        for k, p in zip(keys, placements):
            batch["caption_ids"][p.row, p.segment - 1] = ids[k]
            batch["caption_mask"][p.row, p.segment - 1] = mask[k]
        return batch

    items = list(stream(np.random.default_rng(2), sizes, dim))
    text_lengths = mask.sum(-1)
    packer = packing.Packer(args.seq_len, args.rows, args.max_segments, args.buffer_size)
    lpacker = packing.Packer(
        args.seq_len,
        args.rows,
        args.pack_segments,
        args.buffer_size,
        pack_lengths,
        args.text_tokens,
    )
    segments = {l: s for l, (_, s) in lpacker.shapes.items()}
    sources = {
        "packed": (
            (b.batch, b.keys, b.placements, args.max_segments, 0)
            for it in items
            if (b := packer.add(*it)) is not None
        ),
        "padded": (b + (1, 0) for b in bucketed(items, buckets, budget)),
        "length_packed": (
            (
                b.batch,
                b.keys,
                b.placements,
                segments[b.batch["segment_ids"].shape[1]],
                args.text_tokens,
            )
            for it in items
            if (b := lpacker.add(*it, text_length=text_lengths[it[0]])) is not None
        ),
    }
    # Every batch of the whole stream, per arm: its shape (rows, length, segments, text tokens)
    # and useful tokens; one batch of each shape is kept to be timed.
    shapes = {arm: [] for arm in sources}
    useful = dict.fromkeys(sources, 0)
    padding = {arm: [] for arm in sources}
    examples = {}
    for arm, source in sources.items():
        for batch, keys, placements, segs, text_tokens in source:
            key = batch["segment_ids"].shape + (segs, text_tokens)
            shapes[arm].append(key)
            useful[arm] += int((batch["segment_ids"] > 0).sum())
            padding[arm].append(packing.padding_fraction(batch["segment_ids"]))
            if key not in examples:
                examples[key] = with_text(batch, keys, placements, segs)

    steps = {}  # (rows, seq_len, segments, text tokens) -> (state, jitted step)
    for key in examples:
        r, l, s, tt = key
        cv = c.copy_and_resolve_references()
        cv.dit.seq_len, cv.dit.rows, cv.dit.max_segments, cv.dit.text_tokens = l, r, s, tt
        model = dit.clone(text_tokens=tt)  # the same parameters and outputs
        state = dit_trainer.init_state(cv, model, text, tx, mesh, None)
        fn = jax.jit(dit_trainer.make_train_step(cv, model, text, tx))
        jax.block_until_ready(fn(state, examples[key], jax.random.PRNGKey(0)))  # compile
        steps[key] = (state, fn)
    times = {key: [] for key in steps}
    for _ in range(args.steps):  # the shapes' steps interleaved: all see the same load
        for key, (state, fn) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, examples[key], jax.random.PRNGKey(0)))
            times[key].append(time.perf_counter() - t0)
    print(
        f"DiT hidden={args.hidden} depth={args.depth}, {budget} tokens per step; padded buckets "
        f"{buckets}, packed row lengths {pack_lengths} (rows, segments {lpacker.shapes}); "
        f"{args.steps} timed steps per shape, interleaved"
    )
    for key in sorted(times, key=lambda k: (k[1], k[0])):
        print(
            f"  shape rows={key[0]} length={key[1]} segments={key[2]} text_tokens={key[3]}: best "
            f"{min(times[key]):.2f} s, median {np.median(times[key]):.2f} s"
        )
    # Step time depends on the shape only (dense compute): an arm's time over the whole
    # stream is the sum over its batches of their shape's step time.
    rate = {}
    for stat, f in (("best", min), ("median", np.median)):
        rate[stat] = {arm: useful[arm] / sum(f(times[k]) for k in shapes[arm]) for arm in sources}
    for arm in sources:
        counts = {
            l: [k[1] for k in shapes[arm]].count(l) for l in sorted({k[1] for k in shapes[arm]})
        }
        print(
            f"{arm}: {len(shapes[arm])} batches (row length: count {counts}), padding "
            f"{np.mean(padding[arm]):.1%}; useful tokens/s {rate['best'][arm]:,.0f} (best step "
            f"times), {rate['median'][arm]:,.0f} (median)"
        )
    for arm in ("packed", "length_packed"):
        print(
            f"{arm} / padded-to-bucket useful tokens/s: {rate['best'][arm] / rate['best']['padded']:.2f}"
            f" (best step times), {rate['median'][arm] / rate['median']['padded']:.2f} (median)"
        )


if __name__ == "__main__":
    main()

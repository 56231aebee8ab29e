"""Frozen text-encoder throughput (captions per second) and what the embedding cache saves.

  python benchmarks/text_encoder_throughput.py [--preset=t5-small] [--batch=32] [--length=64]
      [--dtype=float32] [--repeats=5]
  python benchmarks/text_encoder_throughput.py --kind=bert --path=/local/hf/folder  # real weights

Random-initialised weights of a published architecture size (throughput does not depend on the
values; nothing is downloaded). Times the jitted `TextEncoder.encode` on a fixed batch after a
warm-up compile, then `EmbeddingCache` on the same captions: first pass (encode + store) and a
second pass (all hits).
"""

import argparse
import json
import os
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import save_file

from sora_jax.data import shapes
from sora_jax.text import cache as cache_lib
from sora_jax.text import clip as clip_lib
from sora_jax.text import t5 as t5_lib
from sora_jax.text.encoders import build_text_encoder

# Architecture sizes of public checkpoints (config.json fields), smallest first.
PRESETS = {
    "t5-small": ("t5", dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6)),
    "t5-base": ("t5", dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)),
    "clip-b": (
        "clip",
        dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    ),
}


def _write_checkpoint(folder, preset):
    """A HF-layout folder (config.json, model.safetensors, tokenizer.json) with random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    kind, dims = PRESETS[preset]
    words = ["<pad>", "</s>", "<unk>"] + list(shapes.VOCABULARY)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(folder, "tokenizer.json"))
    vocab = 32128 if kind == "t5" else 49408
    if kind == "t5":
        cfg = dict(model_type="t5", vocab_size=vocab, feed_forward_proj="gated-gelu", **dims)
        module = t5_lib.T5Encoder(vocab_size=vocab, feed_forward_proj="gated-gelu", **dims)
        names = t5_lib._hf_names
    else:
        cfg = dict(model_type="clip_text_model", vocab_size=vocab, **dims)
        module = clip_lib.CLIPTextEncoder(vocab_size=vocab, **dims)
        names = clip_lib._hf_names
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    ids = np.zeros((1, 8), np.int32)
    params = module.init(jax.random.key(0), ids, np.ones((1, 8), bool))["params"]
    tensors = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params)):
        leaf = np.asarray(leaf)
        keys = tuple(p.key for p in path)
        name, transpose = names(keys)
        tensors[name[0]] = np.ascontiguousarray(leaf.T if transpose else leaf)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return kind


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="t5-small", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kind", default="", help="with --path: 'bert' | 't5' | 'clip'")
    p.add_argument("--path", default="", help="a local HF folder instead of a random preset")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.path:
            kind, folder, args.preset = (
                args.kind,
                args.path,
                os.path.basename(args.path.rstrip("/")),
            )
        else:
            kind, folder = _write_checkpoint(tmp, args.preset), tmp
        enc = build_text_encoder(kind, max_length=args.length, path=folder, dtype=args.dtype)
        src = shapes.MovingShapes(seed=0, num_examples=4 * args.batch)
        captions = [src[i]["caption"] for i in range(len(src))]
        ids, mask = enc.tokenize(captions[: args.batch])
        encode = jax.jit(enc.encode)
        encode(enc.params, ids, mask).block_until_ready()  # compile
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            encode(enc.params, ids, mask).block_until_ready()
        per_batch = (time.perf_counter() - t0) / args.repeats
        n_params = sum(x.size for x in jax.tree.leaves(enc.params))

        cache = cache_lib.EmbeddingCache(enc, os.path.join(tmp, "cache"), batch_size=args.batch)
        cache(captions[:1])  # compile
        distinct = list(dict.fromkeys(captions))
        t0 = time.perf_counter()
        cache(distinct)
        cache.flush()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache(captions)
        hits = time.perf_counter() - t0
        t0 = time.perf_counter()
        reread = cache_lib.EmbeddingCache(enc, os.path.join(tmp, "cache"))
        reread(captions)
        disk = time.perf_counter() - t0
    print(
        f"{args.preset} ({n_params / 1e6:.1f} M params, {args.dtype}, length {args.length}) "
        f"on {jax.devices()[0].device_kind}: encode {args.batch / per_batch:.1f} captions/s "
        f"({per_batch * 1e3:.0f} ms per batch of {args.batch}); cache: first pass "
        f"{len(distinct) / first:.1f} captions/s ({len(distinct)} distinct), hits "
        f"{len(captions) / hits:.0f} captions/s, re-read from disk + serve "
        f"{len(captions) / disk:.0f} captions/s"
    )


if __name__ == "__main__":
    main()

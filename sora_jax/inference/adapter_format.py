"""LoRA adapters stored alone (`python -m sora_jax.export --adapters_only`): a LoRA fine-tune's
adapter weights without the base model they adapt, a small part of a full export's bytes.

An adapters folder holds
  adapters.json  format, name, the LoRA spec (rank, alpha, dropout, targets), the base the run
                 started from (config.dit.finetune.init_from, as recorded), the run's DiT model
                 config and text-encoder reference (what the adapters' shapes follow) and where
                 the weights came from (workdir, checkpoint steps);
  adapters/      orbax (StandardCheckpointer) tree of the DiT's EMA ``lora_a`` / ``lora_b``
                 leaves in float32, nested as in the run's DiT params.
Written by `exporter.export_adapters`; `loader.load(base, adapters=folder)` merges them into a
base model (`loader.with_adapters`) and `config.dit.finetune.adapters_from` starts a LoRA run
from them. Both check every adapter against the model it is applied to (`read`).
"""

from __future__ import annotations

import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sora_jax.inference import export_format
from sora_jax.models import block_stack, builders, lora

FORMAT = "sora_jax.lora/1"
META_FILE = "adapters.json"
PARAMS_DIR = "adapters"


def is_adapters(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def spec(meta: dict) -> lora.LoraSpec:
    s = meta["lora"]
    return lora.LoraSpec(
        rank=s["rank"], alpha=s["alpha"], dropout=s["dropout"], targets=s["targets"]
    )


def save(
    out: str,
    config: ml_collections.ConfigDict,
    adapters: dict,
    *,
    name: str,
    source: dict | None = None,
    overwrite: bool = False,
) -> str:
    """Writes the adapters (the ``lora_a`` / ``lora_b`` leaves of a LoRA run's DiT params,
    `lora.split`) of the run configured by `config` to `out`; returns `out`'s path."""
    s = builders.lora_spec(config)
    if s is None:
        raise ValueError(f"config.dit.finetune.mode={config.dit.finetune.mode!r}: not a LoRA run")
    out = export_format.check_out(out, overwrite, is_adapters, "an adapters folder")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(
            os.path.join(out, PARAMS_DIR),
            jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), adapters),
        )
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    meta = {
        "format": FORMAT,
        "name": name,
        "lora": {"rank": s.rank, "alpha": s.alpha, "dropout": s.dropout, "targets": s.targets},
        "init_from": config.dit.finetune.init_from,
        "dit_model": config.dit.model.to_dict(),
        "text_encoder": export_format.text_reference(config),
        "source": source or {},
    }
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return out


def read_meta(path: str) -> dict:
    return export_format.read_json(
        path,
        META_FILE,
        FORMAT,
        "an adapters folder",
        f"python -m sora_jax.export --workdir=<LoRA run> --out={path} --adapters_only",
    )


def expected(config, text_encoder, s: lora.LoraSpec) -> dict:
    """Shape/dtype structs of the adapters `s` gives the DiT of `config` (any fine-tune mode)."""
    config = config.copy_and_resolve_references()
    config.dit.finetune.update(
        mode="lora",
        lora_rank=s.rank,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        lora_targets=s.targets,
    )
    dit = builders.build_dit(config, text_encoder.dim)
    boxed = builders.abstract_dit_params(config, dit, text_encoder)["dit"]
    return lora.split(nn.unbox(boxed))[1]


def read(path: str, meta: dict, want: dict, *, scanned: bool) -> dict:
    """The stored adapters, nested as `want` (shape structs, e.g. `expected`) in the block form
    `scanned` asks for; ValueError naming the first adapter missing, unexpected or of
    another shape than `want`'s."""
    ckptr = ocp.StandardCheckpointer()
    try:
        stored = ckptr.restore(os.path.join(path, PARAMS_DIR))
    finally:
        ckptr.close()
    model = meta["dit_model"]
    if model["scan_blocks"] != scanned:  # the adapters follow the run's blocks, scanned or not
        stored = block_stack.convert(stored, model["attention_layout"], scanned=scanned)
    flat = flax.traverse_util.flatten_dict(stored)
    wanted = flax.traverse_util.flatten_dict(flax.core.unfreeze(want))
    where = f"adapters {path} (rank {meta['lora']['rank']}, targets {meta['lora']['targets']!r})"
    if set(wanted) - set(flat):
        raise ValueError(f"{where}: no adapter {'/'.join(min(set(wanted) - set(flat)))}")
    if set(flat) - set(wanted):
        key = "/".join(min(set(flat) - set(wanted)))
        raise ValueError(f"{where}: adapter {key} has no place in this DiT")
    for k in sorted(wanted):
        if tuple(flat[k].shape) != tuple(wanted[k].shape):
            raise ValueError(
                f"{where}: {'/'.join(k)} has shape {tuple(flat[k].shape)}, this DiT's is "
                f"{tuple(wanted[k].shape)}"
            )
    return flax.traverse_util.unflatten_dict(
        {k: np.asarray(v, np.float32) for k, v in flat.items()}
    )

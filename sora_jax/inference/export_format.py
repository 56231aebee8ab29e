"""The exported inference checkpoint format: the EMA weights a sampler needs, without
optimizer state.

An exported folder holds
  config.json   the run's whole config (same format as a training workdir's);
  export.json   format, model name, weight dtype, the latent normalisation (shift `latent_mean`,
                scale `latent_std`, per channel), the text-encoder reference (kind; for 'bert'
                the local folder its frozen weights are read from) and where the weights came
                from (workdir, checkpoint steps);
  params/       orbax (StandardCheckpointer) tree {'vae', 'dit'[, 'text']} of EMA params, in
                float32 or cast to bfloat16 (half the bytes; loading casts back to float32, so
                float32 exports sample bit for bit like the workdir they came from).
Written by `python -m sora_jax.export` (`exporter`); read by `loader.load` (behind
`sora_jax.load_pipeline(path)`).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sora_jax import config as config_lib
from sora_jax.parallel import mesh as mesh_lib

FORMAT = "sora_jax.inference/1"
META_FILE = "export.json"
PARAMS_DIR = "params"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def text_reference(config: ml_collections.ConfigDict) -> dict:
    """What rebuilds the text encoder: its kind, and for a frozen 'bert' its local folder."""
    t = config.text
    ref = {"kind": t.kind, "max_length": int(t.max_length)}
    if t.kind == "bert":
        ref["path"] = os.path.abspath(t.path)
    return ref


def check_out(
    out: str, overwrite: bool, is_ours=is_export, kind: str = "an exported checkpoint"
) -> str:
    """`out`'s absolute path once it may be written: new, empty, or (with `overwrite`) `kind`
    of folder, as `is_ours` recognises it."""
    out = os.path.abspath(out)
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
        if not is_ours(out):  # overwrite replaces what we wrote before, never other folders
            raise FileExistsError(f"{out} is not {kind}; will not replace it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder; choose a new --out")
    return out


def save(
    out: str,
    config: ml_collections.ConfigDict,
    params: dict,
    latent_mean: np.ndarray,
    latent_std: np.ndarray,
    *,
    name: str,
    dtype: str = "float32",
    source: dict | None = None,
    overwrite: bool = False,
) -> str:
    """Writes an inference checkpoint of `params` {'vae', 'dit'[, 'text']} to `out`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {sorted(DTYPES)}")
    out = check_out(out, overwrite)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    cast = jax.tree.map(lambda x: jnp.asarray(x, DTYPES[dtype]), params)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(os.path.join(out, PARAMS_DIR), cast)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    config_lib.save(config, out)
    meta = {
        "format": FORMAT,
        "name": name,
        "dtype": dtype,
        # float32 -> Python float -> JSON round-trips exactly.
        "latent_mean": [float(v) for v in np.asarray(latent_mean, np.float32)],
        "latent_std": [float(v) for v in np.asarray(latent_std, np.float32)],
        "text_encoder": text_reference(config),
        "source": source or {},
    }
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return out


def read_json(path: str, name: str, fmt: str, what: str, command: str) -> dict:
    """The metadata file `name` of the folder `path`, of format `fmt`; a missing file says the
    folder is not `what` and how to write one (`command`)."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: not {what} (write one with `{command}`)")
    with open(file) as f:
        meta = json.load(f)
    if meta.get("format") != fmt:
        raise ValueError(f"{file}: format {meta.get('format')!r}, expected {fmt!r}")
    return meta


def read_meta(path: str) -> dict:
    return read_json(
        path,
        META_FILE,
        FORMAT,
        "an exported checkpoint",
        f"python -m sora_jax.export --workdir=... --out={path}",
    )


def read_params(path: str, meta: dict, expected, mesh, shardings=None) -> dict:
    """The stored params tree (cast to float32; replicated over `mesh`, or placed as the tree
    `shardings` says) of the shapes in `expected` (the config's models, as shape/dtype
    structs); ValueError where they differ."""
    stored = DTYPES[meta["dtype"]]
    if shardings is None:
        shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), expected)
    target = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, stored, sharding=sh), expected, shardings
    )
    ckptr = ocp.StandardCheckpointer()
    try:
        restored = ckptr.restore(os.path.join(path, PARAMS_DIR), target)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"{path}: the stored weights do not fit the models of its config.json: {e}"
        ) from e
    finally:
        ckptr.close()
    return jax.tree.map(lambda x: x.astype(jnp.float32), restored)

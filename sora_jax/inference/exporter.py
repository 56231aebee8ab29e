"""Exporting a model for inference (`python -m sora_jax.export`): a training workdir's latest
EMA params, or a loaded model, written in the `export_format`; a LoRA run's adapters alone
(`export_adapters`, `adapter_format`); or a fine-tuned Wan model as a diffusers pipeline
folder (`export_diffusers`)."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np

from sora_jax import config as config_lib
from sora_jax.inference import adapter_format, export_format, loader
from sora_jax.models import block_stack, builders, lora, wan_folder
from sora_jax.models import wan_transformer_weights as wan_weights

# Written beside model_index.json in a diffusers export (diffusers ignores it): where the
# weights came from.
DIFFUSERS_SOURCE = "sora_jax_source.json"


def _without_adapters(config, params: dict):
    """(config, params) with a LoRA fine-tune's adapters merged into the DiT's weights (a
    plain full model); other models unchanged."""
    spec = builders.lora_spec(config)
    if spec is None:
        return config, params
    config = config.copy_and_resolve_references()
    config.dit.finetune.mode = "full"
    return config, {**params, "dit": lora.merge(params["dit"], spec)}


def save_model(
    model: loader.InferenceModel,
    out: str,
    *,
    bf16: bool = False,
    name: str | None = None,
    source: dict | None = None,
    overwrite: bool = False,
    scan_blocks: bool | None = None,
) -> str:
    """Exports a loaded model (its EMA params) to `out`; returns `out`'s path. `scan_blocks`
    (True / False) stores the DiT's blocks scanned / unrolled (`block_stack`), whichever
    form the model has; its config says which. A LoRA fine-tune's adapters are merged into
    the weights: the export is a plain DiT."""
    config, params = _without_adapters(model.config, model.params)
    if scan_blocks is not None and scan_blocks != config.dit.model.scan_blocks:
        params = dict(params)
        params["dit"] = block_stack.convert(
            params["dit"], config.dit.model.attention_layout, scanned=scan_blocks
        )
        config = config.copy_and_resolve_references()
        config.dit.model.scan_blocks = scan_blocks
    return export_format.save(
        out,
        config,
        {"vae": model.vae_params, **params},
        model.latent_mean,
        model.latent_std,
        name=name or os.path.basename(os.path.abspath(out)),
        dtype="bfloat16" if bf16 else "float32",
        source=source,
        overwrite=overwrite,
    )


def _check_wan_run(config, name: str) -> None:
    """That the run `name` of `config` fine-tunes a Wan folder that is still in place."""
    if config.dit.model.arch != "wan":
        raise ValueError(
            f"{name} is a sora_jax DiT ({config.dit.model.arch!r}), which has no diffusers class: "
            f"--format=diffusers exports runs of a Wan folder (--config.init.from_pretrained); "
            f"export this one in the project's format (no --format)"
        )
    wan_folder.check_folder(config.init.from_pretrained)  # moved since training: say so


def save_diffusers(
    model: loader.InferenceModel,
    out: str,
    *,
    bf16: bool = False,
    overwrite: bool = False,
    source: dict | None = None,
    max_shard_bytes: int | None = None,
) -> str:
    """Writes a Wan model (a run of config.init.from_pretrained = FOLDER) as a diffusers
    ``WanPipeline`` folder at `out`: FOLDER's model_index.json, vae/, text_encoder/,
    tokenizer/ and scheduler/ copied unchanged (they are frozen in such a run) and transformer/
    holding the model's EMA weights (LoRA adapters merged) in float32 or bfloat16, in shards of
    at most `max_shard_bytes` if given. Written beside `out` and renamed into place, so an
    interrupted export leaves no half folder. Returns `out`'s path."""
    _check_wan_run(model.config, model.name)
    if set(model.params) != {"dit"}:
        raise ValueError(
            f"{model.name} trained its text encoder; a diffusers folder takes only the Wan "
            f"folder's frozen one"
        )
    out = export_format.check_out(out, overwrite, wan_folder.is_wan_folder, "a Wan folder")
    config, params = _without_adapters(model.config, model.params)
    base = config.init.from_pretrained
    if os.path.abspath(base) == out:
        raise FileExistsError(f"{out} is the Wan folder the run started from; choose a new --out")
    partial = f"{out}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(base, partial, ignore=lambda d, names: ["transformer"] if d == base else [])
    wan_weights.export_transformer(
        params["dit"]["transformer"],
        wan_folder.transformer_config(config),
        os.path.join(partial, "transformer"),
        dtype=ml_dtypes.bfloat16 if bf16 else np.float32,
        max_shard_bytes=max_shard_bytes,
    )
    with open(os.path.join(partial, DIFFUSERS_SOURCE), "w") as f:
        json.dump({"base": os.path.abspath(base), **(source or {})}, f, indent=2)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def export_diffusers(
    workdir: str,
    out: str,
    *,
    bf16: bool = False,
    overwrite: bool = False,
    max_shard_bytes: int | None = None,
) -> str:
    """Exports a Wan fine-tune workdir's latest EMA weights as a diffusers folder
    (`save_diffusers`); returns `out`'s path."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist")
    if export_format.is_export(workdir):
        raise ValueError(f"{workdir} is an exported checkpoint, not a training workdir")
    _check_wan_run(config_lib.load_saved(workdir), workdir)
    export_format.check_out(out, overwrite, wan_folder.is_wan_folder, "a Wan folder")
    model = loader.load_workdir(workdir)
    source = {"workdir": os.path.abspath(workdir), **model.steps}
    return save_diffusers(
        model, out, bf16=bf16, overwrite=overwrite, source=source, max_shard_bytes=max_shard_bytes
    )


def export_workdir(
    workdir: str,
    out: str,
    *,
    bf16: bool = False,
    name: str | None = None,
    overwrite: bool = False,
    scan_blocks: bool | None = None,
) -> str:
    """Exports a training workdir's latest EMA params to `out`; returns `out`'s path."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist")
    if export_format.is_export(workdir):
        raise ValueError(f"{workdir} is already an exported checkpoint, not a training workdir")
    export_format.check_out(out, overwrite)  # before the (slow) loading
    model = loader.load_workdir(workdir)
    # The steps loaded: older than the latest when a damaged checkpoint was passed over.
    source = {"workdir": os.path.abspath(workdir), **model.steps}
    return save_model(
        model,
        out,
        bf16=bf16,
        name=name,
        source=source,
        overwrite=overwrite,
        scan_blocks=scan_blocks,
    )


def export_adapters(
    workdir: str, out: str, *, name: str | None = None, overwrite: bool = False
) -> str:
    """Writes a LoRA fine-tune workdir's latest EMA adapters, without the base model, to `out`
    (`adapter_format`); returns `out`'s path. Any other workdir is a ValueError."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist")
    if export_format.is_export(workdir):
        raise ValueError(
            f"{workdir} is an exported checkpoint (adapters merged), not a LoRA run's workdir"
        )
    mode = config_lib.load_saved(workdir).dit.finetune.mode
    if mode != "lora":
        raise ValueError(
            f"{workdir} is not a LoRA run (config.dit.finetune.mode={mode!r}): it has no "
            f"adapters to export alone; export the whole model without --adapters_only"
        )
    export_format.check_out(out, overwrite, adapter_format.is_adapters, "an adapters folder")
    model = loader.load_workdir(workdir)
    _, adapters = lora.split(model.params["dit"])
    return adapter_format.save(
        out,
        model.config,
        adapters,
        name=name or os.path.basename(os.path.abspath(out)),
        source={"workdir": os.path.abspath(workdir), **model.steps},
        overwrite=overwrite,
    )

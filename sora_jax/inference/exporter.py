"""Exporting a model for inference (`python -m sora_jax.export`): a training workdir's latest
EMA params, or a loaded model, written in the `export_format`; or a LoRA run's adapters alone
(`export_adapters`, `adapter_format`)."""

from __future__ import annotations

import os

from sora_jax import config as config_lib
from sora_jax.inference import adapter_format, export_format, loader
from sora_jax.models import block_stack, builders, lora


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
    config, params = model.config, model.params
    spec = builders.lora_spec(config)
    if spec is not None:
        params = {**params, "dit": lora.merge(params["dit"], spec)}
        config = config.copy_and_resolve_references()
        config.dit.finetune.mode = "full"
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

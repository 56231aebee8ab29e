"""Export CLI: a training workdir -> an inference checkpoint (EMA params only).

  python -m sora_jax.export --workdir=runs/tiny --out=exports/tiny [--bf16] [--name=tiny] \
      [--scan_blocks=true|false]

Writes the latest VAE and DiT checkpoints' EMA params (no optimizer state, no raw params),
optionally cast to bfloat16, with the model config, the latent shift/scale and the
text-encoder reference beside them (format: `sora_jax/inference/export_format.py`);
`--scan_blocks` stores the DiT's blocks scanned (stacked) or unrolled whatever the run
trained with (`sora_jax/models/block_stack.py`; the exported config says which). Load it
with `sora_jax.load_pipeline("exports/tiny")`, or sample from it with
`python -m sora_jax.sample --workdir=exports/tiny --prompt "..."`.

  python -m sora_jax.export --workdir=runs/ft --out=exports/ft_adapters --adapters_only

writes only a LoRA fine-tune's adapters (EMA) and what applying them needs (format:
`sora_jax/inference/adapter_format.py`), a small part of a whole export; sample a base with
them: `python -m sora_jax.sample --workdir=exports/base --adapters=exports/ft_adapters ...`.

  python -m sora_jax.export --workdir=runs/wan_ft --out=exports/wan_ft --format=diffusers [--bf16]

writes a fine-tuned Wan model (a run of `--config.init.from_pretrained=FOLDER`) as a diffusers
pipeline folder: FOLDER with its transformer replaced by the run's EMA weights (LoRA merged), in
safetensors shards of at most `--max_shard_gb`; `diffusers.WanPipeline.from_pretrained` loads it,
as does `--config.init.from_pretrained` for a further run.
"""

from __future__ import annotations

from absl import app, flags

from sora_jax.common import cli
from sora_jax.inference import exporter

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.")
_OUT = flags.DEFINE_string("out", None, "Folder for the inference checkpoint (new or empty).")
_BF16 = flags.DEFINE_boolean("bf16", False, "Store the weights as bfloat16 (half the size).")
_NAME = flags.DEFINE_string("name", None, "Model name for provenance (default: --out's name).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a non-empty --out folder.")
_SCAN = flags.DEFINE_enum(
    "scan_blocks", None, ["true", "false"], "Store the DiT's blocks scanned / unrolled."
)
_FORMAT = flags.DEFINE_enum(
    "format", "sora_jax", ["sora_jax", "diffusers"], "sora_jax's export, or a diffusers folder."
)
_SHARD_GB = flags.DEFINE_float(
    "max_shard_gb", 10.0, "--format=diffusers: largest safetensors file of the transformer."
)
_ADAPTERS = flags.DEFINE_boolean(
    "adapters_only", False, "Store only a LoRA run's adapters (float32), not the base model."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("--workdir (a training workdir) and --out (a new folder) are required")
    if _ADAPTERS.value and (_BF16.value or _SCAN.value is not None):
        raise app.UsageError(
            "--adapters_only stores the adapters in float32 and the run's block form: "
            "drop --bf16 and --scan_blocks"
        )
    if _FORMAT.value == "diffusers" and (_ADAPTERS.value or _SCAN.value is not None or _NAME.value):
        raise app.UsageError(
            "--format=diffusers writes the whole pipeline in diffusers' layout: drop "
            "--adapters_only, --scan_blocks and --name"
        )
    if _SHARD_GB.value <= 0:
        raise app.UsageError(f"--max_shard_gb={_SHARD_GB.value}: must be > 0")
    try:
        if _FORMAT.value == "diffusers":
            out = exporter.export_diffusers(
                _WORKDIR.value,
                _OUT.value,
                bf16=_BF16.value,
                overwrite=_OVERWRITE.value,
                max_shard_bytes=int(_SHARD_GB.value * 2**30),
            )
        elif _ADAPTERS.value:
            out = exporter.export_adapters(
                _WORKDIR.value, _OUT.value, name=_NAME.value, overwrite=_OVERWRITE.value
            )
        else:
            out = exporter.export_workdir(
                _WORKDIR.value,
                _OUT.value,
                bf16=_BF16.value,
                name=_NAME.value,
                overwrite=_OVERWRITE.value,
                scan_blocks=None if _SCAN.value is None else _SCAN.value == "true",
            )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(out)


if __name__ == "__main__":
    cli.run(main)

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
    try:
        if _ADAPTERS.value:
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

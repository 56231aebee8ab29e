"""Plan a DiT training run before paying for it: memory per device and FLOPs per step.

  # Analytic (nothing compiled or allocated), for a mesh of any size:
  python -m sora_jax.plan --config=configs/tiny.py [--config.dit.model.hidden=1152 ...] \
      [--mesh=data:4,fsdp:8] [--device_kind=v5p] [--json=plan.json]
  # The real train step compiled ahead of time for a TPU slice, on any host with libtpu
  # (pip install -e ".[tpu]"; nothing runs on a TPU), the estimate beside XLA's figures:
  python -m sora_jax.plan --config=configs/dit.py:XL --topology=v5p-8 [--mesh=fsdp:4] \
      [--config.dit.rows=4 --config.dit.seq_len=8192 ...]
  # The same compiled for this machine's devices (CPU / GPU):
  python -m sora_jax.plan --config=configs/tiny.py --compile

Topologies: Cloud TPU names (v4-8, v5p-8 = 4 chips, v5p-16, v5p-32 ..., v5litepod-8 or v5e-8,
v6e-8; v4 / v5p names count TensorCores, two per chip) or 'v5p:2x2x1' / 'v5e:2x4'. The mesh
defaults to the config's over the target's chips; the rows per step are the config's. A
compiled plan ends with one line ``fits=yes|no peak_gib=<x> hbm_gib=<y>``.

See sora_jax/training/planning.py for what is counted and how.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.common import cli
from sora_jax.training import planning

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_MESH = flags.DEFINE_string(
    "mesh", None, "Mesh to plan for, e.g. 'data:4,fsdp:8' (overrides config.mesh; any size)."
)
_DEVICE = flags.DEFINE_enum(
    "device_kind", None, sorted(planning.DEVICES), "Device, for memory/peak (analytic plan)."
)
_TOPOLOGY = flags.DEFINE_string(
    "topology",
    None,
    "Compile the train step for this TPU slice (e.g. v5p-8, v5e-8, 'v5p:2x2x1'; needs "
    "libtpu) or 'local' (this machine's devices).",
)
_COMPILE = flags.DEFINE_bool("compile", False, "Compile the train step (default: local devices).")
_XLA_FLOPS = flags.DEFINE_bool("xla_flops", True, "Count FLOPs on the lowered train step.")
_JSON = flags.DEFINE_string("json", None, "Also write the plan to this JSON file.")


def _compiled(config) -> dict:
    target = planning.compile_target(_TOPOLOGY.value)
    n = len(target.devices)
    shape = (
        planning.parse_mesh(_MESH.value) if _MESH.value else planning.config_mesh_shape(config, n)
    )
    config = config_lib.validate(planning.configure_mesh(config, shape, n))
    p = planning.compiled_plan(config, target)
    print(planning.compiled_report(p))
    return p


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_lib.validate(cli.config_value(_CONFIG))
    if _TOPOLOGY.value or _COMPILE.value:
        try:
            p = _compiled(config)
        except (ValueError, planning.NeedsLibtpu) as e:
            # One line the user can act on (a bad name, no libtpu, a mesh that does not fit).
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        shape = (
            planning.parse_mesh(_MESH.value) if _MESH.value else planning.config_mesh_shape(config)
        )
        p = planning.plan(config, shape, _DEVICE.value, _XLA_FLOPS.value)
        print(planning.report(p))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(
                p, f, indent=2, default=lambda x: x.item() if isinstance(x, np.generic) else x
            )
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)

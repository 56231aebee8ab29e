"""Plan a DiT training run before paying for it: memory per device and FLOPs per step.

  python -m sora_jax.plan --config=configs/tiny.py [--config.dit.model.hidden=1152 ...] \
      [--mesh=data:4,fsdp:8] [--device_kind=v5p] [--json=plan.json]

See sora_jax/training/planning.py for what is counted and how (nothing is allocated).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.training.planning import DEVICES, config_mesh_shape, parse_mesh, plan, report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_MESH = flags.DEFINE_string(
    "mesh", None, "Mesh to plan for, e.g. 'data:4,fsdp:8' (overrides config.mesh; any size)."
)
_DEVICE = flags.DEFINE_enum("device_kind", None, sorted(DEVICES), "Device, for memory/peak.")
_XLA_FLOPS = flags.DEFINE_bool("xla_flops", True, "Count FLOPs on the lowered train step.")
_JSON = flags.DEFINE_string("json", None, "Also write the plan to this JSON file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_lib.validate(_CONFIG.value)
    shape = parse_mesh(_MESH.value) if _MESH.value else config_mesh_shape(config)
    p = plan(config, shape, _DEVICE.value, _XLA_FLOPS.value)
    print(report(p))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(
                p, f, indent=2, default=lambda x: x.item() if isinstance(x, np.generic) else x
            )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)

"""Fine-tune Wan 2.1 T2V 14B at 480p (default) or 720p x 81 frames (16 fps) on a pod, fsdp
over every chip; see configs/wan_base.py.

  python -m sora_jax.train --config=configs/wan2_1_t2v_14b.py:720p --workdir=runs/wan_14b \
      --config.init.from_pretrained=/models/Wan2.1-T2V-14B-Diffusers ...
"""

import pathlib
import runpy

from sora_jax.models import wan_presets

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("wan_base.py")))
SIZES = {"480p": (480, 832), "720p": (720, 1280)}


def get_config(size: str = "480p"):
    if size not in SIZES:
        raise ValueError(f"configs/wan2_1_t2v_14b.py: unknown size {size!r}; use {list(SIZES)}")
    return _base["wan_config"](
        wan_presets.WAN_2_1_T2V_14B, _base["WAN_2_1_VAE"], 81, *SIZES[size], fps=16
    )

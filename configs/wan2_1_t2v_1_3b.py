"""Fine-tune Wan 2.1 T2V 1.3B at 480p x 81 frames (16 fps); see configs/wan_base.py.

  python -m sora_jax.train --config=configs/wan2_1_t2v_1_3b.py --workdir=runs/wan_1_3b \
      --config.init.from_pretrained=/models/Wan2.1-T2V-1.3B-Diffusers ...
"""

import pathlib
import runpy

from sora_jax.models import wan_presets

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("wan_base.py")))


def get_config():
    return _base["wan_config"](
        wan_presets.WAN_2_1_T2V_1_3B, _base["WAN_2_1_VAE"], 81, 480, 832, fps=16
    )

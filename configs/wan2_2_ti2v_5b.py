"""Fine-tune Wan 2.2 TI2V 5B (text- and image-to-video on the 4x16x16 Wan 2.2 VAE) at
704 x 1280 x 121 frames (24 fps); see configs/wan_base.py. A share of the clips trains
image->video: their first latent frame is given, clean, at t = 0 (Wan 2.2's per-token time).

  python -m sora_jax.train --config=configs/wan2_2_ti2v_5b.py --workdir=runs/wan_5b \
      --config.init.from_pretrained=/models/Wan2.2-TI2V-5B-Diffusers ...
"""

import pathlib
import runpy

from sora_jax.models import wan_presets

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("wan_base.py")))


def get_config():
    c = _base["wan_config"](
        wan_presets.WAN_2_2_TI2V_5B, _base["WAN_2_2_VAE"], 121, 704, 1280, fps=24
    )
    c.dit.condition.rate = 0.5
    c.dit.condition.mask_types = dict(first=1.0, first_k=0.0, last_k=0.0, both_ends=0.0, random=0.0)
    return c

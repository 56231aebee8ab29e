"""DiT size presets (S, B, L, XL; the table is sora_jax.models.dit.SIZES) on the base config.

  python -m sora_jax.train --config=configs/dit.py:B --workdir=runs/dit_b
  python -m sora_jax.train --config=configs/dit.py:XL --dry_run   # parameters, FLOPs/token

The preset sets the backbone's width, depth and heads; the rest is configs/default.py, with
bf16 compute (float32 parameters) and, from L up, full rematerialisation of each block and
the blocks scanned (one compiled block: XL compiles in a fraction of the unrolled time;
`python -m sora_jax.export --scan_blocks=false` converts a checkpoint to unrolled blocks).
"""

import pathlib
import runpy

from sora_jax.models import dit as dit_lib

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(size: str = "S"):
    if size not in dit_lib.SIZES:
        raise ValueError(f"configs/dit.py: unknown size {size!r}; use one of {list(dit_lib.SIZES)}")
    c = _default["get_config"]()
    m = c.dit.model
    m.hidden, m.depth, m.num_heads = dit_lib.SIZES[size]
    m.dtype = "bfloat16"
    if size in ("L", "XL"):
        m.remat_policy = "nothing_saveable"
        m.scan_blocks = True
    return c

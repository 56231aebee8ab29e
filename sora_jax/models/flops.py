"""Parameter and FLOP counts of the DiT, analytically (no allocation, no compilation).

FLOPs count the matmuls (2 per multiply-add), which dominate a transformer; elementwise
ops, norms and the per-segment conditioning (time MLP, caption pooling) are left out.
Attention is counted as executed by a dense kernel: every query against every key of
the packed row (``seq_len``), whatever the segment mask, since that is what costs time
with masks on XLA / cuDNN (a block-sparse kernel would skip masked blocks).
"""

from __future__ import annotations

import jax
import numpy as np

from sora_jax.models import dit as dit_lib

__all__ = ["param_count", "dit_flops_per_token"]


def param_count(params) -> int:
    """Number of scalars in a (possibly abstract, possibly boxed) parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def _mlp_flops(hidden: int, mlp_ratio: float, mlp: str) -> float:
    if mlp == "swiglu":
        return 2.0 * 3 * hidden * dit_lib.swiglu_hidden(hidden, mlp_ratio)
    return 2.0 * 2 * hidden * int(hidden * mlp_ratio)


def dit_flops_per_token(model: dit_lib.DiT, seq_len: int, text_tokens: int) -> dict[str, float]:
    """Matmul FLOPs per video token of one packed row, for ``model`` (an unbound DiT).

    ``seq_len``: tokens per row; ``text_tokens``: caption tokens per row (max_segments x
    text length). Returns {'forward', 'train'} with train = 3 x forward (backward ~ twice the
    forward; a remat policy re-runs part of the forward on top of that: counted as 'remat').
    """
    h, l, m = model.hidden, seq_len, text_tokens
    mlp = _mlp_flops(h, model.mlp_ratio, model.mlp)
    # Per video token, per block: adaLN (6h), qkv (3h), attention out (h), MLP.
    video = 2.0 * h * (6 * h + 3 * h + h) + mlp
    if model.text_attention == "cross":
        # cross q and out per video token; k/v of the row's text; QK^T and AV over the text.
        row = l * (2.0 * h * 2 * h + 4.0 * m * h) + m * 2.0 * h * 2 * h
        row += l * (video + 4.0 * l * h)
    else:
        # Text stream with its own adaLN / qkv / out / MLP; attention over video + text.
        row = (l + m) * (video + 4.0 * (l + m) * h)
    per_block = row / l
    # Text projection (per text token), patch embedding, final adaLN and output.
    embed = 2.0 * model.text_dim * h * m / l + 2.0 * model.patch_dim * h
    if model.abs_positions:
        embed += 2.0 * 3 * 32 * h
    head = 2.0 * h * 2 * h + 2.0 * h * model.patch_dim
    forward = model.depth * per_block + embed + head
    remat = {"none": 0.0, "everything_saveable": 0.0}.get(model.remat_policy, 1.0)
    return {"forward": forward, "train": 3.0 * forward, "remat": remat * forward}

"""Parameter and FLOP counts of the DiT, analytically (no allocation, no compilation).

FLOPs count the matmuls (2 per multiply-add), which dominate a transformer; elementwise
ops, norms and the per-segment conditioning (time MLP, caption pooling) are left out.
Attention is counted as the chosen kernel executes it (``attention_pairs``): the dense and
Pallas kernels compute every query against every key of the packed row (``seq_len``),
whatever the segments; the blockwise kernel only the (query block, key block) pairs whose
segments overlap, i.e. about sum(s_i^2) over the row's videos (and per frame / column for
the factorised layouts), rounded up to whole blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.kernels.segments import block_overlap, layout_segments
from sora_jax.models import attention as attention_lib
from sora_jax.models import dit as dit_lib

__all__ = ["param_count", "dit_flops_per_token", "attention_pairs"]


def param_count(params) -> int:
    """Number of scalars in a (possibly abstract, possibly boxed) parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def _mlp_flops(hidden: int, mlp_ratio: float, mlp: str) -> float:
    if mlp == "swiglu":
        return 2.0 * 3 * hidden * dit_lib.swiglu_hidden(hidden, mlp_ratio)
    return 2.0 * 2 * hidden * int(hidden * mlp_ratio)


def _packed_row(seq_len: int, videos) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and (t, h, w) positions of one row holding ``videos`` (token grids)."""
    ids, pos = np.zeros(seq_len, np.int32), np.zeros((seq_len, 3), np.int32)
    start = 0
    for s, (t, h, w) in enumerate(videos, start=1):
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1)
        n = t * h * w
        if start + n > seq_len:
            raise ValueError(f"videos {list(videos)} hold more than seq_len={seq_len} tokens")
        ids[start : start + n], pos[start : start + n] = s, grid.reshape(-1, 3)
        start += n
    return ids, pos


def attention_pairs(
    model: dit_lib.DiT, seq_len: int, videos=None, platform: str | None = None
) -> float:
    """(query, key) pairs of video self-attention one block computes per row, averaged over
    the blocks' layouts, as ``model.attention_impl`` resolves on ``platform``.

    ``videos``: the (t, h, w) token grids packed in the row; None = one video filling it
    (then a factorised layout, whose groups depend on the grid, is counted as full rows).
    """
    kernel = attention_lib.resolve(model.attention_impl, platform)
    if kernel != "blockwise":
        return float(seq_len) ** 2
    bq, bk = (min(b, seq_len) for b in model.attention_blocks)
    padded = lambda n, b: -(-n // b) * b
    layouts = dit_lib.period_layouts(model.attention_layout) if videos is not None else ["thw"]
    ids, pos = _packed_row(seq_len, videos if videos is not None else [(1, 1, seq_len)])
    length = padded(padded(seq_len, bq), bk)
    ids = jnp.asarray(np.pad(ids, (0, length - seq_len)))[None]
    pos = jnp.asarray(np.pad(pos, ((0, length - seq_len), (0, 0))))[None]
    pairs = []
    for layout in layouts:
        q = layout_segments(ids, pos, layout).q
        pairs.append(float(np.sum(block_overlap(q, q, bq, bk))) * bq * bk)
    return float(np.mean(pairs))


def dit_flops_per_token(
    model: dit_lib.DiT,
    seq_len: int,
    text_tokens: int,
    videos=None,
    platform: str | None = None,
    entries: int = 1,
) -> dict[str, float]:
    """Matmul FLOPs per video token of one packed row, for ``model`` (an unbound DiT).

    ``seq_len``: tokens per row; ``text_tokens``: caption tokens per row (max_segments x
    text length); ``videos``, ``platform``: what self-attention executes (``attention_pairs``);
    ``entries``: adaLN conditioning entries per row (segments, twice that with given frames),
    each projected once (the 'segment' / 'shared' modulations; 'token' projects every token).
    Returns {'forward', 'train', 'remat', 'attention_pairs'} with train = 3 x forward
    (backward ~ twice the forward; a remat policy re-runs part of the forward on top of that:
    'remat').
    """
    h, l, m = model.hidden, seq_len, text_tokens
    pairs = attention_pairs(model, seq_len, videos, platform)
    mlp = _mlp_flops(h, model.mlp_ratio, model.mlp)
    # adaLN projections (6h wide) per block: per token, per entry, or none ('shared': the
    # one projection is counted with the embeddings).
    streams = 1 if model.text_attention == "cross" else 2
    adaln = {"token": (l + (streams - 1) * m), "segment": streams * entries, "shared": 0}
    adaln = adaln[model.modulation] * 2.0 * h * 6 * h
    # Per video token, per block: qkv (3h), attention out (h), MLP.
    video = 2.0 * h * (3 * h + h) + mlp
    if model.text_attention == "cross":
        # cross q and out per video token; k/v of the row's text; QK^T and AV over the text.
        row = l * (2.0 * h * 2 * h + 4.0 * m * h) + m * 2.0 * h * 2 * h
        row += l * video + 4.0 * pairs * h
    else:
        # Text stream with its own qkv / out / MLP; attention over video + text.
        row = (l + m) * video + 4.0 * (pairs + 2 * l * m + m * m) * h
    per_block = (row + adaln) / l
    # Text projection (per text token), patch embedding, the shared adaLN projection, the
    # final adaLN (per entry) and output.
    embed = 2.0 * model.text_dim * h * m / l + 2.0 * model.patch_dim * h
    if model.modulation == "shared":
        embed += entries * 2.0 * h * 6 * h / l
    if model.abs_positions:
        embed += 2.0 * 3 * 32 * h
    head = entries / l * 2.0 * h * 2 * h + 2.0 * h * model.patch_dim
    forward = model.depth * per_block + embed + head
    if model.text_attention == "joint":
        # The last block's text stream ends at its attention (its output is not used).
        forward -= m * (2.0 * h * h + mlp) / l
    remat = {"none": 0.0, "everything_saveable": 0.0}.get(model.remat_policy, 1.0)
    return {
        "forward": forward,
        "train": 3.0 * forward,
        "remat": remat * forward,
        "attention_pairs": pairs,
    }

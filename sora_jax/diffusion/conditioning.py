"""Conditioning on given latent frames: random training masks and their token masks.

One mechanism serves every generation mode (image->video, continuation, backward extension,
connecting clips): a per-latent-frame mask bool[t] marks the frames that are given. Their
tokens enter the DiT clean with their own diffusion time 0 (per-token time), are left out of
the loss in training, and are re-set to the given latents at every sampling step. The mask
types drawn in training are the modes' own patterns:

  first      the first latent frame (image->video)
  first_k    the first k frames, 1 <= k < t (continuation forward)
  last_k     the last k frames (extension backward)
  both_ends  k1 first and k2 last frames with a gap between (connecting two clips)
  random     each frame independently with `random_frame_prob` (interpolation, keyframes)

Every mask leaves at least one frame to generate, so videos of one latent frame (images) are
never conditioned. Masks are at the granularity of the patch grid's frames (latent frames for
a temporal patch size of 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MASK_TYPES = ("first", "first_k", "last_k", "both_ends", "random")
# Fewest latent frames each type needs (both ends plus a generated frame between them).
_MIN_FRAMES = {"first": 2, "first_k": 2, "last_k": 2, "both_ends": 3, "random": 2}


def sample_frame_mask(
    rng: np.random.Generator,
    num_frames: int,
    weights: Mapping[str, float],
    random_frame_prob: float = 0.5,
) -> tuple[str, np.ndarray] | None:
    """(mask type, bool[num_frames] given frames), or None when no type fits `num_frames`.

    The type is drawn with probabilities `weights` (renormalised over the types that fit).
    """
    names = [n for n in MASK_TYPES if weights.get(n, 0.0) > 0 and num_frames >= _MIN_FRAMES[n]]
    if not names:
        return None
    p = np.asarray([weights[n] for n in names], np.float64)
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    mask = np.zeros(num_frames, bool)
    if kind == "first":
        mask[0] = True
    elif kind == "first_k":
        mask[: rng.integers(1, num_frames)] = True
    elif kind == "last_k":
        mask[num_frames - rng.integers(1, num_frames) :] = True
    elif kind == "both_ends":
        k1 = int(rng.integers(1, num_frames - 1))
        k2 = int(rng.integers(1, num_frames - k1))
        mask[:k1], mask[num_frames - k2 :] = True, True
    else:
        # Rejection keeps the independent-frames law restricted to proper, non-empty subsets.
        while mask.all() or not mask.any():
            mask = rng.random(num_frames) < random_frame_prob
    return kind, mask


def token_mask(frame_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """bool[n] for tokens at `positions i32[n 3]` from the mask bool[t] of their grid frames."""
    return np.asarray(frame_mask, bool)[np.asarray(positions)[:, 0]]

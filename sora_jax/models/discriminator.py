"""3D patch discriminator for the VAE's adversarial loss (a PatchGAN over space and time).

``f32[b t h w 3] -> f32[b t' h' w']`` real/fake logits, one per spacetime patch: every level
halves height and width (and time where ``temporal_downsample`` says so), so each logit judges a
local patch. Its convs are ``CausalConv3d`` (causal in time, like the VAE): a 1-frame image is
judged from itself alone, so images and videos train the same discriminator.
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models.vae import CausalConv3d, PerFrameGroupNorm

__all__ = ["PatchDiscriminator3d"]


class PatchDiscriminator3d(nn.Module):
    """conv -> [conv (stride 2 in space, optionally time) -> group norm -> leaky relu] x L -> conv.

    ``channels[0]`` is the stem width, every further entry one downsampling level.
    ``temporal_downsample[l]`` halves time at level ``l`` (``1 + 2m -> 1 + m`` frames by
    keeping the even frames after the causal conv, so frame 0 stays an image of its own).
    """

    channels: Sequence[int] = (32, 64, 128)
    temporal_downsample: Sequence[bool] = (False, True)
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(self.temporal_downsample) != len(self.channels) - 1:
            raise ValueError(
                f"PatchDiscriminator3d: temporal_downsample has {len(self.temporal_downsample)} "
                f"entries, expected len(channels) - 1 = {len(self.channels) - 1}"
            )
        h = nn.leaky_relu(CausalConv3d(self.channels[0], name="conv_in")(x), 0.2)
        for level, c in enumerate(self.channels[1:]):
            h = CausalConv3d(c, name=f"conv{level}")(h)
            # Stride 2 as a subsample after the conv (CausalConv3d has no stride): the even
            # rows / columns, and the even frames (0, 2, 4, ...) when time is halved.
            h = h[:, :: 2 if self.temporal_downsample[level] else 1, ::2, ::2]
            h = PerFrameGroupNorm(self.norm_groups, name=f"norm{level}")(h)
            h = nn.leaky_relu(h, 0.2)
        logits = CausalConv3d(1, name="conv_out")(h)  # f32[b t' h' w' 1]
        return einops.rearrange(logits, "b t h w 1 -> b t h w").astype(jnp.float32)

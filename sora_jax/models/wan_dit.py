"""The Wan transformer behind the project's DiT interface, so that the trainer, the validator
and the samplers run it as they run ``sora_jax.models.dit.DiT``.

``WanDiT.__call__(x f32[b l patch_dim], t f32[b s], segment_ids i32[b l], positions i32[b l 3],
text f32[b s lt text_dim], text_mask bool[b s lt], cond_mask bool[b l] | None,
t_given f32[b s] | None) -> f32[b l patch_dim]``, as the DiT's. What it translates:

  time      t in [0, 1] (the rectified flow's: x_t = (1 - t) x0 + t noise) is Wan's sigma;
            the transformer sees sigma * 1000, its training timesteps. Wan predicts the
            velocity noise - x0, the rectified-flow target.
  given     tokens of ``cond_mask`` take ``t_given`` (default 0, clean) as a second time entry
            per segment (Wan 2.2 TI2V's per-token time).
  text      Wan attends to every text state of its caption, the padding included, and was
            trained on UMT5 states zeroed past the prompt: the states outside ``text_mask``
            are zeroed and every token of the segment's caption attended.

Its params are ``{'transformer': <WanTransformer params>}``, the layout
``wan_transformer_weights`` maps to diffusers' keys (LoRA adapters, when configured, are extra
``lora_a`` / ``lora_b`` leaves beside the kernels they adapt).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sora_jax.models import wan_transformer as wt
from sora_jax.models.lora import LoraSpec

TIMESTEPS = 1000.0  # Wan's training timesteps per unit of sigma


class WanDiT(nn.Module):
    """A ``WanTransformer`` called as a DiT (module docstring)."""

    config: wt.WanTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"
    attention_blocks: tuple[int, int] = (512, 512)
    attention_shard: bool = True
    remat: bool = False
    lora: LoraSpec | None = None  # see WanTransformer.lora

    @property
    def patch_dim(self) -> int:
        return self.config.patch_in

    @nn.compact
    def __call__(self, x, t, segment_ids, positions, text, text_mask, cond_mask=None, t_given=None):
        timestep = t.astype(jnp.float32) * TIMESTEPS
        time_index = None
        if cond_mask is not None:
            given = 0.0 if t_given is None else t_given.astype(jnp.float32) * TIMESTEPS
            timestep, time_index = wt.token_times(timestep, segment_ids, cond_mask, given)
        text = jnp.where(text_mask[..., None], text, 0.0)
        return wt.WanTransformer(
            self.config,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            attention_blocks=self.attention_blocks,
            attention_shard=self.attention_shard,
            remat=self.remat,
            lora=self.lora,
            name="transformer",
        )(x, segment_ids, positions, timestep, text, jnp.ones_like(text_mask), time_index)

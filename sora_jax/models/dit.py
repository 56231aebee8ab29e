"""Diffusion Transformer over patch-n'-packed latent tokens.

Input rows hold several videos ("segments") packed one after the other (see
``sora_jax.data.packing``). Everything is per segment, so packing is invisible to each
video: self-attention is masked to the token's own segment, cross-attention sees only the
text of its own segment, and the conditioning (diffusion time + pooled text) is computed
per segment and gathered per token for adaLN-Zero modulation. Positions enter via 3D RoPE
(relative) and optionally absolute embeddings of the frame index and the offset from the
segment's centre, so any duration / resolution / aspect ratio is handled without change.
Padding tokens (segment 0) are inert and their outputs are zero.

Conditioning on given frames (image->video, extension, connecting clips) uses per-token
diffusion time: the tokens of given latent frames enter clean with their own time t = 0
(``t_tok``), optionally tagged by a learned "is-condition" embedding (``cond_mask``), while
the others are noised to the segment's time. Without ``t_tok`` the model is exactly the
per-segment one, so checkpoints trained before conditioning existed load and behave as before.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models.attention import attention, segment_mask
from sora_jax.models.rope import rope_3d

__all__ = ["timestep_embedding", "absolute_position_features", "DiTBlock", "DiT"]


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``f32[...] -> f32[... dim]`` of (already scaled) times."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    ang = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(ang), jnp.sin(ang)], axis=-1)


def absolute_position_features(segment_ids, positions, dim: int = 32) -> jax.Array:
    """Sinusoids of the frame index and of the centred (h, w) of each token.

    ``segment_ids i32[b l]``, ``positions i32[b l 3]`` -> ``f32[b l 3*dim]``; each segment is
    centred on its own grid, so the features do not depend on where it is packed.
    """
    b, l = segment_ids.shape
    # Largest position of each token's segment on each axis; half of it is the centre.
    last = jnp.zeros((b, l + 1, 3), positions.dtype)
    last = last.at[jnp.arange(b)[:, None], segment_ids].max(positions)
    last = jnp.take_along_axis(last, segment_ids[..., None], axis=1)
    pos = positions.astype(jnp.float32)
    centred = pos - last.astype(jnp.float32) / 2.0
    coords = (pos[..., 0], centred[..., 1], centred[..., 2])
    return jnp.concatenate([timestep_embedding(x, dim, max_period=100.0) for x in coords], -1)


def _dense(features: int, name: str, axes: tuple, dtype, kernel_init=None) -> nn.Dense:
    """A Dense whose kernel (and bias, by its output axis) carry logical axis names."""
    kernel_init = kernel_init or nn.linear.default_kernel_init
    return nn.Dense(
        features,
        dtype=dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
    )


def _norm_init(init=nn.initializers.ones_init()):
    return nn.with_logical_partitioning(init, ("norm",))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


def _tokens(x: jax.Array) -> jax.Array:
    """Token activations f[b l hidden], placed by the logical rules (no-op without rules)."""
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _heads(x: jax.Array) -> jax.Array:
    """Per-head activations f[b l h d]."""
    return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention (QK-norm, 3D RoPE), cross-attention to text, MLP.

    ``x f[b l hidden]``, ``c f[b l hidden]`` (per-token conditioning), ``positions
    i32[b l 3]``, ``self_mask bool[b 1 l l]``, ``text f[b m hidden]``, ``cross_mask
    bool[b 1 l m]`` -> ``f[b l hidden]``.
    """

    hidden: int
    num_heads: int
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, c, positions, self_mask, text, cross_mask):
        h, d = self.num_heads, self.hidden // self.num_heads
        dense = lambda n, name, axes, **kw: _dense(n, name, axes, self.dtype, **kw)
        norm = lambda name: nn.LayerNorm(
            epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype, name=name
        )
        mod = dense(6 * self.hidden, "adaln", ("embed", "mlp"), kernel_init=nn.initializers.zeros)(
            nn.silu(c)
        )
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)

        # Self-attention within the segment.
        y = _modulate(norm("norm_attn")(x), shift_a, scale_a)
        qkv = dense(3 * self.hidden, "qkv", ("embed", "heads"))(y).reshape(*y.shape[:2], 3, h, d)
        q, k, v = (_heads(qkv[:, :, i]) for i in range(3))
        # QK-norm keeps attention logits bounded (stable training at any length).
        q = nn.RMSNorm(dtype=self.dtype, scale_init=_norm_init(), name="q_norm")(q)
        k = nn.RMSNorm(dtype=self.dtype, scale_init=_norm_init(), name="k_norm")(k)
        q, k = rope_3d(q, positions, self.rope_theta), rope_3d(k, positions, self.rope_theta)
        a = attention(q, k, v, self_mask, self.attention_impl).reshape(*x.shape[:2], self.hidden)
        x = _tokens(x + gate_a * dense(self.hidden, "attn_out", ("heads", "embed"))(a))

        # Cross-attention to the segment's own text (plain pre-norm residual).
        y = nn.LayerNorm(
            epsilon=1e-6,
            dtype=self.dtype,
            scale_init=_norm_init(),
            bias_init=_norm_init(nn.initializers.zeros_init()),
            name="norm_cross",
        )(x)
        q = dense(self.hidden, "cross_q", ("embed", "heads"))(y).reshape(*y.shape[:2], h, d)
        kv = dense(2 * self.hidden, "cross_kv", ("embed", "heads"))(text)
        kv = kv.reshape(*text.shape[:2], 2, h, d)
        k, v = kv[:, :, 0], kv[:, :, 1]
        q = nn.RMSNorm(dtype=self.dtype, scale_init=_norm_init(), name="cross_q_norm")(q)
        k = nn.RMSNorm(dtype=self.dtype, scale_init=_norm_init(), name="cross_k_norm")(k)
        a = attention(q, k, v, cross_mask, self.attention_impl).reshape(*x.shape[:2], self.hidden)
        x = x + dense(self.hidden, "cross_out", ("heads", "embed"))(a)

        # MLP.
        y = _modulate(norm("norm_mlp")(x), shift_m, scale_m)
        y = dense(int(self.hidden * self.mlp_ratio), "mlp_in", ("embed", "mlp"))(y)
        y = dense(self.hidden, "mlp_out", ("mlp", "embed"))(nn.gelu(y))
        return _tokens(x + gate_m * y)


class DiT(nn.Module):
    """Diffusion Transformer on packed token rows (predicts e.g. the flow velocity).

    ``__call__(x f32[b l patch_dim], t f32[b s], segment_ids i32[b l], positions i32[b l 3],
    text f32[b s lt text_dim], text_mask bool[b s lt], t_tok f32[b l] | None,
    cond_mask bool[b l] | None) -> f32[b l patch_dim]``

    ``t[:, j]`` (in [0, 1]) and ``text[:, j]`` belong to segment ``j + 1``; segment ids must
    be in ``[0, s]`` (0 = padding). Outputs on padding tokens are exactly zero. ``t_tok``
    (optional) replaces ``t`` by a time per token (0 on clean conditioning tokens);
    ``cond_mask`` marks the conditioning tokens for the ``cond_embedding`` (if enabled).
    """

    patch_dim: int
    hidden: int
    depth: int
    num_heads: int
    text_dim: int
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str = "xla"
    time_freq_dim: int = 256
    # Absolute positions added to the tokens on top of the relative RoPE: the frame index and
    # the (h, w) offset from the segment's centre (so any size / aspect works). Lets the model
    # learn where things are in the frame, not only relative to each other.
    abs_positions: bool = False
    # A learned vector added to the tokens of given (clean, t = 0) frames, on top of their
    # time: an explicit "this is a condition" flag. Zero-initialised.
    cond_embedding: bool = False

    @nn.compact
    def __call__(self, x, t, segment_ids, positions, text, text_mask, t_tok=None, cond_mask=None):
        b, l, _ = x.shape
        s, lt = text.shape[1], text.shape[2]
        if self.hidden % self.num_heads:
            raise ValueError(
                f"DiT: hidden {self.hidden} not divisible by num_heads {self.num_heads}"
            )
        if x.shape[-1] != self.patch_dim:
            raise ValueError(f"DiT: token dim {x.shape[-1]} != patch_dim {self.patch_dim}")
        if t.shape != (b, s) or text_mask.shape != (b, s, lt) or text.shape[-1] != self.text_dim:
            raise ValueError(
                f"DiT: inconsistent t {t.shape}, text {text.shape}, text_mask "
                f"{text_mask.shape} (expected t [b s], text [b s lt {self.text_dim}])"
            )
        if segment_ids.shape != (b, l) or positions.shape != (b, l, 3):
            raise ValueError(
                f"DiT: segment_ids {segment_ids.shape} / positions {positions.shape} "
                f"do not match tokens {x.shape}"
            )
        for name, a in (("t_tok", t_tok), ("cond_mask", cond_mask)):
            if a is not None and a.shape != (b, l):
                raise ValueError(f"DiT: {name} {a.shape} does not match tokens {x.shape[:2]}")
        dense = lambda n, name, axes, **kw: _dense(n, name, axes, self.dtype, **kw)
        text = text.astype(self.dtype)

        # Conditioning: diffusion time + pooled text of the token's segment, c_tok[b l hidden].
        time_in = dense(self.hidden, "time_mlp_in", (None, "embed"))
        time_out = dense(self.hidden, "time_mlp_out", ("mlp", "embed"))
        time_mlp = lambda tt: time_out(
            nn.silu(time_in(timestep_embedding(tt * 1000.0, self.time_freq_dim)))
        )
        m = text_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(text * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)  # [b s text_dim]
        c = dense(self.hidden, "text_pool_proj", ("text_embed", "embed"))(pooled)  # [b s hidden]
        if t_tok is None:
            c = time_mlp(t) + c
        # Gather per token; padding takes segment 1's (its outputs are zeroed anyway).
        c_tok = jnp.take_along_axis(c, jnp.clip(segment_ids - 1, 0, s - 1)[..., None], axis=1)
        if t_tok is not None:
            c_tok = time_mlp(t_tok) + c_tok

        # Text keys of segment j+1 carry id j+1, so a token only sees its own caption.
        text_kv = dense(self.hidden, "text_proj", ("text_embed", "embed"))(text).reshape(
            b, s * lt, self.hidden
        )
        text_ids = jnp.where(text_mask, jnp.arange(1, s + 1, dtype=jnp.int32)[None, :, None], 0)
        cross_mask = segment_mask(segment_ids, text_ids.reshape(b, s * lt))
        self_mask = segment_mask(segment_ids, segment_ids)

        h = dense(self.hidden, "patch_embed", ("patch", "embed"))(x.astype(self.dtype))
        if self.abs_positions:
            h = h + dense(self.hidden, "pos_embed", (None, "embed"))(
                absolute_position_features(segment_ids, positions)
            )
        if self.cond_embedding:
            # Created even without a mask, so that init makes it and every call finds it.
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
            flag = self.param("cond_embed", zeros, (self.hidden,), jnp.float32)
            if cond_mask is not None:
                h = h + cond_mask[..., None].astype(self.dtype) * flag.astype(self.dtype)
        h = _tokens(h)
        for i in range(self.depth):
            h = DiTBlock(
                self.hidden,
                self.num_heads,
                self.mlp_ratio,
                self.rope_theta,
                self.dtype,
                self.attention_impl,
                name=f"block_{i}",
            )(h, c_tok, positions, self_mask, text_kv, cross_mask)

        mod = dense(
            2 * self.hidden, "final_adaln", ("embed", "mlp"), kernel_init=nn.initializers.zeros
        )(nn.silu(c_tok))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = _modulate(
            nn.LayerNorm(
                epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype, name="final_norm"
            )(h),
            shift,
            scale,
        )
        out = dense(
            self.patch_dim, "final_out", ("embed", "patch"), kernel_init=nn.initializers.zeros
        )(h)
        return out.astype(jnp.float32) * (segment_ids > 0)[..., None]

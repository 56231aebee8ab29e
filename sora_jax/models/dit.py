"""Diffusion Transformer over patch-n'-packed latent tokens.

Input rows hold several videos ("segments") packed one after the other (see
``sora_jax.data.packing``). Everything is per segment, so packing is invisible to each
video: self-attention is masked to the token's own segment, text is seen only by the tokens
of its own segment, and the conditioning (diffusion time + pooled text) is computed per
segment and gathered per token for adaLN-Zero modulation. Positions enter via 3D RoPE
(relative) and optionally absolute embeddings of the frame index and the offset from the
segment's centre, so any duration / resolution / aspect ratio is handled without change.
Padding tokens (segment 0) are inert and their outputs are zero.

Options (all per block, selected in config; defaults reproduce the original model):
  * text conditioning: ``'cross'`` (cross-attention to the segment's caption) or ``'joint'``
    (MMDiT style: a text stream with its own weights, video and text tokens of a segment
    attend jointly; RoPE rotates the video tokens only);
  * ``'full'`` 3D self-attention, or ``'factorised'``: blocks alternate spatial attention
    (same frame) and temporal attention (same (h, w)). Tokens are grouped by frame / column
    (``kernels.segments.layout_segments``), so on the block-skipping kernels each group costs
    its own size squared;
  * GELU or SwiGLU MLP; compute ``dtype`` (e.g. bfloat16) over ``param_dtype`` (float32)
    parameters; rematerialisation of each block with a ``jax.checkpoint_policies`` policy.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) and block
boundaries / q, k, v carry logical constraints, for sharding by rules; without rules in
context they do nothing. Initialised variables are boxed: ``nn.unbox`` them for plain arrays.

Conditioning on given frames (image->video, extension, connecting clips) uses per-token
diffusion time: the tokens of given latent frames enter clean with their own time t = 0
(``t_tok``), optionally tagged by a learned "is-condition" embedding (``cond_mask``), while
the others are noised to the segment's time. Without ``t_tok`` the model is exactly the
per-segment one, so checkpoints trained before conditioning existed load and behave as before.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.common import config_checks as cc
from sora_jax.data import packing
from sora_jax.diffusion import conditioning
from sora_jax.kernels import blockwise
from sora_jax.kernels.segments import Segments, layout_segments
from sora_jax.models import attention as attention_lib
from sora_jax.models import geometry
from sora_jax.models.rope import rope_3d
from sora_jax.parallel.axes import EMBED, HEADS, MLP, NORM, PATCH, QKV, TEXT_EMBED, TOKENS

__all__ = [
    "timestep_embedding",
    "absolute_position_features",
    "swiglu_hidden",
    "BlockSegments",
    "block_segments",
    "DiTBlock",
    "DiT",
    "SIZES",
    "MLPS",
    "TEXT_ATTENTIONS",
    "ATTENTION_LAYOUTS",
    "REMAT_POLICIES",
    "DTYPES",
]

# Standard DiT sizes (Peebles & Xie): (hidden, depth, num_heads).
SIZES = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
MLPS = ("gelu", "swiglu")
TEXT_ATTENTIONS = ("cross", "joint")
ATTENTION_LAYOUTS = ("full", "factorised")
# 'none': no rematerialisation; the others name jax.checkpoint_policies ('nothing_saveable'
# recomputes the whole block in the backward pass, 'dots_saveable' keeps matmul outputs).
REMAT_POLICIES = (
    "none",
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


def swiglu_hidden(hidden: int, mlp_ratio: float) -> int:
    """SwiGLU width: 2/3 of the GELU MLP's (same parameter count), rounded up to 8."""
    return 8 * math.ceil(2 * hidden * mlp_ratio / 3 / 8)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSegments:
    """The attention ids of one block's layout (see ``kernels.segments``).

    ``video``: video self-attention (the layout's groups); ``cross``: video queries to the
    text tokens; 'joint' blocks use ``joint`` (video then text tokens, full layout) or, with a
    factorised layout, ``video`` + ``cross`` merged for video queries and ``text`` (text
    queries to video then text keys).
    """

    video: Segments | None = None
    cross: Segments | None = None
    joint: Segments | None = None
    text: Segments | None = None


def block_segments(
    segment_ids, text_ids, positions, layout: str, text_attention: str
) -> BlockSegments:
    """``segment_ids i32[b l]``, ``text_ids i32[b m]``, ``positions i32[b l 3]`` -> the ids of
    a block with ``layout`` ('thw', 'hw' or 't'); computed once per forward pass."""
    cross = Segments(segment_ids, text_ids)
    if text_attention == "cross":
        return BlockSegments(layout_segments(segment_ids, positions, layout), cross)
    both = jnp.concatenate([segment_ids, text_ids], axis=1)
    if layout == "thw":
        return BlockSegments(joint=Segments(both))
    video = layout_segments(segment_ids, positions, layout)
    return BlockSegments(video, cross, text=Segments(text_ids, both))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


class _Layers:
    """Dense / norm factories that name the logical axes of their parameters."""

    def __init__(self, dtype, param_dtype):
        self.dtype, self.param_dtype = dtype, param_dtype

    def dense(self, n, name, axes, kernel_init=nn.initializers.lecun_normal()):
        return nn.Dense(
            n,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            kernel_init=nn.with_logical_partitioning(kernel_init, axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        )

    def plain_norm(self, name):
        """LayerNorm without parameters (adaLN supplies scale and shift)."""
        return nn.LayerNorm(
            epsilon=1e-6,
            use_bias=False,
            use_scale=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def layer_norm(self, name):
        return nn.LayerNorm(
            epsilon=1e-6,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)),
        )

    def rms_norm(self, name):
        return nn.RMSNorm(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
        )


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention (QK-norm, 3D RoPE), text conditioning, MLP.

    ``x f[b l hidden]``, ``c f[b l hidden]`` (per-token conditioning), ``positions
    i32[b l 3]``, ``segments`` (``BlockSegments``: who attends to whom), ``text f[b m hidden]``,
    ``text_c f[b m hidden]`` (conditioning of each text token, used by 'joint' only)
    -> ``(x f[b l hidden], text f[b m hidden])`` (text unchanged by 'cross' blocks).
    """

    hidden: int
    num_heads: int
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"
    param_dtype: jnp.dtype = jnp.float32
    mlp: str = "gelu"
    text_attention: str = "cross"
    attention_blocks: tuple[int, int] = (512, 512)  # (query, key) block sizes of the kernels
    attention_shard: bool = True  # run attention per device under shard_map (see attention.py)

    def _attend(self, q, k, v, segments, return_lse=False):
        bq, bk = self.attention_blocks
        return attention_lib.attention(
            q,
            k,
            v,
            segments,
            self.attention_impl,
            block_q=bq,
            block_kv=bk,
            shard=self.attention_shard,
            return_lse=return_lse,
        )

    def _mlp(self, layers, y, prefix=""):
        if self.mlp == "gelu":
            y = layers.dense(int(self.hidden * self.mlp_ratio), prefix + "mlp_in", (EMBED, MLP))(y)
            y = nn.gelu(y)
        else:
            gate, up = jnp.split(
                layers.dense(
                    2 * swiglu_hidden(self.hidden, self.mlp_ratio),
                    prefix + "mlp_in",
                    (EMBED, MLP),
                )(y),
                2,
                axis=-1,
            )
            y = nn.silu(gate) * up
        return layers.dense(self.hidden, prefix + "mlp_out", (MLP, EMBED))(y)

    def _qkv(self, layers, y, prefix=""):
        """``f[b n hidden] -> 3 x f[b n heads d]``, q and k RMS-normalised (QK-norm)."""
        h, d = self.num_heads, self.hidden // self.num_heads
        qkv = layers.dense(3 * self.hidden, prefix + "qkv", (EMBED, HEADS))(y)
        q, k, v = (x[:, :, 0] for x in jnp.split(qkv.reshape(*y.shape[:2], 3, h, d), 3, axis=2))
        # QK-norm keeps attention logits bounded (stable training at any length).
        q = layers.rms_norm(prefix + "q_norm")(q)
        k = layers.rms_norm(prefix + "k_norm")(k)
        return tuple(nn.with_logical_constraint(a, QKV) for a in (q, k, v))

    @nn.compact
    def __call__(self, x, c, positions, segments, text, text_c=None):
        layers = _Layers(self.dtype, self.param_dtype)
        b, l, _ = x.shape
        mod = layers.dense(6 * self.hidden, "adaln", (EMBED, MLP), nn.initializers.zeros)(
            nn.silu(c)
        )
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)

        y = _modulate(layers.plain_norm("norm_attn")(x), shift_a, scale_a)
        q, k, v = self._qkv(layers, y)
        q, k = rope_3d(q, positions, self.rope_theta), rope_3d(k, positions, self.rope_theta)
        if self.text_attention == "joint":
            # MMDiT: the text stream has its own weights; both attend over video + text.
            tmod = layers.dense(6 * self.hidden, "text_adaln", (EMBED, MLP), nn.initializers.zeros)(
                nn.silu(text_c)
            )
            t_shift_a, t_scale_a, t_gate_a, t_shift_m, t_scale_m, t_gate_m = jnp.split(
                tmod, 6, axis=-1
            )
            yt = _modulate(layers.plain_norm("text_norm_attn")(text), t_shift_a, t_scale_a)
            tq, tk, tv = self._qkv(layers, yt, "text_")
            cat = lambda u, w: jnp.concatenate([u, w], axis=1)
            if segments.joint is not None:
                a = self._attend(cat(q, tq), cat(k, tk), cat(v, tv), segments.joint)
                a, at = a[:, :l], a[:, l:]
            else:
                # Video queries see their group's video keys and their segment's text: two
                # partial attentions merged exactly through their log-sum-exps.
                parts = [
                    self._attend(q, k, v, segments.video, return_lse=True),
                    self._attend(q, tk, tv, segments.cross, return_lse=True),
                ]
                a = blockwise.merge(parts)[0]
                at = self._attend(tq, cat(k, tk), cat(v, tv), segments.text)
            a, at = a.reshape(b, l, self.hidden), at.reshape(b, -1, self.hidden)
            text = text + t_gate_a * layers.dense(self.hidden, "text_attn_out", (HEADS, EMBED))(at)
            yt = _modulate(layers.plain_norm("text_norm_mlp")(text), t_shift_m, t_scale_m)
            text = text + t_gate_m * self._mlp(layers, yt, "text_")
        else:
            a = self._attend(q, k, v, segments.video).reshape(b, l, self.hidden)
        x = x + gate_a * layers.dense(self.hidden, "attn_out", (HEADS, EMBED))(a)
        x = nn.with_logical_constraint(x, TOKENS)

        if self.text_attention == "cross":
            # Cross-attention to the segment's own text (plain pre-norm residual).
            h, d = self.num_heads, self.hidden // self.num_heads
            y = layers.layer_norm("norm_cross")(x)
            q = layers.dense(self.hidden, "cross_q", (EMBED, HEADS))(y).reshape(b, l, h, d)
            kv = layers.dense(2 * self.hidden, "cross_kv", (EMBED, HEADS))(text)
            k, v = (u[:, :, 0] for u in jnp.split(kv.reshape(*text.shape[:2], 2, h, d), 2, 2))
            q = layers.rms_norm("cross_q_norm")(q)
            k = layers.rms_norm("cross_k_norm")(k)
            q, k, v = (nn.with_logical_constraint(u, QKV) for u in (q, k, v))
            a = self._attend(q, k, v, segments.cross).reshape(b, l, self.hidden)
            x = x + layers.dense(self.hidden, "cross_out", (HEADS, EMBED))(a)

        y = _modulate(layers.plain_norm("norm_mlp")(x), shift_m, scale_m)
        x = nn.with_logical_constraint(x + gate_m * self._mlp(layers, y), TOKENS)
        return x, text


class DiT(nn.Module):
    """Diffusion Transformer on packed token rows (predicts e.g. the flow velocity).

    ``__call__(x f32[b l patch_dim], t f32[b s], segment_ids i32[b l], positions i32[b l 3],
    text f32[b s lt text_dim], text_mask bool[b s lt], t_tok f32[b l] | None,
    cond_mask bool[b l] | None) -> f32[b l patch_dim]``

    ``t[:, j]`` (in [0, 1]) and ``text[:, j]`` belong to segment ``j + 1``; segment ids must
    be in ``[0, s]`` (0 = padding). Outputs on padding tokens are exactly zero. ``t_tok``
    (optional) replaces ``t`` by a time per token (0 on clean conditioning tokens);
    ``cond_mask`` marks the conditioning tokens for the ``cond_embedding`` (if enabled).
    With ``text_tokens`` each row's caption tokens are packed into that many before the text
    projections (see the attribute).
    """

    patch_dim: int
    hidden: int
    depth: int
    num_heads: int
    text_dim: int
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32  # compute dtype (activations); outputs are float32
    attention_impl: str = "auto"
    attention_blocks: tuple[int, int] = (512, 512)
    attention_shard: bool = True
    time_freq_dim: int = 256
    # Absolute positions added to the tokens on top of the relative RoPE: the frame index and
    # the (h, w) offset from the segment's centre (so any size / aspect works). Lets the model
    # learn where things are in the frame, not only relative to each other.
    abs_positions: bool = False
    # A learned vector added to the tokens of given (clean, t = 0) frames, on top of their
    # time: an explicit "this is a condition" flag. Zero-initialised.
    cond_embedding: bool = False
    param_dtype: jnp.dtype = jnp.float32
    mlp: str = "gelu"  # MLPS
    text_attention: str = "cross"  # TEXT_ATTENTIONS
    attention_layout: str = "full"  # ATTENTION_LAYOUTS
    remat_policy: str = "none"  # REMAT_POLICIES
    # Caption tokens per row after packing the row's captions: the valid tokens of its
    # segments' captions, in slot order, then padding. 0 (or >= s * lt): every slot's lt tokens.
    # Text projections and cross-attention then cost text_tokens per row, not
    # max_segments * lt; the data must keep each row's captions within it
    # (`packing.pack(..., text_tokens=)`): tokens past it are not seen.
    text_tokens: int = 0

    def _check_options(self):
        for name, value, options in (
            ("mlp", self.mlp, MLPS),
            ("text_attention", self.text_attention, TEXT_ATTENTIONS),
            ("attention_layout", self.attention_layout, ATTENTION_LAYOUTS),
            ("remat_policy", self.remat_policy, REMAT_POLICIES),
        ):
            if value not in options:
                raise ValueError(f"DiT: {name}={value!r}; choose one of {options}")
        if self.text_tokens < 0:
            raise ValueError(f"DiT: text_tokens={self.text_tokens} must be >= 0")
        if self.hidden % self.num_heads:
            raise ValueError(
                f"DiT: hidden {self.hidden} not divisible by num_heads {self.num_heads}"
            )

    def _block_class(self):
        if self.remat_policy == "none":
            return DiTBlock
        policy = getattr(jax.checkpoint_policies, self.remat_policy)
        return nn.remat(DiTBlock, policy=policy)

    def _layouts(self) -> list[str]:
        """Per block: 'thw' (full 3D), or alternating 'hw' (spatial) / 't' (temporal)."""
        if self.attention_layout == "full":
            return ["thw"] * self.depth
        return ["hw" if i % 2 == 0 else "t" for i in range(self.depth)]

    @nn.compact
    def __call__(self, x, t, segment_ids, positions, text, text_mask, t_tok=None, cond_mask=None):
        b, l, _ = x.shape
        s, lt = text.shape[1], text.shape[2]
        self._check_options()
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
        layers = _Layers(self.dtype, self.param_dtype)
        text = text.astype(self.dtype)

        # Conditioning: diffusion time + pooled text of the token's segment, c_tok[b l hidden].
        time_in = layers.dense(self.hidden, "time_mlp_in", (None, MLP))
        time_out = layers.dense(self.hidden, "time_mlp_out", (MLP, EMBED))
        time_mlp = lambda tt: time_out(
            nn.silu(time_in(timestep_embedding(tt * 1000.0, self.time_freq_dim)))
        )
        m = text_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(text * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)  # [b s text_dim]
        c_pool = layers.dense(self.hidden, "text_pool_proj", (TEXT_EMBED, EMBED))(pooled)
        c_seg = time_mlp(t) + c_pool  # [b s hidden]
        # Gather per token; padding takes segment 1's (its outputs are zeroed anyway).
        seg_index = jnp.clip(segment_ids - 1, 0, s - 1)[..., None]
        if t_tok is None:
            c_tok = jnp.take_along_axis(c_seg, seg_index, axis=1)
        else:
            c_tok = time_mlp(t_tok) + jnp.take_along_axis(c_pool, seg_index, axis=1)

        # Text tokens of segment j+1 carry id j+1, so a token only sees its own caption.
        text = text.reshape(b, s * lt, -1)
        text_ids = jnp.where(text_mask, jnp.arange(1, s + 1, dtype=jnp.int32)[None, :, None], 0)
        text_ids = text_ids.reshape(b, s * lt)
        text_slot = jnp.broadcast_to(jnp.arange(s * lt) // lt, (b, s * lt))
        if 0 < self.text_tokens < s * lt:
            # Pack the row's caption tokens: valid ones first (a stable sort keeps slot order).
            keep = jnp.argsort(text_ids == 0, axis=1, stable=True)[:, : self.text_tokens]
            text = jnp.take_along_axis(text, keep[..., None], axis=1)
            text_ids = jnp.take_along_axis(text_ids, keep, axis=1)
            text_slot = keep // lt
        text_kv = layers.dense(self.hidden, "text_proj", (TEXT_EMBED, EMBED))(text)
        segments = {
            layout: block_segments(segment_ids, text_ids, positions, layout, self.text_attention)
            for layout in dict.fromkeys(self._layouts())
        }
        text_c = None
        if self.text_attention == "joint":
            text_c = jnp.take_along_axis(c_seg, text_slot[..., None], axis=1)  # [b m hidden]

        h = layers.dense(self.hidden, "patch_embed", (PATCH, EMBED))(x.astype(self.dtype))
        if self.abs_positions:
            h = h + layers.dense(self.hidden, "pos_embed", (None, EMBED))(
                absolute_position_features(segment_ids, positions)
            )
        if self.cond_embedding:
            # Created even without a mask, so that init makes it and every call finds it.
            flag = self.param(
                "cond_embed",
                nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
                (self.hidden,),
                self.param_dtype,
            )
            if cond_mask is not None:
                h = h + cond_mask[..., None].astype(self.dtype) * flag.astype(self.dtype)
        h = nn.with_logical_constraint(h, TOKENS)
        block = self._block_class()
        for i, layout in enumerate(self._layouts()):
            h, text_kv = block(
                hidden=self.hidden,
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                rope_theta=self.rope_theta,
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                param_dtype=self.param_dtype,
                mlp=self.mlp,
                text_attention=self.text_attention,
                attention_blocks=self.attention_blocks,
                attention_shard=self.attention_shard,
                name=f"block_{i}",
            )(h, c_tok, positions, segments[layout], text_kv, text_c)

        mod = layers.dense(2 * self.hidden, "final_adaln", (EMBED, MLP), nn.initializers.zeros)(
            nn.silu(c_tok)
        )
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = _modulate(layers.plain_norm("final_norm")(h), shift, scale)
        out = layers.dense(self.patch_dim, "final_out", (EMBED, PATCH), nn.initializers.zeros)(h)
        return out.astype(jnp.float32) * (segment_ids > 0)[..., None]


def validate_config(config):
    """Checks config.dit.* (its `train` section is checked with the other stages' trainers,
    its split over the mesh with the mesh); data and text must be valid already."""
    dc, dm = config.dit, config.dit.model
    cc.positive(
        config,
        "dit.model.hidden",
        "dit.model.depth",
        "dit.model.num_heads",
        "dit.model.mlp_ratio",
        "dit.seq_len",
        "dit.rows",
        "dit.max_segments",
        "dit.latent_cache_size",
    )
    cc.check(
        dm.hidden % dm.num_heads == 0 and (dm.hidden // dm.num_heads) % 2 == 0,
        "dit.model.num_heads",
        dm.num_heads,
        f"must divide dit.model.hidden={dm.hidden} into even head sizes",
    )
    cc.check(
        len(dc.patch) == 3 and all(p > 0 for p in dc.patch),
        "dit.patch",
        dc.patch,
        "must be three positive sizes (t, h, w)",
    )
    cc.check(
        0.0 <= dc.first_frames <= 1.0, "dit.first_frames", dc.first_frames, "must be in [0, 1]"
    )
    cc.check(0.0 <= dc.text_dropout < 1.0, "dit.text_dropout", dc.text_dropout, "must be in [0, 1)")
    tt = dc.text_tokens
    cc.check(
        tt == 0 or tt >= config.text.max_length,
        "dit.text_tokens",
        tt,
        f"must be 0 (off) or hold one whole caption (>= text.max_length={config.text.max_length})",
    )
    _validate_condition(config)
    _validate_options(config)
    packing.config_row_shapes(config)
    source = config.data.source
    cc.check(
        not dc.pack_lengths or source == "moving_shapes",
        "dit.pack_lengths",
        dc.pack_lengths,
        f"length-bucketed batches need the in-memory latent cache (data.source='moving_shapes'), "
        f"not {source!r}",
    )
    d = config.data
    longest = max(
        geometry.num_tokens(config, f, *r) for f in d.frame_choices for r in d.resolutions
    )
    cc.check(
        longest <= dc.seq_len,
        "dit.seq_len",
        dc.seq_len,
        f"the largest training video has {longest} tokens; seq_len must hold it",
    )


def _validate_condition(config):
    k = config.dit.condition
    cc.check(0.0 <= k.rate <= 1.0, "dit.condition.rate", k.rate, "must be in [0, 1]")
    types = dict(k.mask_types)
    cc.check(
        set(types) <= set(conditioning.MASK_TYPES),
        "dit.condition.mask_types",
        sorted(types),
        f"keys must be among {conditioning.MASK_TYPES}",
    )
    cc.check(
        all(w >= 0 for w in types.values()) and sum(types.values()) > 0,
        "dit.condition.mask_types",
        types,
        "weights must be >= 0 with a positive sum",
    )
    cc.check(
        0.0 < k.random_frame_prob < 1.0,
        "dit.condition.random_frame_prob",
        k.random_frame_prob,
        "must be in (0, 1)",
    )
    cc.check(0.0 <= k.noise < 1.0, "dit.condition.noise", k.noise, "must be in [0, 1)")


def _validate_options(config):
    cc.one_of(config, "dit.model.mlp", MLPS)
    cc.one_of(config, "dit.model.text_attention", TEXT_ATTENTIONS)
    cc.one_of(config, "dit.model.attention_layout", ATTENTION_LAYOUTS)
    cc.one_of(config, "dit.model.dtype", tuple(DTYPES))
    cc.one_of(config, "dit.model.remat_policy", REMAT_POLICIES)
    cc.one_of(config, "dit.model.attention_impl", attention_lib.IMPLEMENTATIONS)
    cc.positive(config, "dit.model.attention_block_q", "dit.model.attention_block_kv")
    d = config.dit.token_drop
    cc.one_of(config, "dit.token_drop.schedule", packing.DROP_SCHEDULES)
    cc.one_of(config, "dit.token_drop.per_example", packing.DROP_DISTRIBUTIONS)
    cc.check(0.0 < d.max_rate < 1.0, "dit.token_drop.max_rate", d.max_rate, "must be in (0, 1)")
    for key in ("rate", "start_rate"):
        cc.check(
            0.0 <= d[key] <= d.max_rate,
            f"dit.token_drop.{key}",
            d[key],
            f"must be in [0, dit.token_drop.max_rate={d.max_rate}]",
        )
    cc.positive(config, "dit.token_drop.schedule_steps")

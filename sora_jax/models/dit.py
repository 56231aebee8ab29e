"""Diffusion Transformer over patch-n'-packed latent tokens.

Input rows hold several videos ("segments") packed one after the other (see
``sora_jax.data.packing``). Everything is per segment, so packing is invisible to each
video: self-attention is masked to the token's own segment, text is seen only by the tokens
of its own segment, and the conditioning (diffusion time + pooled text) is computed per
segment and its adaLN-Zero modulation projected once per segment (and time), then gathered
per token. Positions enter via 3D RoPE
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
    parameters; rematerialisation of each block (``REMAT_POLICIES``);
  * adaLN projected per block ('segment') or shared by all blocks plus a learned per-block
    table ('shared', as in Wan) (``MODULATIONS``);
  * blocks unrolled, or one period of them scanned over depth (``scan_blocks``).

Every parameter carries logical axis names (``nn.with_logical_partitioning``) and block
boundaries / q, k, v carry logical constraints, for sharding by rules; without rules in
context they do nothing. Initialised variables are boxed: ``nn.unbox`` them for plain arrays.

Conditioning on given frames (image->video, extension, connecting clips): the tokens of given
latent frames (``cond_mask``) enter clean with their own time (``t_given``, default 0),
optionally tagged by a learned "is-condition" embedding, while the others are noised to the
segment's time. Without ``cond_mask`` the model is exactly the unconditioned one, so
checkpoints trained before conditioning existed load and behave as before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

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
from sora_jax.models import lora as lora_lib
from sora_jax.models.rope import rope_3d
from sora_jax.parallel.axes import (
    EMBED,
    HEADS,
    LAYERS,
    MLP,
    NORM,
    PATCH,
    QKV,
    TEXT_EMBED,
    TOKENS,
)

__all__ = [
    "timestep_embedding",
    "absolute_position_features",
    "swiglu_hidden",
    "BlockSegments",
    "block_segments",
    "Conditioning",
    "period_layouts",
    "PERIOD_NAMES",
    "DiTBlock",
    "DiT",
    "SIZES",
    "MLPS",
    "TEXT_ATTENTIONS",
    "ATTENTION_LAYOUTS",
    "REMAT_POLICIES",
    "MODULATIONS",
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
# 'none': no rematerialisation; 'save_block_inputs' keeps only each block's input and
# recomputes the rest of the block in the backward pass, 'offload_block_inputs' keeps those
# inputs in host memory (TPU / GPU); the others name jax.checkpoint_policies
# ('nothing_saveable' is what 'save_block_inputs' keeps, 'dots_saveable' keeps matmul outputs).
REMAT_POLICIES = (
    "none",
    "save_block_inputs",
    "offload_block_inputs",
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)
BLOCK_INPUT = "block_input"  # checkpoint name of a block's input (the remat policies above)
# How adaLN gets its shift / scale / gate: 'segment' projects each (segment, time) entry's
# conditioning once per block and gathers it per token; 'token' projects every token's
# (the same values at L times the FLOPs; a reference); 'shared' (Wan style) projects the
# conditioning once for the whole network and each block adds a learned table to it.
MODULATIONS = ("segment", "token", "shared")
# Names of the blocks inside one scanned period (a period repeats the layout pattern).
PERIOD_NAMES = {1: ("block",), 2: ("spatial", "temporal")}
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What adaLN modulates with: one entry per (segment, time) and each token's entry.

    ``table f[b k w]``: per entry, the conditioning ``c`` (``w = hidden``; 'segment' and
    'token' modulation) or its shared projection (``w = 6 * hidden``; 'shared'). Entry ``j``
    is segment ``j + 1`` at its diffusion time, entry ``s + j`` its given frames (their own
    time) when there are any. ``video i32[b l]``, ``text i32[b m]`` (or None): the entry of
    each video / text token.
    """

    table: jax.Array
    video: jax.Array
    text: jax.Array | None = None


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


def _gather(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table f[b k w]``, ``index i32[b n]`` -> ``f[b n w]`` (each token's entry)."""
    return jnp.take_along_axis(table, index[..., None], axis=1)


def period_layouts(attention_layout: str) -> tuple[str, ...]:
    """The attention layouts of the blocks of one period of the network (it repeats)."""
    return ("thw",) if attention_layout == "full" else ("hw", "t")


class _Layers:
    """Dense / norm factories that name the logical axes of their parameters."""

    def __init__(self, dtype, param_dtype, lora: lora_lib.LoraSpec | None = None):
        self.dtype, self.param_dtype, self.lora = dtype, param_dtype, lora

    def dense(self, n, name, axes, kernel_init=nn.initializers.lecun_normal()):
        if self.lora is not None and self.lora.applies(name):
            return lora_lib.LoraDense(
                n,
                self.lora,
                axes,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=kernel_init,
                name=name,
            )
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

    ``x f[b l hidden]``, ``cond`` (``Conditioning``: the adaLN entries and each token's),
    ``positions i32[b l 3]``, ``segments`` (``BlockSegments``: who attends to whom),
    ``text f[b m hidden]`` -> ``(x f[b l hidden], text f[b m hidden])`` (text unchanged by
    'cross' blocks; 'joint' blocks modulate text tokens by ``cond.text``).
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
    modulation: str = "segment"  # MODULATIONS
    lora: lora_lib.LoraSpec | None = None  # adapters on the dense layers it targets

    def _modulation(self, layers, cond, index, prefix=""):
        """The six adaLN tensors ``f[b n hidden]`` (shift, scale, gate of attention, then of
        the MLP) of the tokens whose entries are ``index i32[b n]``."""
        n = 6 * self.hidden
        if self.modulation == "shared":
            own = self.param(
                prefix + "modulation",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, NORM)),
                (6, self.hidden),
                self.param_dtype,
            )
            table = cond.table + own.reshape(n).astype(self.dtype)
        else:
            dense = layers.dense(n, prefix + "adaln", (EMBED, MLP), nn.initializers.zeros)
            if self.modulation == "token":
                table, index = dense(nn.silu(_gather(cond.table, index))), None
            else:
                table = dense(nn.silu(cond.table))
        parts = jnp.split(table, 6, axis=-1)
        if index is not None:
            parts = [_gather(p, index) for p in parts]
        return [nn.with_logical_constraint(p, TOKENS) for p in parts]

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
    def __call__(self, x, cond, positions, segments, text):
        layers = _Layers(self.dtype, self.param_dtype, self.lora)
        b, l, _ = x.shape
        # Named so that the remat policies can keep (or offload) just this.
        x = jax.ad_checkpoint.checkpoint_name(x, BLOCK_INPUT)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self._modulation(
            layers, cond, cond.video
        )

        y = _modulate(layers.plain_norm("norm_attn")(x), shift_a, scale_a)
        q, k, v = self._qkv(layers, y)
        q, k = rope_3d(q, positions, self.rope_theta), rope_3d(k, positions, self.rope_theta)
        if self.text_attention == "joint":
            # MMDiT: the text stream has its own weights; both attend over video + text.
            t_shift_a, t_scale_a, t_gate_a, t_shift_m, t_scale_m, t_gate_m = self._modulation(
                layers, cond, cond.text, "text_"
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


class _Period(nn.Module):
    """One period of blocks (their ``layouts``), the body of the scan over depth: carries
    ``(x f[b l hidden], text f[b m hidden])``, the rest is the same for every period."""

    block: Callable[..., DiTBlock]  # DiTBlock with every field but the name
    layouts: tuple[str, ...]

    @nn.compact
    def __call__(self, carry, cond, positions, segments):
        x, text = carry
        for layout, name in zip(self.layouts, PERIOD_NAMES[len(self.layouts)]):
            x, text = self.block(name=name)(x, cond, positions, segments[layout], text)
        return (x, text), None


class DiT(nn.Module):
    """Diffusion Transformer on packed token rows (predicts e.g. the flow velocity).

    ``__call__(x f32[b l patch_dim], t f32[b s], segment_ids i32[b l], positions i32[b l 3],
    text f32[b s lt text_dim], text_mask bool[b s lt], cond_mask bool[b l] | None,
    t_given f32[b s] | None) -> f32[b l patch_dim]``

    ``t[:, j]`` (in [0, 1]) and ``text[:, j]`` belong to segment ``j + 1``; segment ids must
    be in ``[0, s]`` (0 = padding). Outputs on padding tokens are exactly zero. ``cond_mask``
    (optional) marks the tokens of given frames: they take their segment's time ``t_given``
    (default 0, clean) instead of ``t``, and the ``cond_embedding`` (if enabled).
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
    modulation: str = "segment"  # MODULATIONS
    # One scanned period of blocks (params stacked along a 'layers' axis: the program holds
    # one period, so it compiles in a fraction of the time) instead of `depth` unrolled ones.
    # The params differ in structure only (sora_jax/models/block_stack.py converts them).
    scan_blocks: bool = False
    # Caption tokens per row after packing the row's captions: the valid tokens of its
    # segments' captions, in slot order, then padding. 0 (or >= s * lt): every slot's lt tokens.
    # Text projections and cross-attention then cost text_tokens per row, not
    # max_segments * lt; the data must keep each row's captions within it
    # (`packing.pack(..., text_tokens=)`): tokens past it are not seen.
    text_tokens: int = 0
    # Low-rank adapters on the dense layers it targets (sora_jax/models/lora.py); None: none.
    lora: lora_lib.LoraSpec | None = None

    def _check_options(self):
        for name, value, options in (
            ("mlp", self.mlp, MLPS),
            ("text_attention", self.text_attention, TEXT_ATTENTIONS),
            ("attention_layout", self.attention_layout, ATTENTION_LAYOUTS),
            ("remat_policy", self.remat_policy, REMAT_POLICIES),
            ("modulation", self.modulation, MODULATIONS),
        ):
            if value not in options:
                raise ValueError(f"DiT: {name}={value!r}; choose one of {options}")
        if self.text_tokens < 0:
            raise ValueError(f"DiT: text_tokens={self.text_tokens} must be >= 0")
        if self.hidden % self.num_heads:
            raise ValueError(
                f"DiT: hidden {self.hidden} not divisible by num_heads {self.num_heads}"
            )
        period = len(period_layouts(self.attention_layout))
        if self.scan_blocks and self.depth % period:
            raise ValueError(
                f"DiT: scan_blocks scans {self.attention_layout} blocks in periods of "
                f"{period}; depth {self.depth} is not a multiple"
            )

    def _remat(self, module_class):
        """``module_class`` rematerialised in the backward pass by ``remat_policy``."""
        if self.remat_policy == "none":
            return module_class
        if self.remat_policy == "save_block_inputs":
            policy = jax.checkpoint_policies.save_only_these_names(BLOCK_INPUT)
        elif self.remat_policy == "offload_block_inputs":
            policy = jax.checkpoint_policies.save_and_offload_only_these_names(
                names_which_can_be_saved=[],
                names_which_can_be_offloaded=[BLOCK_INPUT],
                offload_src="device",
                offload_dst="pinned_host",
            )
        else:
            policy = getattr(jax.checkpoint_policies, self.remat_policy)
        # Inside a scan the loop already keeps the recomputation apart (no CSE to prevent).
        return nn.remat(module_class, policy=policy, prevent_cse=not self.scan_blocks)

    def _blocks(self, h, text, cond, positions, segments):
        """The ``depth`` blocks over ``h f[b l hidden]`` and ``text f[b m hidden]``."""
        fields = dict(
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
            modulation=self.modulation,
            lora=self.lora,
        )
        layouts = period_layouts(self.attention_layout)
        if not self.scan_blocks:
            block = self._remat(DiTBlock)
            for i in range(self.depth):
                layout = layouts[i % len(layouts)]
                h, text = block(name=f"block_{i}", **fields)(
                    h, cond, positions, segments[layout], text
                )
            return h, text
        stack = nn.scan(
            self._remat(_Period),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.depth // len(layouts),
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )
        block = functools.partial(DiTBlock, **fields)
        (h, text), _ = stack(block=block, layouts=layouts, name="blocks")(
            (h, text), cond, positions, segments
        )
        return h, text

    @nn.compact
    def __call__(self, x, t, segment_ids, positions, text, text_mask, cond_mask=None, t_given=None):
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
        if cond_mask is not None and cond_mask.shape != (b, l):
            raise ValueError(f"DiT: cond_mask {cond_mask.shape} does not match tokens {(b, l)}")
        if t_given is not None and t_given.shape != (b, s):
            raise ValueError(f"DiT: t_given {t_given.shape} does not match t {t.shape}")
        layers = _Layers(self.dtype, self.param_dtype, self.lora)
        text = text.astype(self.dtype)

        # Conditioning: diffusion time + pooled text of the token's segment, one entry per
        # (segment, time) (see Conditioning), modulation gathers per token.
        time_in = layers.dense(self.hidden, "time_mlp_in", (None, MLP))
        time_out = layers.dense(self.hidden, "time_mlp_out", (MLP, EMBED))
        time_mlp = lambda tt: time_out(
            nn.silu(time_in(timestep_embedding(tt * 1000.0, self.time_freq_dim)))
        )
        m = text_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(text * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)  # [b s text_dim]
        c_pool = layers.dense(self.hidden, "text_pool_proj", (TEXT_EMBED, EMBED))(pooled)
        table = time_mlp(t) + c_pool  # [b s hidden]
        # Padding takes segment 1's entry (its outputs are zeroed anyway).
        entry = jnp.clip(segment_ids - 1, 0, s - 1)
        if cond_mask is not None:
            t_given = jnp.zeros_like(t) if t_given is None else t_given
            table = jnp.concatenate([table, time_mlp(t_given) + c_pool], axis=1)  # [b 2s hidden]
            entry = entry + s * cond_mask.astype(entry.dtype)

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
            for layout in period_layouts(self.attention_layout)
        }
        final_table = table
        if self.modulation == "shared":
            table = layers.dense(6 * self.hidden, "time_proj", (EMBED, MLP), nn.initializers.zeros)(
                nn.silu(table)
            )
        # Text tokens of 'joint' blocks take their segment's entry at its diffusion time.
        cond = Conditioning(table, entry, text_slot if self.text_attention == "joint" else None)

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
        h, _ = self._blocks(h, text_kv, cond, positions, segments)

        mod = layers.dense(2 * self.hidden, "final_adaln", (EMBED, MLP), nn.initializers.zeros)
        shift, scale = (
            nn.with_logical_constraint(_gather(p, entry), TOKENS)
            for p in jnp.split(mod(nn.silu(final_table)), 2, axis=-1)
        )
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
    cc.one_of(config, "dit.model.modulation", MODULATIONS)
    period = len(period_layouts(config.dit.model.attention_layout))
    cc.check(
        not config.dit.model.scan_blocks or config.dit.model.depth % period == 0,
        "dit.model.scan_blocks",
        True,
        f"scans periods of {period} blocks ({config.dit.model.attention_layout} layout): "
        f"dit.model.depth={config.dit.model.depth} must be a multiple",
    )
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

"""The Wan 2.1 / 2.2 video transformer (diffusers' ``WanTransformer3DModel``), in Flax Linen,
on the project's packed rows.

API (what a pipeline calls):
  * ``WanTransformerConfig``: the architecture (``config.json`` fields of a diffusers
    ``transformer/`` folder); ``WanTransformerConfig.from_diffusers(dict)`` / ``to_diffusers()``.
  * ``WanTransformer(config, dtype=..., param_dtype=..., attention_impl=...)``, or
    ``WanTransformer.from_diffusers_config(dict, **fields)``.
  * ``__call__(tokens f32[b l pt*ph*pw*c_in], segment_ids i32[b l], positions i32[b l 3],
    timestep f32[b k], text f32[b s lt text_dim], text_mask bool[b s lt],
    time_index i32[b l] | None) -> f32[b l pt*ph*pw*c_out]`` on packed rows (below).
  * ``video(latents f32[b t h w c_in], timestep f32[b] | f32[b n], text f32[b m text_dim],
    text_mask bool[b m] | None) -> f32[b t h w c_out]``: one video per row, packed and unpacked
    here (``model.apply(v, ..., method=WanTransformer.video)``); what diffusers' forward takes,
    channels-last.
  * ``sora_jax.models.wan_transformer_weights``: ``load_transformer(folder, dtype)`` ->
    ``(module, params)``, ``export_transformer(params, config, folder)`` (the key mapping is
    documented there).

Packed rows. A row holds the latent tokens of several videos ("segments", ids 1, 2, ...; 0 =
padding) one after the other, each video's tokens its patches flattened ``(pt ph pw c)``
(``sora_jax.data.packing.patchify``), with each token's patch-grid position ``(t, h, w)``.
Self-attention is restricted to the token's own segment and cross-attention to its own
caption (``sora_jax.models.attention`` with segment ids, no ``[L, L]`` mask), RoPE rotates by the
token's own positions and the modulation is gathered per token, so a video packed with others
gives what it gives alone. Padding tokens output exactly 0.

Time. ``timestep`` is in diffusers' scale (the scheduler's timesteps, 0..1000), one entry per
(segment, time): with ``time_index=None`` entry ``j`` is segment ``j + 1``'s time (``k = s``);
otherwise ``time_index[b, i]`` is token ``i``'s entry. Wan 2.2 TI2V's per-token time (the given
first latent frame at t = 0, diffusers' ``expand_timesteps``) is two entries per segment
(``token_times``), or plainly ``timestep f32[b l]`` with ``time_index = arange(l)``. The time MLP
and the shared projection run once per entry, not per token.

Text. ``text[:, j]`` is segment ``j + 1``'s caption (``lt`` tokens, ``text_mask`` marking the
ones it may attend to). diffusers' Wan attends to every one of its 512 text tokens, the
zero-padded tail of the encoder output included (``WanPipeline`` pads with zeros; the text
embedder's bias makes them non-zero): to reproduce it, pass the padded states with an all-True
mask.

Architecture (diffusers' module names, mapped one to one in the weights module): a patch
embedding (a Conv3d with stride = kernel = ``patch_size``, i.e. a linear map of each flattened
patch); sinusoidal time features -> ``time_embedder`` MLP (``temb``) -> ``time_proj`` to
``6 * dim``, shared by all blocks, each block adding its own learned ``scale_shift_table``
(shift, scale, gate of the self-attention, then of the FFN); ``text_embedder``
(Linear-GELU(tanh)-Linear from ``text_dim``); blocks of self-attention (RMS QK-norm across all
heads, Wan's 3D RoPE), cross-attention to the text (optional affine LayerNorm first, QK-norm
too, no RoPE), a GELU(tanh) FFN; a final LayerNorm modulated by ``temb`` plus the final table,
and the output projection. LayerNorms, the time embedder and the modulation run in float32
whatever the compute ``dtype`` (as diffusers keeps them).

Wan's RoPE: of the head dim ``d``, ``h`` and ``w`` get ``2 * (d // 6)`` each and ``t`` the rest;
each axis rotates consecutive channel pairs by ``pos * theta**(-2i/d_axis)``, with angles from a
float64 table of ``rope_max_seq_len`` positions per axis (diffusers' buffer): positions must be
below it.

Every parameter names its logical axes (``nn.with_logical_partitioning``); params are boxed
after ``init``: ``nn.unbox`` them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.kernels.segments import Segments
from sora_jax.models import attention as attention_lib
from sora_jax.models.dit import timestep_embedding
from sora_jax.models.lora import LoraDense, LoraSpec
from sora_jax.parallel.axes import EMBED, HEADS, MLP, NORM, PATCH, QKV, TEXT_EMBED, TOKENS

__all__ = [
    "WanTransformerConfig",
    "WanTransformer",
    "WanBlock",
    "rope_dims",
    "rope_tables",
    "apply_rope",
    "patchify",
    "unpatchify",
    "grid_positions",
    "token_times",
    "init_params",
    "param_shapes",
]

CLASS_NAME = "WanTransformer3DModel"
# The layers LoRA adapts, by qualified name (what LoraSpec.targets is matched against).
LORA_LAYERS = tuple(
    f"{attn}.{layer}" for attn in ("attn1", "attn2") for layer in ("to_q", "to_k", "to_v", "to_out")
) + ("ffn.proj_in", "ffn.proj_out")
QK_NORM = "rms_norm_across_heads"


@dataclasses.dataclass(frozen=True)
class WanTransformerConfig:
    """The architecture of a ``WanTransformer3DModel`` (its ``config.json`` fields; defaults are
    diffusers', i.e. Wan 2.1 14B). Only text-to-video forms: no image encoder."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    # diffusers builds RMS norms across heads whatever this says; kept for the export.
    qk_norm: str | None = QK_NORM
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self):
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"WanTransformerConfig: patch_size {self.patch_size} must be 3 sizes")
        rope_dims(self.attention_head_dim)

    @property
    def dim(self) -> int:
        """Model width (``inner_dim``): heads x head dim."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_in(self) -> int:
        """Width of an input token: one flattened ``(pt ph pw c_in)`` patch."""
        return math.prod(self.patch_size) * self.in_channels

    @property
    def patch_out(self) -> int:
        return math.prod(self.patch_size) * self.out_channels

    # diffusers config.json fields that this port does not build (Wan 2.1 I2V's image encoder).
    _I2V_FIELDS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")

    @classmethod
    def from_diffusers(cls, d: dict) -> "WanTransformerConfig":
        """``config.json`` of a ``WanTransformer3DModel`` -> config (fields left out take
        diffusers' defaults; unknown fields and image-encoder (I2V) ones are a ValueError
        naming them)."""
        if d.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise ValueError(f"config.json: _class_name {d['_class_name']!r} is not {CLASS_NAME}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key.startswith("_"):
                continue
            if key in cls._I2V_FIELDS:
                if value is not None:
                    raise ValueError(
                        f"config.json: {key}={value!r} is an image-to-video (image encoder) "
                        "model; only text-to-video Wan transformers are supported"
                    )
                continue
            if key not in names:
                raise ValueError(f"config.json: unknown {CLASS_NAME} field {key!r}")
            kwargs[key] = tuple(value) if key == "patch_size" else value
        if kwargs.get("out_channels", 1) is None:  # diffusers: out_channels or in_channels
            kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
        return cls(**kwargs)

    def to_diffusers(self, version: str = "0.42.1") -> dict:
        """The ``config.json`` dict diffusers' ``WanTransformer3DModel`` reads."""
        out = {"_class_name": CLASS_NAME, "_diffusers_version": version}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if f.name == "patch_size" else value
        out.update({k: None for k in self._I2V_FIELDS})
        return out


# ---- positions -------------------------------------------------------------------------------


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of the head dim over (t, h, w): h and w get ``2 * (d // 6)``, t the rest."""
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    if head_dim % 2 or hw < 2:
        raise ValueError(f"Wan RoPE: attention_head_dim {head_dim} must be even and >= 6")
    return t, hw, hw


@functools.cache
def rope_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0):
    """``(cos, sin)``, three ``f32[max_seq_len d_axis/2]`` each (t, h, w): the angles of every
    position on each axis, computed in float64 as diffusers does, then rounded to float32."""
    pos = np.arange(max_seq_len, dtype=np.float64)
    cos, sin = [], []
    for d in rope_dims(head_dim):
        freqs = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.outer(pos, freqs)
        cos.append(np.cos(ang).astype(np.float32))
        sin.append(np.sin(ang).astype(np.float32))
    return tuple(cos), tuple(sin)


def apply_rope(x: jax.Array, positions: jax.Array, max_seq_len: int) -> jax.Array:
    """Wan's 3D RoPE: ``x f[b l heads d]``, ``positions i32[b l 3]`` -> ``f[b l heads d]``.

    Channel pairs ``(2i, 2i+1)`` are rotated (the t pairs first, then h, then w), in float32.
    """
    cos_tables, sin_tables = rope_tables(x.shape[-1], max_seq_len)
    pick = lambda tables: jnp.concatenate(  # noqa: E731
        [
            jnp.take(jnp.asarray(tb), positions[..., a], axis=0, mode="clip")
            for a, tb in enumerate(tables)
        ],
        axis=-1,
    )[:, :, None]  # [b l 1 d/2]
    cos, sin = pick(cos_tables), pick(sin_tables)
    pairs = einops.rearrange(x.astype(jnp.float32), "b l h (n two) -> b l h n two", two=2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return einops.rearrange(out, "b l h n two -> b l h (n two)").astype(x.dtype)


def grid_positions(grid: tuple[int, int, int]) -> jax.Array:
    """``i32[t*h*w 3]``: the (t, h, w) index of each token of a patch grid, t-major (as
    ``sora_jax.data.packing.grid_positions``)."""
    t, h, w = (jnp.arange(n, dtype=jnp.int32) for n in grid)
    mesh = jnp.meshgrid(t, h, w, indexing="ij")
    return jnp.stack(mesh, axis=-1).reshape(-1, 3)


def patchify(latents: jax.Array, patch: tuple[int, int, int]) -> jax.Array:
    """``f[b t h w c] -> f[b (t/pt)(h/ph)(w/pw) pt*ph*pw*c]`` (the packing's token layout)."""
    pt, ph, pw = patch
    return einops.rearrange(
        latents, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
    )


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], patch) -> jax.Array:
    """Inverse of ``patchify``: ``f[b n pt*ph*pw*c] -> f[b t h w c]`` for patch grid ``grid``."""
    (t, h, w), (pt, ph, pw) = grid, patch
    return einops.rearrange(
        tokens,
        "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
        t=t,
        h=h,
        w=w,
        pt=pt,
        ph=ph,
        pw=pw,
    )


def token_times(
    t: jax.Array, segment_ids: jax.Array, given: jax.Array, t_given: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-token time as two entries per segment: ``t f32[b s]`` (each segment's time),
    ``segment_ids i32[b l]``, ``given bool[b l]`` (tokens of given frames, e.g. Wan 2.2 TI2V's
    first latent frame) -> ``(timestep f32[b 2s], time_index i32[b l])``: given tokens take
    ``t_given`` (0: clean), the others their segment's ``t``."""
    s = t.shape[1]
    timestep = jnp.concatenate([t, jnp.broadcast_to(jnp.asarray(t_given, t.dtype), t.shape)], 1)
    index = jnp.clip(segment_ids - 1, 0, s - 1) + s * given.astype(jnp.int32)
    return timestep, index.astype(jnp.int32)


# ---- layers ----------------------------------------------------------------------------------


def _dense(features, name, axes, dtype, param_dtype, lora=None, qualified=None):
    """A dense layer with logical axes; with ``lora`` (a ``LoraSpec``) whose targets match
    ``qualified`` (e.g. 'attn1.to_q') a ``LoraDense`` with the same base params."""
    if lora is not None and lora.applies(qualified):
        return LoraDense(features, lora, axes, dtype=dtype, param_dtype=param_dtype, name=name)
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
    )


def _layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, in float32 (diffusers' ``FP32LayerNorm``):
    ``f[... c] -> f32[... c]``."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _gather(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table f[b k ...]``, ``index i32[b l]`` -> ``f[b l ...]`` (each token's entry)."""
    index = index.reshape(*index.shape, *[1] * (table.ndim - 2))
    return jnp.take_along_axis(table, index, axis=1)


def _block_dense(module: nn.Module, features, name, axes):
    """``_dense`` in a block's sub-module (attention, FFN): its dtypes, and its LoRA spec on
    the qualified name '<module>.<name>'."""
    return _dense(
        features, name, axes, module.dtype, module.param_dtype, module.lora, f"{module.name}.{name}"
    )


class WanAttention(nn.Module):
    """Self- (``context=None``) or cross-attention with RMS QK-norm across all heads.

    ``x f[b l dim]``, ``context f[b m dim] | None``, ``segments`` (ids), ``positions i32[b l 3]``
    (self-attention: RoPE) -> ``f[b l dim]``.
    """

    num_heads: int
    head_dim: int
    eps: float
    rope_max_seq_len: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"
    attention_blocks: tuple[int, int] = (512, 512)
    attention_shard: bool = True
    lora: LoraSpec | None = None  # adapters on the layers named '<attn1|attn2>.<to_q|...>'

    def _rms_norm(self, name):
        return nn.RMSNorm(
            epsilon=self.eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (HEADS,)),
        )

    @nn.compact
    def __call__(self, x, context, segments, positions=None):
        inner = self.num_heads * self.head_dim

        dense = functools.partial(_block_dense, self)
        kv_in = x if context is None else context
        q = dense(inner, "to_q", (EMBED, HEADS))(x)
        k = dense(inner, "to_k", (EMBED, HEADS))(kv_in)
        v = dense(inner, "to_v", (EMBED, HEADS))(kv_in)
        # Normalised over the whole projection (every head at once), before the head split.
        q, k = self._rms_norm("norm_q")(q), self._rms_norm("norm_k")(k)
        heads = lambda a: einops.rearrange(a, "b l (h d) -> b l h d", h=self.num_heads)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        if context is None:
            q = apply_rope(q, positions, self.rope_max_seq_len)
            k = apply_rope(k, positions, self.rope_max_seq_len)
        q, k, v = (nn.with_logical_constraint(a, QKV) for a in (q, k, v))
        bq, bk = self.attention_blocks
        a = attention_lib.attention(
            q,
            k,
            v,
            segments,
            self.attention_impl,
            block_q=bq,
            block_kv=bk,
            shard=self.attention_shard,
        )
        a = einops.rearrange(a, "b l h d -> b l (h d)")
        return dense(x.shape[-1], "to_out", (HEADS, EMBED))(a)


class FeedForward(nn.Module):
    """``f[b l dim] -> f[b l dim]``: Linear, GELU (tanh approximation), Linear."""

    ffn_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    lora: LoraSpec | None = None  # adapters on 'ffn.proj_in' / 'ffn.proj_out'

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(_block_dense, self)
        h = nn.gelu(dense(self.ffn_dim, "proj_in", (EMBED, MLP))(x), approximate=True)
        return dense(x.shape[-1], "proj_out", (MLP, EMBED))(h)


class WanBlock(nn.Module):
    """One Wan block: modulated self-attention, cross-attention to the text, modulated FFN.

    ``x f[b l dim]``, ``time_proj f32[b k 6 dim]`` (the shared projection per time entry),
    ``time_index i32[b l]``, ``text f[b m dim]``, ``positions i32[b l 3]``, ``segments``
    (``(self, cross)`` ids) -> ``f[b l dim]``.
    """

    config: WanTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"
    attention_blocks: tuple[int, int] = (512, 512)
    attention_shard: bool = True
    lora: LoraSpec | None = None

    @nn.compact
    def __call__(self, x, time_proj, time_index, text, positions, segments):
        cfg = self.config
        table = self.param(
            "scale_shift_table",
            nn.with_logical_partitioning(
                lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / cfg.dim**0.5,
                (None, NORM),
            ),
            (6, cfg.dim),
            self.param_dtype,
        )
        # Each entry's six tensors in float32, then gathered per token: [b l dim] each. They
        # depend only on the shared time projection, so without the barrier tying them to x
        # XLA computes every block's at once and keeps them all to the backward pass (six
        # f32[l dim] per block: 1.2 GiB of a 32k-token row at 1.3B, 30x over the model).
        x, time_proj = jax.lax.optimization_barrier((x, time_proj))
        mod = table.astype(jnp.float32) + time_proj.astype(jnp.float32)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (
            nn.with_logical_constraint(_gather(mod[:, :, i], time_index), TOKENS) for i in range(6)
        )
        attn = functools.partial(
            WanAttention,
            num_heads=cfg.num_attention_heads,
            head_dim=cfg.attention_head_dim,
            eps=cfg.eps,
            rope_max_seq_len=cfg.rope_max_seq_len,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            attention_blocks=self.attention_blocks,
            attention_shard=self.attention_shard,
            lora=self.lora,
        )
        self_ids, cross_ids = segments

        y = (_layer_norm(x, cfg.eps) * (1 + scale_a) + shift_a).astype(self.dtype)
        a = attn(name="attn1")(y, None, self_ids, positions)
        x = (x.astype(jnp.float32) + a * gate_a).astype(self.dtype)
        x = nn.with_logical_constraint(x, TOKENS)

        y = x
        if cfg.cross_attn_norm:
            y = nn.LayerNorm(
                epsilon=cfg.eps,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                use_fast_variance=False,  # E[(x - mean)^2], as torch computes it
                scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)),
                name="norm2",
            )(x.astype(jnp.float32))
        x = x + attn(name="attn2")(y.astype(self.dtype), text, cross_ids)

        y = (_layer_norm(x, cfg.eps) * (1 + scale_f) + shift_f).astype(self.dtype)
        f = FeedForward(cfg.ffn_dim, self.dtype, self.param_dtype, self.lora, name="ffn")(y)
        x = (x.astype(jnp.float32) + f.astype(jnp.float32) * gate_f).astype(self.dtype)
        return nn.with_logical_constraint(x, TOKENS)


def _block_apply(block: WanBlock, *args):
    return block(*args)


def _remat_forward(block: WanBlock, *args):
    # vjp of the rematerialised block keeps only its inputs; the rest is recomputed.
    return nn.vjp(nn.remat(_block_apply), block, *args)


def _remat_backward(vjp_fn, ct):
    # XLA may fuse a weight gradient into its fsdp reduce-scatter (a windowed einsum) and
    # schedule it at the end of the backward pass, keeping every block's recomputed
    # activations alive until then (fsdp 8 on a v5p-16: +2.5 GiB per block at 32k tokens
    # instead of +0.27). The barrier ties the block's parameter gradients to its input
    # gradient, so they are done before the previous block's backward pass starts.
    return jax.lax.optimization_barrier(vjp_fn(ct))


# A WanBlock call, rematerialised in the backward pass with its gradients kept block-local.
_remat_block = nn.custom_vjp(_block_apply, forward_fn=_remat_forward, backward_fn=_remat_backward)


class TwoLayerMLP(nn.Module):
    """``f[... in] -> f[... features]``: ``linear_1``, ``activation``, ``linear_2`` (diffusers'
    ``TimestepEmbedding`` with SiLU and ``PixArtAlphaTextProjection`` with GELU(tanh))."""

    features: int
    activation: str  # 'silu' | 'gelu_tanh'
    axes: tuple[tuple, tuple]  # logical axes of the two kernels
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(_dense, dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.features, "linear_1", self.axes[0])(x.astype(self.dtype))
        h = nn.silu(h) if self.activation == "silu" else nn.gelu(h, approximate=True)
        return dense(self.features, "linear_2", self.axes[1])(h)


class TimeTextEmbedding(nn.Module):
    """diffusers' ``condition_embedder``: ``timestep f32[b k]``, ``text f[b m text_dim]`` ->
    ``(temb f32[b k dim], time_proj f[b k 6 dim], text f[b m dim])``."""

    config: WanTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, timestep, text):
        cfg = self.config
        # diffusers keeps the time embedder in float32 whatever the model's dtype.
        temb = TwoLayerMLP(
            cfg.dim,
            "silu",
            ((None, MLP), (MLP, EMBED)),
            jnp.float32,
            self.param_dtype,
            name="time_embedder",
        )(timestep_embedding(timestep, cfg.freq_dim))  # features [cos, sin]
        proj = _dense(6 * cfg.dim, "time_proj", (EMBED, MLP), self.dtype, self.param_dtype)(
            nn.silu(temb).astype(self.dtype)
        )
        proj = einops.rearrange(proj, "b k (six d) -> b k six d", six=6)
        text = TwoLayerMLP(
            cfg.dim,
            "gelu_tanh",
            ((TEXT_EMBED, MLP), (MLP, EMBED)),
            self.dtype,
            self.param_dtype,
            name="text_embedder",
        )(text)
        return temb, proj, text


class WanTransformer(nn.Module):
    """diffusers' ``WanTransformer3DModel`` on packed rows (see the module docstring).

    ``__call__(tokens f32[b l patch_in], segment_ids i32[b l], positions i32[b l 3],
    timestep f32[b k], text f32[b s lt text_dim], text_mask bool[b s lt],
    time_index i32[b l] | None) -> f32[b l patch_out]`` (float32, 0 on padding).
    """

    config: WanTransformerConfig
    dtype: jnp.dtype = jnp.float32  # compute dtype of the linear layers and attention
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"  # sora_jax.models.attention.IMPLEMENTATIONS
    attention_blocks: tuple[int, int] = (512, 512)  # (query, key) block sizes of the kernels
    attention_shard: bool = True  # under a mesh, attention per device in shard_map
    # Recompute each block in the backward pass (keeps only block inputs: training memory
    # O(layers x tokens x dim) instead of every activation).
    remat: bool = False
    # Low-rank adapters on the blocks' attention and FFN layers whose qualified names
    # ('attn1.to_q', 'attn2.to_out', 'ffn.proj_in', ...) match lora.targets.
    lora: LoraSpec | None = None

    @classmethod
    def from_diffusers_config(cls, d: dict, **fields) -> "WanTransformer":
        """The module of a diffusers ``config.json`` dict; ``fields``: dtype, attention_impl..."""
        return cls(WanTransformerConfig.from_diffusers(d), **fields)

    def _check(self, tokens, segment_ids, positions, timestep, text, text_mask, time_index):
        cfg = self.config
        b, l, c = tokens.shape
        if c != cfg.patch_in:
            raise ValueError(
                f"WanTransformer: token width {c} != pt*ph*pw*in_channels = {cfg.patch_in}"
            )
        if segment_ids.shape != (b, l) or positions.shape != (b, l, 3):
            raise ValueError(
                f"WanTransformer: segment_ids {segment_ids.shape} / positions {positions.shape} "
                f"do not match tokens {tokens.shape} (expected [b l], [b l 3])"
            )
        if text.ndim != 4 or text.shape[0] != b or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"WanTransformer: text {text.shape} must be [b s lt {cfg.text_dim}]")
        if text_mask.shape != text.shape[:3]:
            raise ValueError(
                f"WanTransformer: text_mask {text_mask.shape} != text {text.shape[:3]}"
            )
        if timestep.ndim != 2 or timestep.shape[0] != b:
            raise ValueError(f"WanTransformer: timestep {timestep.shape} must be [b k]")
        if time_index is None and timestep.shape[1] != text.shape[1]:
            raise ValueError(
                f"WanTransformer: without time_index, timestep {timestep.shape} needs one entry "
                f"per segment slot of text {text.shape[:2]}"
            )
        if time_index is not None and time_index.shape != (b, l):
            raise ValueError(f"WanTransformer: time_index {time_index.shape} must be [b l]")

    @nn.compact
    def __call__(self, tokens, segment_ids, positions, timestep, text, text_mask, time_index=None):
        cfg = self.config
        self._check(tokens, segment_ids, positions, timestep, text, text_mask, time_index)
        b, l, _ = tokens.shape
        _, s, lt, _ = text.shape
        if time_index is None:
            # Padding takes entry 0 (its output is zeroed).
            time_index = jnp.clip(segment_ids - 1, 0, s - 1)
        temb, time_proj, text_h = TimeTextEmbedding(
            cfg, self.dtype, self.param_dtype, name="condition_embedder"
        )(timestep.astype(jnp.float32), einops.rearrange(text, "b s lt d -> b (s lt) d"))
        # Text token of slot j carries id j + 1: a video token sees only its own caption.
        text_ids = jnp.where(text_mask, jnp.arange(1, s + 1, dtype=jnp.int32)[None, :, None], 0)
        segments = (
            Segments(segment_ids),
            Segments(segment_ids, einops.rearrange(text_ids, "b s lt -> b (s lt)")),
        )

        x = _dense(cfg.dim, "patch_embedding", (PATCH, EMBED), self.dtype, self.param_dtype)(
            tokens.astype(self.dtype)
        )
        x = nn.with_logical_constraint(x, TOKENS)
        if not self.remat:
            run = _block_apply
        elif self.lora is None:
            run = _remat_block
        else:
            # LoRA: XLA drops the unused gradients of the frozen weights, which the barrier
            # would keep; the adapters' own are small.
            run = nn.remat(_block_apply)
        for i in range(cfg.num_layers):
            block = WanBlock(
                cfg,
                self.dtype,
                self.param_dtype,
                self.attention_impl,
                self.attention_blocks,
                self.attention_shard,
                self.lora,
                name=f"blocks_{i}",
            )
            x = run(block, x, time_proj, time_index, text_h, positions, segments)

        final = self.param(
            "scale_shift_table",
            nn.with_logical_partitioning(
                lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / cfg.dim**0.5,
                (None, NORM),
            ),
            (2, cfg.dim),
            self.param_dtype,
        )
        temb = nn.with_logical_constraint(_gather(temb, time_index), TOKENS)  # [b l dim]
        shift, scale = (final[i].astype(jnp.float32) + temb for i in range(2))
        y = (_layer_norm(x, cfg.eps) * (1 + scale) + shift).astype(self.dtype)
        out = _dense(cfg.patch_out, "proj_out", (EMBED, PATCH), self.dtype, self.param_dtype)(y)
        return out.astype(jnp.float32) * (segment_ids > 0)[..., None]

    def video(self, latents, timestep, text, text_mask=None):
        """One video per row, diffusers' forward channels-last: ``latents f32[b t h w c_in]``,
        ``timestep f32[b]`` (per video) or ``f32[b n]`` (per token, ``n`` = patch-grid size,
        t-major: diffusers' TI2V form), ``text f32[b m text_dim]``, ``text_mask bool[b m] |
        None`` (None: every token, as diffusers) -> ``f32[b t h w c_out]``."""
        cfg = self.config
        b, t, h, w, _ = latents.shape
        pt, ph, pw = cfg.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"WanTransformer.video: latents {latents.shape} vs patch {cfg.patch_size}"
            )
        grid = (t // pt, h // ph, w // pw)
        if max(grid) > cfg.rope_max_seq_len:
            raise ValueError(
                f"WanTransformer.video: patch grid {grid} exceeds rope_max_seq_len "
                f"{cfg.rope_max_seq_len}"
            )
        tokens = patchify(latents, cfg.patch_size)
        n = tokens.shape[1]
        positions = jnp.broadcast_to(grid_positions(grid), (b, n, 3))
        segment_ids = jnp.ones((b, n), jnp.int32)
        timestep = jnp.asarray(timestep, jnp.float32)
        if timestep.ndim == 1:
            timestep, time_index = timestep[:, None], None
        elif timestep.shape == (b, n):
            time_index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        else:
            raise ValueError(
                f"WanTransformer.video: timestep {timestep.shape} must be [b] or {(b, n)}"
            )
        if text_mask is None:
            text_mask = jnp.ones(text.shape[:2], bool)
        out = self(
            tokens, segment_ids, positions, timestep, text[:, None], text_mask[:, None], time_index
        )
        return unpatchify(out, grid, cfg.patch_size)


def _dummy_inputs(config: WanTransformerConfig, fn=jnp.zeros):
    """Smallest inputs that create every parameter: one token, one text token."""
    return (
        fn((1, 1, config.patch_in), jnp.float32),
        fn((1, 1), jnp.int32),
        fn((1, 1, 3), jnp.int32),
        fn((1, 1), jnp.float32),
        fn((1, 1, 1, config.text_dim), jnp.float32),
        fn((1, 1, 1), bool),
    )


def init_params(model: WanTransformer, rng: jax.Array):
    """Random (unboxed) params of ``model``: diffusers' initialisation of the modulation
    tables, LeCun normal kernels, zero biases."""
    return nn.unbox(model.init({"params": rng}, *_dummy_inputs(model.config))["params"])


def param_shapes(model: WanTransformer):
    """The model's (boxed) param tree as ``jax.ShapeDtypeStruct`` leaves, nothing computed."""
    args = _dummy_inputs(model.config, lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype))
    return jax.eval_shape(
        lambda k, *a: model.init({"params": k}, *a)["params"], jax.random.key(0), *args
    )

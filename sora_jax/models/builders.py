"""Config -> models: the VAE, the text encoder and the DiT, their abstract params, and the
pixel-range conversions every stage shares.

Training, sampling, export and planning all build their models here, so a model knob means
the same thing everywhere. Nothing here allocates params unless asked to (`*_init_fn`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax.data import shapes
from sora_jax.models import dit as dit_lib
from sora_jax.models import lora as lora_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import wan_dit, wan_folder, wan_vae
from sora_jax.text import encoders


def to_model_range(video: np.ndarray) -> np.ndarray:
    """uint8[... 3] in [0, 255] -> f32 in [-1, 1]."""
    return video.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """f32 in [-1, 1] -> uint8 in [0, 255]."""
    return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def build_vae(config: ml_collections.ConfigDict) -> vae_lib.CausalVAE | wan_vae.WanVAE:
    """The project's causal VAE, or (vae.kind 'wan') the Wan VAE of the folder vae.path."""
    if config.vae.kind == "wan":
        return wan_vae.WanVAE(wan_folder.vae_config(config.vae.path))
    m = config.vae.model
    return vae_lib.CausalVAE(
        base_channels=m.base_channels,
        channel_mults=tuple(m.channel_mults),
        num_res_blocks=m.num_res_blocks,
        latent_channels=m.latent_channels,
        temporal_downsample=tuple(bool(d) for d in m.temporal_downsample),
        spatial_downsample=tuple(bool(d) for d in m.spatial_downsample),
        norm_groups=m.norm_groups,
        patch_size=m.patch_size,
        shortcuts=m.shortcuts,
        mid_attention=m.mid_attention,
    )


def vae_init_fn(config, model: vae_lib.CausalVAE):
    """`init(key) -> params` of the VAE, on a video of the first training bucket's size."""
    t, h, w = config.vae.train.buckets[0]
    x = jnp.zeros((1, t, h, w, 3), jnp.float32)
    return lambda key: model.init({"params": key, "posterior": key}, x, sample_posterior=False)[
        "params"
    ]


def abstract_vae_params(config, model: vae_lib.CausalVAE | wan_vae.WanVAE):
    """Shapes/dtypes of the VAE's params, with no allocation."""
    if config.vae.kind == "wan":
        return nn.unbox(wan_vae.param_shapes(model))
    return jax.eval_shape(vae_init_fn(config, model), jax.random.PRNGKey(0))


def build_text_encoder(config) -> encoders.TextEncoder:
    t = config.text
    return encoders.build_text_encoder(
        t.kind,
        max_length=t.max_length,
        vocabulary=shapes.VOCABULARY,
        width=t.width,
        depth=t.depth,
        num_heads=t.num_heads,
        mlp_ratio=t.mlp_ratio,
        path=t.path or None,
        tokenizer_path=t.tokenizer_path or None,
        dtype=t.dtype,
    )


def row_text_tokens(config) -> int:
    """Caption tokens the DiT projects and attends per packed row: dit.text_tokens when it
    packs the row's captions, else every slot's (max_segments x text.max_length)."""
    slots = config.dit.max_segments * config.text.max_length
    return min(config.dit.text_tokens, slots) if config.dit.text_tokens else slots


def adaln_entries(config) -> int:
    """adaLN conditioning entries per packed row (sora_jax.models.dit.Conditioning): one per
    segment slot, and one more per slot for its given frames when batches carry them."""
    return config.dit.max_segments * (2 if config.dit.condition.rate > 0 else 1)


def build_dit(config, text_dim: int) -> dit_lib.DiT | wan_dit.WanDiT:
    """The project's DiT, or (dit.model.arch 'wan') the Wan transformer of dit.model.wan."""
    m = config.dit.model
    if m.arch == "wan":
        cfg = wan_folder.transformer_config(config)
        if cfg.text_dim != text_dim:
            raise ValueError(
                f"config.dit.model.wan.text_dim={cfg.text_dim} but the text encoder's states "
                f"have {text_dim} channels"
            )
        return wan_dit.WanDiT(
            cfg,
            dtype=dit_lib.DTYPES[m.dtype],
            attention_impl=m.attention_impl,
            attention_blocks=(m.attention_block_q, m.attention_block_kv),
            attention_shard=config.mesh.sequence_attention == "all_to_all",
            remat=m.remat_policy != "none",
            lora=lora_spec(config),
        )
    pt, ph, pw = config.dit.patch
    return dit_lib.DiT(
        patch_dim=pt * ph * pw * config.vae.model.latent_channels,
        hidden=m.hidden,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        text_dim=text_dim,
        rope_theta=m.rope_theta,
        abs_positions=m.abs_positions,
        cond_embedding=m.cond_embedding,
        dtype=dit_lib.DTYPES[m.dtype],
        mlp=m.mlp,
        text_attention=m.text_attention,
        attention_layout=m.attention_layout,
        remat_policy=m.remat_policy,
        modulation=m.modulation,
        scan_blocks=m.scan_blocks,
        text_tokens=config.dit.text_tokens,
        attention_impl=m.attention_impl,
        attention_blocks=(m.attention_block_q, m.attention_block_kv),
        # Kernels run per device under shard_map, with the all-to-all head/sequence swap where
        # the mesh splits the sequence (sora_jax/parallel/sequence.py); 'gspmd' leaves the
        # partitioning of attention to the compiler.
        attention_shard=config.mesh.sequence_attention == "all_to_all",
        lora=lora_spec(config),
    )


def lora_spec(config) -> lora_lib.LoraSpec | None:
    """The DiT's adapters in a 'lora' fine-tune (config.dit.finetune), else None."""
    f = config.dit.finetune
    if f.mode != "lora":
        return None
    return lora_lib.LoraSpec(
        rank=f.lora_rank, alpha=f.lora_alpha, dropout=f.lora_dropout, targets=f.lora_targets
    )


def trainable_mask(config, params) -> dict | None:
    """bool pytree over a DiT stage's plain (unboxed) params ({'dit': ..., 'text': ...}): the
    adapters of a 'lora' fine-tune, everything but config.dit.finetune.freeze in a 'full'
    one; None when all train. The optimizer and the EMA keep only these leaves."""
    f = config.dit.finetune
    if f.mode == "lora":
        return {
            k: lora_lib.trainable_mask(v) if k == "dit" else jax.tree.map(lambda _: False, v)
            for k, v in params.items()
        }
    if not f.freeze:
        return None
    return jax.tree.map(lambda frozen: not frozen, lora_lib.frozen_mask(params, f.freeze))


def dit_init_fn(config, dit: dit_lib.DiT, text_encoder, batch_size: int = 1):
    """`init(key) -> params` ({'dit': ..., 'text': ... if trainable}), the DiT's params boxed
    with their logical axis names (nn.Partitioned): `nn.unbox` them for plain arrays, or
    `jax.eval_shape` + `nn.get_partition_spec` for shardings."""
    dc, lt = config.dit, config.text.max_length
    b = batch_size
    x = jnp.zeros((b, dc.seq_len, dit.patch_dim), jnp.float32)
    seg = jnp.ones((b, dc.seq_len), jnp.int32)
    pos = jnp.zeros((b, dc.seq_len, 3), jnp.int32)
    t = jnp.zeros((b, dc.max_segments), jnp.float32)
    text = jnp.zeros((b, dc.max_segments, lt, text_encoder.dim), jnp.float32)
    tmask = jnp.ones((b, dc.max_segments, lt), bool)

    def init(key):
        k_dit, k_text = jax.random.split(key)
        params = {"dit": dit.init(k_dit, x, t, seg, pos, text, tmask)["params"]}
        if text_encoder.trainable:
            ids = jnp.zeros((1, lt), jnp.int32)
            params["text"] = text_encoder.module.init(k_text, ids, jnp.ones((1, lt), bool))[
                "params"
            ]
        return params

    return init


def abstract_dit_params(config, dit: dit_lib.DiT, text_encoder):
    """Shapes/dtypes of the (boxed) DiT and trainable text params, with no allocation."""
    return jax.eval_shape(dit_init_fn(config, dit, text_encoder), jax.random.PRNGKey(0))

"""Architectures of the public Wan transformers: diffusers' ``WanTransformer3DModel``
``config.json`` fields (``WanTransformerConfig``), as plain dicts for the configs."""

_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    text_dim=4096,  # UMT5-XXL states
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

WAN_2_1_T2V_1_3B = dict(
    _COMMON, num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960, num_layers=30
)
WAN_2_1_T2V_14B = dict(
    _COMMON, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40
)
# Text- and image-to-video on the 48-channel 4x16x16 Wan 2.2 VAE.
WAN_2_2_TI2V_5B = dict(
    _COMMON, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30
)

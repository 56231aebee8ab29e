"""The logical axis names of weights and activations, in one place.

Model and text-encoder code names array dimensions with these (``nn.with_logical_partitioning``,
``nn.with_logical_constraint``); ``config.mesh.rules`` (defaults in
``sora_jax.parallel.partitioning``) map each name to mesh axes. This module imports nothing, so
any layer can use it without loading the sharding code.
"""

BATCH = "batch"  # rows of a batch
LENGTH = "length"  # tokens of a (packed) row
EMBED = "embed"  # model width
HEADS = "heads"  # attention heads (or the flattened heads x head_dim projection width)
KV = "kv"  # per-head width of q, k, v
MLP = "mlp"  # feed-forward hidden width (also the adaLN modulation width)
PATCH = "patch"  # flattened latent patch (the DiT's input and output width)
TEXT_EMBED = "text_embed"  # width of the text encoder's outputs, as the DiT sees them
NORM = "norm"  # norm scales and biases
VOCAB = "vocab"  # token embedding rows
LAYERS = "layers"  # the stacked blocks of a scanned network
# Input / output channels of a (video VAE) conv kernel. No default rule maps them: the VAE's
# weights stay replicated unless config.mesh.rules names a mesh axis for them.
CONV_IN = "conv_in"
CONV_OUT = "conv_out"

LOGICAL_AXES = (
    BATCH,
    LENGTH,
    EMBED,
    HEADS,
    KV,
    MLP,
    PATCH,
    TEXT_EMBED,
    NORM,
    VOCAB,
    LAYERS,
    CONV_IN,
    CONV_OUT,
)

# Activation layouts.
TOKENS = (BATCH, LENGTH, EMBED)  # f[b l hidden]
QKV = (BATCH, LENGTH, HEADS, KV)  # per-head queries, keys, values f[b l h d]

"""Plan a DiT training run before paying for it: memory per device and FLOPs per step
(the library behind `python -m sora_jax.plan`).

Nothing is allocated: shapes come from `jax.eval_shape` of the (boxed) init, the shardings
from the config's logical rules applied to a mesh of any size (``--mesh``, which may name
more devices than this machine has; default: the config's mesh over the local devices), and
the FLOPs from XLA's count of the lowered (not compiled) train step. Printed per device:
params, optimizer state and EMA bytes as the rules split them, and an estimate of the
activations live at the backward pass's peak (what the remat policy keeps of every block plus
one block's working set; the dense-mask attention kernels keep l x l scores, the flash-style
ones only O(l)), within 1.5x of the compiled peak on the configurations of RESULTS.md.
`compiled_plan` compiles the real step for a TPU topology or the local devices beside it. Attention FLOPs are counted as the configured
kernel executes them on one video filling each row (sora_jax/models/flops.py).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental import topologies
from jax.sharding import PartitionSpec as P

from sora_jax.models import attention as attention_lib
from sora_jax.models import builders
from sora_jax.models import dit as dit_lib
from sora_jax.models import flops as flops_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.text import encoders
from sora_jax.training import dit_trainer, finetune
from sora_jax.training import train_state as ts

# Per-device memory (GiB) and dense bf16 peak (FLOP/s), from the vendors' data sheets.
DEVICES = {
    "v4": (32, 275e12),
    "v5e": (16, 197e12),
    "v5p": (95, 459e12),
    "v6e": (32, 918e12),
    "a100": (80, 312e12),
    "h100": (80, 989e12),
    "h200": (141, 989e12),
}


def parse_mesh(text: str) -> dict[str, int]:
    """'data:4,fsdp:8' -> {'data': 4, 'fsdp': 8, 'tensor': 1, 'sequence': 1}."""
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition(":")
        if name.strip() not in mesh_lib.AXES or not size.strip().isdigit():
            raise ValueError(f"--mesh={text!r}: write axis:size pairs, axes among {mesh_lib.AXES}")
        sizes[name.strip()] = int(size)
    return {a: sizes.get(a, 1) for a in mesh_lib.AXES}


def config_mesh_shape(config, devices: int | None = None) -> dict[str, int]:
    """The shape config.mesh gives on `devices` devices (default: this machine's)."""
    m = config.mesh
    n = devices or (jax.device_count() if m.num_devices == -1 else m.num_devices)
    dcn = [m.dcn[a] for a in mesh_lib.AXES]
    ici = mesh_lib.resolve_shape({a: m[a] for a in mesh_lib.AXES}, n // math.prod(dcn))
    return {a: i * d for a, i, d in zip(mesh_lib.AXES, ici, dcn)}


def model_summary(config) -> dict[str, float]:
    """Parameter counts and matmul FLOPs per token of the configured DiT (no allocation)."""
    text_encoder = _text_encoder(config)
    config = _analytic_view(config)
    dit = builders.build_dit(config, text_encoder.dim)
    params = builders.abstract_dit_params(config, dit, text_encoder)
    dc = config.dit
    flops = flops_lib.dit_flops_per_token(
        dit, dc.seq_len, builders.row_text_tokens(config), entries=builders.adaln_entries(config)
    )
    return {
        "dit_params": flops_lib.param_count(params["dit"]),
        "text_params": flops_lib.param_count(params.get("text", {})),
        "forward_flops_per_token": flops["forward"],
        "train_flops_per_token": flops["train"] + flops["remat"],
        "tokens_per_step": dc.rows * dc.seq_len,
    }


def _text_encoder(config) -> encoders.TextEncoder:
    """The run's text encoder; for a frozen one without its folder (text.path ''; planning a
    public model's fine-tune before its weights are at hand) a stand-in of the width the Wan
    transformer reads (dit.model.wan.text_dim). Frozen encoders never run in the train step
    (batches bring their cached caption states), so the stand-in plans the same step."""
    t = config.text
    if t.kind == "tiny" or t.path:
        return builders.build_text_encoder(config)
    if config.dit.model.arch != "wan":
        raise ValueError(f"config.text.path='': text.kind={t.kind!r} needs its model folder")
    return encoders.TextEncoder(
        None,
        None,
        trainable=False,
        params=None,
        dim=config.dit.model.wan.text_dim,
        max_length=t.max_length,
    )


def _analytic_view(config):
    """The config the analytic memory and FLOP model reads: a Wan transformer's as the
    project's DiT of the same shape (width, depth, heads, GELU FFN, cross-attention, one
    shared time projection with per-block tables); any other config unchanged."""
    if config.dit.model.arch != "wan":
        return config
    w = config.dit.model.wan
    c = config.copy_and_resolve_references()
    m = c.dit.model
    m.arch = "dit"
    m.hidden = w.num_attention_heads * w.attention_head_dim
    m.num_heads, m.depth = w.num_attention_heads, w.num_layers
    m.mlp, m.mlp_ratio = "gelu", w.ffn_dim / m.hidden
    m.text_attention, m.attention_layout, m.modulation = "cross", "full", "shared"
    m.abs_positions = m.cond_embedding = False
    return c


def _abstract_state(config):
    text_encoder = _text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    # As the trainer builds it: a LoRA / frozen fine-tune keeps optimizer state for the
    # trainable leaves only.
    tx = finetune.optimizer(
        config,
        ts.make_optimizer(config.dit.train),
        nn.unbox(builders.abstract_dit_params(config, dit, text_encoder)),
    )
    init = dit_trainer.boxed_init(config, dit, text_encoder, tx, None)
    return dit, text_encoder, tx, jax.eval_shape(init, jax.random.PRNGKey(0))


def _split_bytes(abstract_boxed, shape: dict[str, int], rules) -> tuple[int, int]:
    """(total bytes, bytes on one device) of a boxed abstract pytree under the rules."""
    specs = nn.get_partition_spec(abstract_boxed)
    total = per_device = 0
    leaves = jax.tree.leaves(nn.unbox(abstract_boxed))
    for x, spec in zip(leaves, jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
        axes = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else ()
        n = x.dtype.itemsize
        total += math.prod(x.shape) * n
        local = list(x.shape)
        for i, a in enumerate(axes):
            for name in (a,) if isinstance(a, str) else (a or ()):
                local[i] = -(-local[i] // shape[name])
        per_device += math.prod(local) * n
    return total, per_device


# Fitted to compiled TPU peaks (RESULTS.md, "DiT at scale: planned vs compiled"), as
# multiples of the tensors one block's forward pass makes (`_block_elements`):
# the working set of one block while it is recomputed and differentiated (the forward
# tensors, their cotangents and XLA's fusion buffers), and what a block keeps without remat
# (float32 copies of the norms' inputs and the MLP's pre-activation besides those tensors).
_WORKING_SET = 2.5
_KEPT_WITHOUT_REMAT = 1.8
# The Wan block's working set, fitted the same way to the 1.3B at 480p: 2.0 GiB of a
# 32k-token row on v5p-8 (fsdp 4), 7.7 GiB on v5e-8 (fsdp 8, where XLA gathers activations
# across chips); the factor sits between the two (estimate / compiled 1.26 and 0.81).
_WORKING_SET_WAN = 1.5


def _block_elements(hid: int, mlp_hidden: int, tp: int, text_attention: str) -> dict[str, float]:
    """Per video token, one block's tensors (elements): 'all' it makes in the forward pass,
    'dots' the matmul outputs among them. Tensor-split ones are divided by ``tp``."""
    # Replicated over tensor shards: residual in / out, the two norms and their modulated
    # inputs, the gathered shift / scale / gate (6h), attention and MLP outputs after gating.
    replicated = 16 * hid
    # Split over tensor shards: qkv (3h), normed / rotated q and k (2h), attention output
    # (h), MLP hidden and its activation (2 mlp_hidden); cross-attention q and output (2h).
    split = 6 * hid + 2 * mlp_hidden + (2 * hid if text_attention == "cross" else 0)
    dots = 3 * hid + hid + mlp_hidden + hid + (2 * hid if text_attention == "cross" else 0)
    return {"all": replicated + split / tp, "dots": hid + dots / tp}


def activation_bytes(config, shape: dict[str, int], platform: str | None = None) -> int:
    """Activations live on one device at the peak of the backward pass: what the remat
    policy keeps of every block, plus one block's working set while it is recomputed and
    differentiated, in the compute dtype. Dense-mask attention kernels keep l x l scores
    (every block's without remat, one block's with it); the flash-style ones only O(l)."""
    working_set = _WORKING_SET_WAN if config.dit.model.arch == "wan" else _WORKING_SET
    config = _analytic_view(config)
    m, dc = config.dit.model, config.dit
    hid, depth = m.hidden, m.depth
    mlp_hidden = (
        dit_lib.swiglu_hidden(hid, m.mlp_ratio) * 3 // 2
        if m.mlp == "swiglu"
        else int(hid * m.mlp_ratio)
    )
    rows = dc.rows / (shape["data"] * shape["fsdp"]) / dc.train.grad_accum_steps
    tp, sp = shape["tensor"], shape["sequence"]
    text_len = builders.row_text_tokens(config)
    # The joint layout runs the text stream through every block as tokens of its own.
    stream = dc.seq_len + (text_len if m.text_attention == "joint" else 0)
    tokens = rows * stream / sp
    block = _block_elements(hid, mlp_hidden, tp, m.text_attention)
    period = len(dit_lib.period_layouts(m.attention_layout)) if m.scan_blocks else 1
    kept = {
        "none": _KEPT_WITHOUT_REMAT * block["all"] * depth,
        "everything_saveable": _KEPT_WITHOUT_REMAT * block["all"] * depth,
        "dots_saveable": block["dots"] * depth,
        "dots_with_no_batch_dims_saveable": block["dots"] * depth,
        # A rematerialised function keeps its inputs: one residual per remat unit.
        "nothing_saveable": hid * depth / period,
        "save_block_inputs": hid * depth,
        "offload_block_inputs": 0.0,
    }[m.remat_policy]
    working = 0.0 if m.remat_policy in ("none", "everything_saveable") else block["all"]
    itemsize = jnp.dtype(m.dtype).itemsize
    act = tokens * (kept + working_set * working) * itemsize
    if attention_lib.resolve(m.attention_impl, platform) in ("xla", "cudnn"):
        layers = depth if m.remat_policy in ("none", "everything_saveable") else 1
        keys = dc.seq_len + text_len
        scores = rows * m.num_heads / tp * (dc.seq_len / sp) * keys * 2 * 4  # f32 logits, probs
        mask = rows * dc.seq_len * keys  # bool, shared by the heads
        act += layers * (scores + mask)
    return int(act)


def analytic_flops(config, platform: str | None = None) -> float:
    """Training FLOPs per step of the DiT (3 x forward, matmuls and attention; see
    sora_jax/models/flops.py)."""
    text_encoder = _text_encoder(config)
    config = _analytic_view(config)
    dit = builders.build_dit(config, text_encoder.dim)
    dc = config.dit
    per_token = flops_lib.dit_flops_per_token(
        dit,
        dc.seq_len,
        builders.row_text_tokens(config),
        platform=platform,
        entries=builders.adaln_entries(config),
    )
    return per_token["train"] * dc.rows * dc.seq_len


def abstract_batch(config, dit, text_encoder) -> dict:
    """The shapes and dtypes of one global DiT batch (``jax.ShapeDtypeStruct`` leaves): caption
    ids for a trained text encoder, a frozen one's cached states ('caption_emb') otherwise, as
    the input pipelines give them."""
    dc, lt = config.dit, config.text.max_length
    b, l, s = dc.rows, dc.seq_len, dc.max_segments
    sds = jax.ShapeDtypeStruct
    batch = {
        "tokens": sds((b, l, dit.patch_dim), jnp.float32),
        "segment_ids": sds((b, l), jnp.int32),
        "positions": sds((b, l, 3), jnp.int32),
        "caption_mask": sds((b, s, lt), jnp.bool_),
    }
    if text_encoder.trainable:
        batch["caption_ids"] = sds((b, s, lt), jnp.int32)
    else:
        batch["caption_emb"] = sds((b, s, lt, text_encoder.dim), jnp.float32)
    if dc.condition.rate > 0:
        batch["cond_mask"] = sds((b, l), jnp.bool_)
    return batch


def xla_flops(config, dit, text_encoder, tx, abstract_boxed) -> float:
    """XLA's FLOP count of the whole jitted train step on the global batch (lowered only)."""
    batch = abstract_batch(config, dit, text_encoder)
    step = dit_trainer.make_train_step(config, dit, text_encoder, tx, text_encoder.params)
    state = nn.unbox(abstract_boxed)
    lowered = jax.jit(step).lower(state, batch, jax.random.PRNGKey(0))
    return float(lowered.cost_analysis()["flops"])


def plan(
    config,
    shape: dict[str, int],
    device_kind: str | None = None,
    count_xla=True,
    platform: str | None = None,
) -> dict:
    """The numbers for `config` on a mesh of `shape` (axis -> size) of `device_kind` devices
    (whose platform, default from the kind, picks the attention kernel)."""
    rules = partitioning.rules_from_config(config.mesh.rules)
    dit, text_encoder, tx, abstract = _abstract_state(config)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract.params)))
    dit_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract.params["dit"])))
    p_total, p_dev = _split_bytes(abstract.params, shape, rules)
    o_total, o_dev = _split_bytes(abstract.opt_state, shape, rules)
    e_total, e_dev = _split_bytes(abstract.ema_params, shape, rules)
    # Gradients exist for the trainable leaves only (the others are under stop_gradient):
    # their share of the params' bytes.
    mask = builders.trainable_mask(config, nn.unbox(abstract.params))
    g_dev = p_dev
    if mask is not None:
        leaves = jax.tree.leaves(nn.unbox(abstract.params))
        trained = [x for x, m in zip(leaves, jax.tree.leaves(mask)) if m]
        g_dev = p_dev * sum(math.prod(x.shape) * x.dtype.itemsize for x in trained) / p_total
    if platform is None and device_kind:
        platform = "tpu" if device_kind.startswith("v") else "gpu"
    act = activation_bytes(config, shape, platform)
    devices = math.prod(shape.values())
    flops = analytic_flops(config, platform)
    out = {
        "attention_kernel": attention_lib.resolve(config.dit.model.attention_impl, platform),
        "mesh": shape,
        "devices": devices,
        "params": params,
        "dit_params": dit_params,
        "param_bytes": p_total,
        "optimizer_bytes": o_total,
        "ema_bytes": e_total,
        "per_device": {
            "param_bytes": p_dev,
            "optimizer_bytes": o_dev,
            "ema_bytes": e_dev,
            # Gradients: one more params-sharded tree (of the trainable leaves) in the step.
            "gradient_bytes": g_dev,
            "activation_bytes_estimate": act,
            "total_bytes": p_dev + g_dev + o_dev + e_dev + act,
        },
        "rows": config.dit.rows,
        "tokens_per_step": config.dit.rows * config.dit.seq_len,
        "flops_per_step_analytic": flops,
        "flops_per_device_analytic": flops / devices,
    }
    if count_xla:
        out["flops_per_step_xla"] = xla_flops(config, dit, text_encoder, tx, abstract)
    if device_kind:
        mem_gib, peak = DEVICES[device_kind]
        total_gib = out["per_device"]["total_bytes"] / 2**30
        out["device"] = {
            "kind": device_kind,
            "memory_gib": mem_gib,
            "fits": total_gib <= mem_gib,
            "step_seconds_at_peak_bf16": flops / devices / peak,
        }
    return out


def _gib(n) -> str:
    return f"{n / 2**30:.3f} GiB"


def report(p: dict) -> str:
    d = p["per_device"]
    lines = [
        f"mesh {p['mesh']} ({p['devices']} devices)",
        f"params          {p['params']:,} ({p['dit_params']:,} DiT), {_gib(p['param_bytes'])}",
        f"optimizer state {_gib(p['optimizer_bytes'])}; EMA {_gib(p['ema_bytes'])}",
        "per device:",
        f"  params {_gib(d['param_bytes'])}, gradients {_gib(d['gradient_bytes'])}, "
        f"optimizer {_gib(d['optimizer_bytes'])}, EMA {_gib(d['ema_bytes'])}",
        f"  activations (estimate) {_gib(d['activation_bytes_estimate'])}",
        f"  total {_gib(d['total_bytes'])}",
        f"tokens per step {p['tokens_per_step']:,}; attention kernel {p['attention_kernel']} "
        f"(FLOPs and activations as it executes on one video per row)",
        f"FLOPs per step  {p['flops_per_step_analytic']:.4g} (analytic), "
        f"{p['flops_per_device_analytic']:.4g} per device",
    ]
    if "flops_per_step_xla" in p:
        lines.append(f"FLOPs per step  {p['flops_per_step_xla']:.4g} (XLA count of the step)")
    if "device" in p:
        dev = p["device"]
        lines.append(
            f"{dev['kind']}: {dev['memory_gib']} GiB per device, "
            f"{'fits' if dev['fits'] else 'DOES NOT FIT'}; "
            f"{dev['step_seconds_at_peak_bf16']:.3g} s per step at peak bf16"
        )
    return "\n".join(lines)


# Cloud TPU names count TensorCores on v4 / v5p (two per chip) and chips on v5e / v6e.
_CLOUD_KINDS = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5e": ("v5e", 1), "v5litepod": ("v5e", 1),
                "v6e": ("v6e", 1)}  # fmt: skip
_TOPOLOGY_HELP = (
    "write a Cloud TPU name (v4-8, v5p-8 / v5p-16 / v5p-32 ..., v5litepod-8 or v5e-8, v6e-8) "
    "or kind:shape ('v5p:2x2x1', 'v5e:2x4')"
)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: its kind ('v5p', ...) and chips along each torus dimension."""

    kind: str
    bounds: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.bounds)

    @property
    def shape(self) -> str:
        return "x".join(map(str, self.bounds))

    def __str__(self) -> str:
        return f"{self.kind}:{self.shape}"


def _slice_bounds(chips: int, dims: int) -> tuple[int, ...] | None:
    """The torus Cloud TPU gives a slice of `chips` (powers of two): from the smallest host
    (2x2x1 for 3D kinds, 2x2 for 2D ones) the last of the shortest dimensions doubles, as in
    v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 and v5e 2x2, 2x4, 4x4, 4x8."""
    if dims == 2 and chips == 1:
        return (1, 1)
    bounds = [2, 2, 1][:dims] if dims == 3 else [2, 2]
    while math.prod(bounds) < chips:
        shortest = min(bounds)
        i = max(j for j, b in enumerate(bounds) if b == shortest)
        bounds[i] *= 2
    return tuple(bounds) if math.prod(bounds) == chips else None


def parse_topology(name: str) -> Topology:
    """'v5p-8' (4 chips, 2x2x1), 'v5p-16' (2x2x2), 'v5e-8' / 'v5litepod-8' (2x4), 'v6e-8',
    'v4-8', or an explicit 'v5p:2x2x1' / 'v5e:2x4'. Raises a one-line ValueError otherwise."""
    kind, sep, shape = name.partition(":")
    if sep:
        try:
            bounds = tuple(int(x) for x in shape.split("x"))
        except ValueError:
            bounds = ()
        dims = 3 if kind in ("v4", "v5p") else 2
        if (
            kind in _CLOUD_KINDS
            and kind != "v5litepod"
            and len(bounds) in (dims, 3)
            and all(b > 0 for b in bounds)
        ):
            return Topology(kind, bounds)
        raise ValueError(f"topology {name!r}: {_TOPOLOGY_HELP}")
    kind, _, count = name.rpartition("-")
    if kind in _CLOUD_KINDS and count.isdigit():
        kind, per_chip = _CLOUD_KINDS[kind]
        chips, rest = divmod(int(count), per_chip)
        bounds = _slice_bounds(chips, 3 if per_chip == 2 else 2) if chips and not rest else None
        if bounds:
            return Topology(kind, bounds)
    raise ValueError(f"topology {name!r}: {_TOPOLOGY_HELP}")


def topology_devices(name: str | Topology):
    """The devices of a TPU slice (a `parse_topology` name; needs libtpu; nothing runs on
    them: they serve ahead-of-time compilation on any host)."""
    t = parse_topology(name) if isinstance(name, str) else name
    x, y, *_ = t.bounds + (1,)
    # A host holds 2x2x1 chips on v4 / v5p and up to 2x4 on v5e / v6e; larger slices are
    # several hosts (multi-host topologies compile the same way).
    host = (min(x, 2), min(y, 2 if t.kind in ("v4", "v5p") else 4), 1)
    # Compiling needs no chip: let several processes (test workers, two plans) open libtpu
    # at once instead of the first holding its lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # jax names v5p 'v5' (megacore chips).
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=f"{'v5' if t.kind == 'v5p' else t.kind}:{t.shape}",
        chip_config_name="megacore" if t.kind in ("v4", "v5p") else "default",
        chips_per_host_bounds=host,
        num_slices=1,
        wrap=(False, False, False),
    )
    return topology.devices


class NeedsLibtpu(RuntimeError):
    """A TPU topology was asked for on a host without libtpu."""


def have_libtpu() -> bool:
    """Whether TPU topologies can be compiled for here (the [tpu] extra installed)."""
    return importlib.util.find_spec("libtpu") is not None


def compiled_step(config, mesh) -> dict:
    """Lowers and compiles the real DiT train step for ``mesh`` (whose devices may be a TPU
    topology's) and returns XLA's per-device memory (bytes), FLOPs and compile seconds. A
    program larger than the device fails to compile: then ``oom`` is True and ``peak_bytes``
    is the size XLA states (0 where it states none)."""
    rules = partitioning.rules_from_config(config.mesh.rules)
    dit, text_encoder, tx, _ = _abstract_state(config)
    batch_split = mesh_lib.batch_size_divisor(mesh)
    init = dit_trainer.boxed_init(config, dit, text_encoder, tx, None, batch_split)
    batch = abstract_batch(config, dit, text_encoder)
    step = dit_trainer.make_train_step(config, dit, text_encoder, tx, text_encoder.params)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))  # abstract: nothing is placed
    with partitioning.activate(mesh, rules):
        abstract = jax.eval_shape(init, key)
    state_shardings = partitioning.shardings(abstract, mesh, rules)
    # Unboxed outside the mesh: inside it, unboxing would constrain (place) the leaves.
    state = nn.unbox(abstract)
    with partitioning.activate(mesh, rules):
        batch_shardings = jax.tree.map(lambda _: mesh_lib.data_sharding(mesh), batch)
        key_sharding = mesh_lib.replicated(mesh)
        jitted = jax.jit(
            step,
            in_shardings=(state_shardings, batch_shardings, key_sharding),
            out_shardings=(state_shardings, key_sharding),
            # As the training loop does: the old state's buffers hold the new one.
            donate_argnums=0,
        )
        t0 = time.perf_counter()
        lowered = jitted.lower(state, batch, key)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return _out_of_memory(str(e), time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "oom": False,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "peak_bytes": getattr(memory, "peak_memory_in_bytes", 0),
        "flops": float(cost.get("flops", 0.0)),
        "compile_seconds": seconds,
        "hlo": _optimized_hlo(compiled),
    }


def _optimized_hlo(compiled) -> str:
    """The compiled program's HLO text, or '' where the backend cannot print it (some libtpu
    releases fail a RET_CHECK printing their own async ops); the memory figures stand."""
    try:
        return compiled.as_text()
    except jax.errors.JaxRuntimeError as e:
        logging.warning("no HLO text of the compiled step (all-gathers not counted): %s", e)
        return ""


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory(message: str, seconds: float) -> dict:
    """The figures of a compile that ran out of device memory. XLA:TPU states e.g. 'Used
    117.43G of 95.74G hbm' or (newer libtpu) 'the total memory required for HLO temporaries
    (97.34G) exceeds available HBM'; the first line of its message is kept for the report."""
    used = re.search(r"Used ([0-9.]+)([KMGT]?)i?B? of ([0-9.]+)([KMGT]?)", message) or re.search(
        r"required for HLO temporaries \(([0-9.]+)([KMGT]?)i?B?\)", message
    )
    needed = int(float(used.group(1)) * _UNITS[used.group(2)]) if used else 0
    lines = [x.strip() for x in message.splitlines() if "RESOURCE_EXHAUSTED" in x or "Used" in x]
    return {
        "oom": True,
        "peak_bytes": needed,
        "message": " ".join(lines)[:300] or message.splitlines()[0][:300],
        "compile_seconds": seconds,
    }


def compiled_peak(result: dict, platform: str = "tpu") -> tuple[int, str]:
    """(bytes, where from): XLA's peak where the backend reports one, else what is live at
    once (arguments + outputs + temporaries, less the outputs aliasing donated arguments)."""
    if result["oom"]:
        return result["peak_bytes"], "the size XLA states in its RESOURCE_EXHAUSTED error"
    # The CPU backend states its arguments as the peak (not one); TPU's is below the sum.
    if result["peak_bytes"] and platform != "cpu":
        return result["peak_bytes"], "XLA's peak_memory_in_bytes"
    live = result["argument_bytes"] + result["output_bytes"] + result["temp_bytes"]
    return live - result["alias_bytes"], "arguments + outputs + temporaries - aliased"


@dataclasses.dataclass(frozen=True)
class Target:
    """What a plan is compiled for: a TPU topology's devices or this machine's."""

    label: str  # 'v5p-8 (v5p:2x2x1, 4 chips)', 'local cpu (8 devices)'
    devices: list
    platform: str  # 'tpu', 'gpu', 'cpu'
    kind: str | None  # a DEVICES key, for the analytic plan
    memory_bytes: int  # per device
    memory_source: str


def compile_target(topology: str | None) -> Target:
    """The devices to compile for: a TPU topology name (see `parse_topology`; needs libtpu),
    or None / 'local' for this machine's devices."""
    if topology in (None, "", "local"):
        return _local_target()
    t = parse_topology(topology)
    if not have_libtpu():
        raise NeedsLibtpu(
            f'compiling for {topology} needs libtpu: pip install -e ".[tpu]" '
            "(or plan without --topology)"
        )
    memory = DEVICES[t.kind][0] * 2**30
    label = f"{topology} ({t}, {t.chips} chips)" if topology != str(t) else f"{t} ({t.chips} chips)"
    return Target(label, topology_devices(t), "tpu", t.kind, memory, "data sheet")


def _local_target() -> Target:
    devices = jax.devices()
    d = devices[0]
    name = d.device_kind.lower()
    kind = next((k for k in DEVICES if k in name.replace(" ", "")), None)
    stats = d.memory_stats() if d.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        memory, source = stats["bytes_limit"], "the device's bytes_limit"
    elif kind:
        memory, source = DEVICES[kind][0] * 2**30, "data sheet"
    else:
        # Simulated CPU devices share the host's memory.
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory, source = host // len(devices), f"host memory / {len(devices)} devices"
    label = f"local {d.platform} ({len(devices)} x {d.device_kind})"
    return Target(label, devices, d.platform, kind, memory, source)


def configure_mesh(config, shape: dict[str, int], num_devices: int):
    """A copy of `config` whose mesh is `shape` over `num_devices` (one slice; validate it
    again); the rows per step must split over the batch axes and the microbatches."""
    if math.prod(shape.values()) != num_devices:
        raise ValueError(f"mesh {shape} has {math.prod(shape.values())} devices, not {num_devices}")
    c = copy.deepcopy(config)
    for axis, size in shape.items():
        c.mesh[axis] = size
        c.mesh.dcn[axis] = 1
    c.mesh.num_devices = num_devices
    split = shape["data"] * shape["fsdp"] * c.dit.train.grad_accum_steps
    if c.dit.rows % split:
        raise ValueError(
            f"dit.rows={c.dit.rows} does not split over data x fsdp x grad_accum_steps = {split}: "
            f"set --config.dit.rows to a multiple of {split}"
        )
    return c


def compiled_plan(config, target: Target) -> dict:
    """The analytic plan of `config` beside XLA's figures for its train step compiled for
    `target`, on the config's mesh over the target's devices (see `configure_mesh`)."""
    n = len(target.devices)
    shape = config_mesh_shape(config, n)
    out = plan(config, shape, target.kind, count_xla=False, platform=target.platform)
    mesh = mesh_lib.create_mesh(n, ici=shape, devices=target.devices)
    compiled = compiled_step(config, mesh)
    peak, source = compiled_peak(compiled, target.platform)
    hlo = compiled.pop("hlo", "")
    gathers = activation_all_gathers(hlo, config.dit.rows, config.dit.seq_len) if hlo else None
    out["compiled"] = {
        **compiled,
        "target": target.label,
        "peak_bytes": peak,
        "peak_source": source,
        "memory_bytes": target.memory_bytes,
        "memory_source": target.memory_source,
        "fits": not compiled["oom"] and peak <= target.memory_bytes,
        "activation_all_gathers": gathers,
    }
    return out


def activation_all_gathers(hlo_text: str, rows: int, seq_len: int) -> list[dict]:
    """The all-gathers in compiled HLO whose result is a token activation: ``[b, seq_len, ...]``
    with b <= rows, or ``[rows * seq_len, ...]``. Activations split over the batch axes must
    stay split (the weights' fsdp axis must not force them replicated): a sound program has
    none; sequence-parallel gathers of keys and values would show here too."""
    found = []
    for line in hlo_text.splitlines():
        op = re.search(r"=\s*(\(?[^=]*?\)?)\s+all-gather(?:-start)?\(", line)
        if not op:
            continue
        for dtype, dims in re.findall(r"(\w+)\[([0-9,]*)\]", op.group(1)):
            d = [int(x) for x in dims.split(",") if x]
            batch_first = len(d) >= 3 and d[1] == seq_len and d[0] <= rows
            if batch_first or (d and d[0] == rows * seq_len):
                gathered = re.search(r"dimensions=\{([0-9,]*)\}", line)
                found.append(
                    {
                        "shape": f"{dtype}[{dims}]",
                        "dimensions": gathered.group(1) if gathered else "",
                    }
                )
                break
    return found


def _bytes_line(name: str, n: int) -> str:
    return f"  {name:<22s} {n / 2**30:10.3f} GiB"


def compiled_report(p: dict) -> str:
    """The analytic report, the compiled figures beside it, and a last line
    ``fits=yes|no peak_gib=<x> hbm_gib=<y>``."""
    c, d = p["compiled"], p["per_device"]
    header = f"compiled for {c['target']}, mesh {p['mesh']}, rows per step {p['rows']}"
    lines = [report(p), f"{header}, in {c['compile_seconds']:.1f} s"]
    if c["oom"]:
        lines.append(f"  does not fit: {c['message']}")
    else:
        lines += [
            "per device (XLA memory_analysis):",
            _bytes_line("arguments", c["argument_bytes"]),
            _bytes_line("outputs", c["output_bytes"]),
            _bytes_line("  of them aliased", c["alias_bytes"]),
            _bytes_line("temporaries", c["temp_bytes"]),
        ]
    est = d["total_bytes"]
    lines += [
        _bytes_line("peak (compiled)", c["peak_bytes"]) + f"  ({c['peak_source']})",
        _bytes_line("peak (estimate)", est)
        + (f"  (estimate / compiled {est / c['peak_bytes']:.2f})" if c["peak_bytes"] else ""),
        _bytes_line("memory", c["memory_bytes"]) + f"  ({c['memory_source']})",
    ]
    if not c["oom"]:
        lines.append(
            f"FLOPs per device {c['flops']:.4g} (XLA, compiled), "
            f"{p['flops_per_device_analytic']:.4g} (analytic)"
        )
        gathers = c["activation_all_gathers"]
        lines.append(f"all-gathers of [rows, L, *] activations: {len(gathers)}")
        lines += [f"  {g['shape']} along dimension {g['dimensions']}" for g in gathers[:5]]
    lines.append(
        f"fits={'yes' if c['fits'] else 'no'} peak_gib={c['peak_bytes'] / 2**30:.3f} "
        f"hbm_gib={c['memory_bytes'] / 2**30:.3g}"
    )
    return "\n".join(lines)

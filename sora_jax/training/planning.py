"""Plan a DiT training run before paying for it: memory per device and FLOPs per step
(the library behind `python -m sora_jax.plan`).

Nothing is allocated: shapes come from `jax.eval_shape` of the (boxed) init, the shardings
from the config's logical rules applied to a mesh of any size (``--mesh``, which may name
more devices than this machine has; default: the config's mesh over the local devices), and
the FLOPs from XLA's count of the lowered (not compiled) train step. Printed per device:
params, optimizer state and EMA bytes as the rules split them, and an estimate of the
activations the backward pass keeps (no remat; the dense-mask attention kernels keep their
l x l scores, the flash-style ones only O(l)). Attention FLOPs are counted as the configured
kernel executes them on one video filling each row (sora_jax/models/flops.py).
"""

from __future__ import annotations

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import PartitionSpec as P

from sora_jax.models import attention as attention_lib
from sora_jax.models import builders
from sora_jax.models import flops as flops_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.training import dit_trainer
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


def config_mesh_shape(config) -> dict[str, int]:
    """The shape config.mesh gives on this machine's devices."""
    m = config.mesh
    n = jax.device_count() if m.num_devices == -1 else m.num_devices
    dcn = [m.dcn[a] for a in mesh_lib.AXES]
    ici = mesh_lib.resolve_shape({a: m[a] for a in mesh_lib.AXES}, n // math.prod(dcn))
    return {a: i * d for a, i, d in zip(mesh_lib.AXES, ici, dcn)}


def model_summary(config) -> dict[str, float]:
    """Parameter counts and matmul FLOPs per token of the configured DiT (no allocation)."""
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    params = builders.abstract_dit_params(config, dit, text_encoder)
    dc = config.dit
    flops = flops_lib.dit_flops_per_token(dit, dc.seq_len, builders.row_text_tokens(config))
    return {
        "dit_params": flops_lib.param_count(params["dit"]),
        "text_params": flops_lib.param_count(params.get("text", {})),
        "forward_flops_per_token": flops["forward"],
        "train_flops_per_token": flops["train"] + flops["remat"],
        "tokens_per_step": dc.rows * dc.seq_len,
    }


def _abstract_state(config):
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    tx = ts.make_optimizer(config.dit.train)
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


def activation_bytes(config, shape: dict[str, int], platform: str | None = None) -> int:
    """Estimated activations kept for the backward pass on one device (f32, no remat); the
    dense-mask kernels also keep their l x l scores and mask, the flash-style ones do not."""
    m, dc = config.dit.model, config.dit
    hid, r, heads, depth = m.hidden, m.mlp_ratio, m.num_heads, m.depth
    batch_split = shape["data"] * shape["fsdp"]
    rows = dc.rows / batch_split / dc.train.grad_accum_steps
    tp, sp = shape["tensor"], shape["sequence"]
    tokens = rows * dc.seq_len / sp
    text_len = dc.max_segments * config.text.max_length
    # Per token per block: 8 hidden-wide tensors on every tensor shard (residuals, norms,
    # modulated inputs) and the tensor-split ones (adaLN 6h, qkv 3h, q/k normed 2h, attention
    # outputs 2h, cross q h, MLP 2rh).
    per_token = 8 * hid + (14 * hid + 2 * r * hid) / tp
    if attention_lib.resolve(m.attention_impl, platform) not in ("xla", "cudnn"):
        # Flash-style kernels keep O(L) (output and log-sum-exp), counted in per_token.
        return int(depth * tokens * per_token * 4)
    scores = rows * heads / tp * (dc.seq_len / sp) * (dc.seq_len + text_len) * 2  # logits, probs
    mask = rows * dc.seq_len * (dc.seq_len + text_len)  # bool, shared by the heads
    return int(depth * ((tokens * per_token + scores) * 4 + mask))


def analytic_flops(config, platform: str | None = None) -> float:
    """Training FLOPs per step of the DiT (3 x forward, matmuls and attention; see
    sora_jax/models/flops.py)."""
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    dc = config.dit
    per_token = flops_lib.dit_flops_per_token(
        dit, dc.seq_len, builders.row_text_tokens(config), platform=platform
    )
    return per_token["train"] * dc.rows * dc.seq_len


def abstract_batch(config, dit) -> dict:
    """The shapes and dtypes of one global DiT batch (``jax.ShapeDtypeStruct`` leaves)."""
    dc, lt = config.dit, config.text.max_length
    b, l, s = dc.rows, dc.seq_len, dc.max_segments
    sds = jax.ShapeDtypeStruct
    batch = {
        "tokens": sds((b, l, dit.patch_dim), jnp.float32),
        "segment_ids": sds((b, l), jnp.int32),
        "positions": sds((b, l, 3), jnp.int32),
        "caption_ids": sds((b, s, lt), jnp.int32),
        "caption_mask": sds((b, s, lt), jnp.bool_),
    }
    if dc.condition.rate > 0:
        batch["cond_mask"] = sds((b, l), jnp.bool_)
    return batch


def xla_flops(config, dit, text_encoder, tx, abstract_boxed) -> float:
    """XLA's FLOP count of the whole jitted train step on the global batch (lowered only)."""
    batch = abstract_batch(config, dit)
    step = dit_trainer.make_train_step(config, dit, text_encoder, tx, text_encoder.params)
    state = nn.unbox(abstract_boxed)
    lowered = jax.jit(step).lower(state, batch, jax.random.PRNGKey(0))
    return float(lowered.cost_analysis()["flops"])


def plan(config, shape: dict[str, int], device_kind: str | None = None, count_xla=True) -> dict:
    """The numbers for `config` on a mesh of `shape` (axis -> size)."""
    rules = partitioning.rules_from_config(config.mesh.rules)
    dit, text_encoder, tx, abstract = _abstract_state(config)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract.params)))
    dit_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract.params["dit"])))
    p_total, p_dev = _split_bytes(abstract.params, shape, rules)
    o_total, o_dev = _split_bytes(abstract.opt_state, shape, rules)
    e_total, e_dev = _split_bytes(abstract.ema_params, shape, rules)
    platform = None if not device_kind else ("tpu" if device_kind.startswith("v") else "gpu")
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
            # Gradients: one more params-sized, params-sharded tree during the step.
            "gradient_bytes": p_dev,
            "activation_bytes_estimate": act,
            "total_bytes": 2 * p_dev + o_dev + e_dev + act,
        },
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


def topology_devices(name: str):
    """The devices of a TPU slice named like 'v5p:2x2x1' or 'v5e:2x4' (needs libtpu; nothing
    runs on them: they serve ahead-of-time compilation on any host)."""
    kind, _, shape = name.partition(":")
    bounds = tuple(int(x) for x in shape.split("x"))
    if kind not in ("v4", "v5e", "v5p", "v6e") or len(bounds) not in (2, 3):
        raise ValueError(f"topology {name!r}: write e.g. 'v5p:2x2x1', 'v5e:2x4', 'v6e:2x2'")
    chips = bounds + (1,) * (3 - len(bounds))
    # jax names v5p 'v5' (megacore chips) and v5e 'v5e'.
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=f"{'v5' if kind == 'v5p' else kind}:{shape}",
        chip_config_name="megacore" if kind in ("v4", "v5p") else "default",
        chips_per_host_bounds=(min(chips[0], 2), min(chips[1], 2), 1),
        num_slices=1,
        wrap=(False, False, False),
    )
    return topology.devices


def compiled_step(config, mesh) -> dict:
    """Lowers and compiles the real DiT train step for ``mesh`` (whose devices may be a TPU
    topology's) and returns XLA's per-device memory (bytes), FLOPs and compile seconds."""
    rules = partitioning.rules_from_config(config.mesh.rules)
    dit, text_encoder, tx, _ = _abstract_state(config)
    batch_split = mesh_lib.batch_size_divisor(mesh)
    init = dit_trainer.boxed_init(config, dit, text_encoder, tx, None, batch_split)
    batch = abstract_batch(config, dit)
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
        )
        t0 = time.perf_counter()
        compiled = jitted.lower(state, batch, key).compile()
        seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "peak_bytes": getattr(memory, "peak_memory_in_bytes", 0),
        "flops": float(cost.get("flops", 0.0)),
        "compile_seconds": seconds,
        "hlo": compiled.as_text(),
    }

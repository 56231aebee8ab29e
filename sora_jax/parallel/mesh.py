"""Device mesh from config axes, and placing host batches on it.

The mesh always has the four axes ``('data', 'fsdp', 'tensor', 'sequence')`` (size-1 axes
cost nothing), so shardings name the same axes whatever the parallelism:

- data: replicas of the model, each on its slice of the batch;
- fsdp: batch split too, params and optimizer state split across it (ZeRO-3 style);
- tensor: attention heads and MLP hidden units split across it;
- sequence: long packed token rows split along their length (see ``parallel.sequence``).

Batches are split along their leading axis over ``('data', 'fsdp')``. A hybrid mesh (several
TPU slices or GPU nodes) puts the ``dcn`` sizes across slices / processes and ``ici`` inside
them, so only the data axis (usually) crosses the slow network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sora_jax.common import config_checks as cc
from sora_jax.data import packing

DATA, FSDP, TENSOR, SEQUENCE = "data", "fsdp", "tensor", "sequence"
AXES = (DATA, FSDP, TENSOR, SEQUENCE)
BATCH_AXES = (DATA, FSDP)


def resolve_shape(sizes: Mapping[str, int], num_devices: int, what: str = "mesh") -> tuple:
    """Sizes per axis in AXES order, one -1 filled with what the others leave.

    Missing axes are 1. Raises ValueError naming the sizes when they cannot fit `num_devices`.
    """
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"{what}: unknown axes {sorted(unknown)}; the axes are {AXES}")
    shape = [int(sizes.get(a, 1)) for a in AXES]
    fill = [i for i, s in enumerate(shape) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"{what} {dict(zip(AXES, shape))}: sizes must be >= 1, one may be -1")
    known = math.prod(s for s in shape if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"{what} {dict(zip(AXES, shape))}: {num_devices} devices are not divisible by "
                f"the fixed axes' product {known}"
            )
        shape[fill[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"{what} {dict(zip(AXES, shape))}: the axes' product {math.prod(shape)} does not "
            f"match the {num_devices} devices"
        )
    return tuple(shape)


def create_mesh(
    num_devices: int = -1,
    *,
    ici: Mapping[str, int] | None = None,
    dcn: Mapping[str, int] | None = None,
    devices: Sequence | None = None,
) -> Mesh:
    """A mesh over `num_devices` devices (-1: all of them).

    ``ici`` (axis -> size, one -1 allowed) shapes it; without it the mesh is data parallel.
    ``dcn`` (axis -> size) makes a hybrid mesh: each axis is dcn[a] * ici[a] long, with the
    dcn part across slices (TPU) or processes (GPU nodes), via ``mesh_utils``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices == -1:
        num_devices = len(devices)
    if not 0 < num_devices <= len(devices):
        raise ValueError(f"mesh.num_devices={num_devices}: only {len(devices)} devices exist")
    devices = devices[:num_devices]
    ici = dict(ici or {DATA: -1})
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if dcn and math.prod(dcn.values()) > 1:
        dcn_shape = resolve_shape(dcn, math.prod(dcn.values()), "mesh.dcn")
        granules = math.prod(dcn_shape)
        if num_devices % granules:
            raise ValueError(f"mesh.dcn {dcn}: {num_devices} devices do not split into {granules}")
        ici_shape = resolve_shape(ici, num_devices // granules, "mesh.ici")
        # TPU slices are granules; elsewhere (GPU nodes, CPU processes) each process is one.
        by_process = devices[0].platform != "tpu"
        array = mesh_utils.create_hybrid_device_mesh(
            ici_shape, dcn_shape, devices, process_is_granule=by_process
        )
        return Mesh(array, AXES, axis_types=auto)
    shape = resolve_shape(ici, num_devices)
    try:
        array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Topology-aware placement is for TPUs/GPUs; a plain reshape is fine elsewhere.
        array = np.asarray(devices).reshape(shape)
    return Mesh(array, AXES, axis_types=auto)


def local_mesh() -> Mesh:
    """A one-device mesh on this process's first device (inference, evaluation)."""
    return create_mesh(1, devices=jax.local_devices())


def from_config(m) -> Mesh:
    """The mesh of config.mesh: axes sizes (ici), optional dcn sizes, num_devices."""
    ici = {a: m[a] for a in AXES}
    dcn = {a: m.dcn[a] for a in AXES}
    return create_mesh(m.num_devices, ici=ici, dcn=dcn)


def parse_sizes(text: str) -> dict[str, int]:
    """'data:2,sequence:4' -> {'data': 2, 'sequence': 4}: axis sizes (axes left out are 1 in
    ``create_mesh``; one size may be -1). ValueError naming the text otherwise."""
    sizes = {}
    for part in text.split(","):
        name, _, size = (s.strip() for s in part.partition(":"))
        if name not in AXES or name in sizes or not (size.isdigit() or size == "-1"):
            raise ValueError(
                f"mesh {text!r}: write distinct axis:size pairs (one size may be -1), "
                f"axes among {AXES}"
            )
        sizes[name] = int(size)
    return sizes


def inference_mesh(config, spec: str) -> Mesh | None:
    """The mesh sampling runs on: '' none (one device), 'config' config.mesh, else axis sizes
    'data:2,sequence:4' over that many devices (all of them with a -1)."""
    if not spec:
        return None
    if spec == "config":
        return from_config(config.mesh)
    sizes = parse_sizes(spec)
    count = math.prod(sizes.values())
    return create_mesh(-1 if count < 0 else count, ici=sizes)


def batch_size_divisor(mesh: Mesh) -> int:
    """Batches must split evenly over the batch axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
    """Places a host batch on the mesh, split along the leading (batch) axis.

    Each process copies only the rows its own devices hold (``make_array_from_callback``),
    so on several hosts the global array is built without any host holding it on device.
    """
    n = batch_size_divisor(mesh)
    sharding = data_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(
                f"batch axis {x.shape[0]} is not divisible by the {n} data x fsdp devices; "
                "change the batch size (or the mesh)"
            )
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, batch)


def validate_config(config):
    """Checks config.mesh.*, and that the DiT's rows and sequences split over its axes (the DiT
    and training sections must be valid already)."""
    m = config.mesh
    cc.check(
        m.num_devices == -1 or m.num_devices > 0,
        "mesh.num_devices",
        m.num_devices,
        "must be -1 (all devices) or a positive count",
    )
    for group, sizes in (("mesh", m), ("mesh.dcn", m.dcn)):
        values = [sizes[a] for a in AXES]
        cc.check(
            all(v == -1 or v >= 1 for v in values) and values.count(-1) <= 1,
            group,
            dict(zip(AXES, values)),
            "axis sizes must be >= 1, with at most one -1 (fill)",
        )
    cc.check(-1 not in [m.dcn[a] for a in AXES], "mesh.dcn", m.dcn, "no -1 across slices")
    names = [r[0] for r in m.rules if len(r) == 2]
    cc.check(
        len(names) == len(m.rules) and len(set(names)) == len(names),
        "mesh.rules",
        m.rules,
        "must be distinct (logical name, mesh axes) pairs",
    )
    for name, axes in m.rules:
        axes = axes if isinstance(axes, (list, tuple)) else (axes,)
        cc.check(
            all(a is None or a in AXES for a in axes),
            "mesh.rules",
            (name, axes),
            f"mesh axes must be among {AXES} or None",
        )
    cc.one_of(config, "mesh.sequence_attention", ("all_to_all", "gspmd"))
    cc.check(
        m.sequence_attention == "all_to_all"
        or config.dit.model.attention_impl in ("xla", "cudnn", "blockwise", "sequence_parallel"),
        "mesh.sequence_attention",
        m.sequence_attention,
        f"'gspmd' leaves attention to the compiler, which cannot partition the Pallas kernels: "
        f"use dit.model.attention_impl 'xla' or 'blockwise' with it, not "
        f"{config.dit.model.attention_impl!r}",
    )
    seq = m.sequence * m.dcn.sequence
    cc.check(
        m.sequence == -1 or config.dit.seq_len % seq == 0,
        "dit.seq_len",
        config.dit.seq_len,
        f"must be divisible by the sequence split {seq} (mesh.sequence x mesh.dcn.sequence)",
    )
    rows = packing.config_row_shapes(config)
    k = config.dit.train.grad_accum_steps
    if m.data != -1 and m.fsdp != -1:
        split = m.data * m.fsdp * m.dcn.data * m.dcn.fsdp * k
        cc.check(
            config.dit.rows % split == 0,
            "dit.rows",
            config.dit.rows,
            f"must be divisible by the data x fsdp devices x dit.train.grad_accum_steps ({split})",
        )
        cc.check(
            all(r % split == 0 for r, _ in rows.values()),
            "dit.pack_lengths",
            config.dit.pack_lengths,
            f"rows per length {rows} must be divisible by the data x fsdp "
            f"devices x dit.train.grad_accum_steps ({split})",
        )
    cc.check(
        m.sequence == -1 or all(l % seq == 0 for l in rows),
        "dit.pack_lengths",
        config.dit.pack_lengths,
        f"must be divisible by the sequence split {seq}",
    )

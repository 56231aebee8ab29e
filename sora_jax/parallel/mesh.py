"""Device mesh and shardings: data parallelism over a 1-D 'data' axis.

Batches are split along their leading axis over 'data'; params and optimizer
state are replicated. (FSDP/tensor/sequence axes build on this mesh later.)
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def create_mesh(num_devices: int = -1) -> Mesh:
    """A ('data',) mesh over the first `num_devices` devices (-1: all of them)."""
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not 0 < num_devices <= len(devices):
        raise ValueError(f"mesh.num_devices={num_devices}: only {len(devices)} devices exist")
    return Mesh(
        np.asarray(devices[:num_devices]), (DATA,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
    """Places host numpy arrays on the mesh, split along the leading (batch) axis."""
    n = mesh.shape[DATA]

    def put(x):
        if x.shape[0] % n:
            raise ValueError(
                f"batch axis {x.shape[0]} is not divisible by the {n} data devices; "
                "change the batch size (or mesh.num_devices)"
            )
        return jax.device_put(x, data_sharding(mesh))

    return jax.tree.map(put, batch)

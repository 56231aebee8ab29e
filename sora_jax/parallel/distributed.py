"""Joining a multi-process (multi-host) run: one process per host (or per GPU node).

Call `initialize` before anything touches the devices. On a TPU pod slice and under SLURM
jax finds the coordinator itself (`jax.distributed.initialize()` with no arguments);
elsewhere pass the coordinator address, the process count and this process's id (the
`--coordinator_address/--num_processes/--process_id` flags of `sora_jax.train`). A single
process needs nothing.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def launched_on_tpu_pod(env=os.environ) -> bool:
    """A TPU VM that is one of several workers of a pod slice (or of several slices)."""
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def launched_by_slurm(env=os.environ) -> bool:
    """A task of a SLURM job step with more than one task (srun)."""
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    return "SLURM_JOB_ID" in env and int(tasks) > 1


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env=os.environ,
) -> bool:
    """Starts jax.distributed when this is one of several processes; True if it did."""
    explicit = (coordinator_address, num_processes, process_id)
    if any(a is not None for a in explicit):
        if any(a is None for a in explicit):
            raise ValueError(
                "multi-process run: give all of --coordinator_address, --num_processes and "
                f"--process_id (got {explicit})"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif launched_on_tpu_pod(env) or launched_by_slurm(env):
        jax.distributed.initialize()  # jax reads the cluster's own environment
    else:
        return False
    logging.info(
        "process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True

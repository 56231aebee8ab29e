"""Two processes on 127.0.0.1 (jax.distributed, CPU collectives) train like one, and their
checkpoint restores in one process on a different mesh."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from dit_setup import ROOT, build, fixed_batch, run_steps, tiny_config

from sora_jax.common import checkpoint
from sora_jax.parallel import distributed
from sora_jax.parallel import mesh as mesh_lib

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_checkpoint_reshards(tmp_path):
    port, n = _free_port(), 2
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), str(n), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    try:
        outs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    result = json.loads((tmp_path / "losses.json").read_text())
    assert result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}

    # The same two steps in this one process, on one device.
    c = tiny_config()
    batch = fixed_batch(c)
    losses, state = run_steps(c, mesh_lib.create_mesh(1), batch, steps=2)
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)

    # Restore the two-process checkpoint here on an 8-way FSDP mesh: resharded on restore.
    c8 = tiny_config(data=1, fsdp=8)
    mesh8 = mesh_lib.from_config(c8.mesh)
    target, _ = build(c8, mesh8)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
    restored = ckpt.restore(target)
    ckpt.close()
    assert int(restored.step) == 2
    kernel = restored.params["dit"]["block_0"]["mlp_in"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp" and kernel.sharding.mesh.shape["fsdp"] == 8
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        jax.device_get(restored.params),
        jax.device_get(state.params),
    )


def test_distributed_initialize_detects_launchers_and_checks_flags():
    assert distributed.launched_by_slurm({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert not distributed.launched_by_slurm({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert distributed.launched_on_tpu_pod({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
    assert not distributed.launched_on_tpu_pod({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert not distributed.initialize(env={})  # one process: nothing to join
    with pytest.raises(ValueError, match="give all of --coordinator_address"):
        distributed.initialize("127.0.0.1:1234", None, 0, env={})
    with pytest.raises(ValueError, match="--process_id=2 must be in"):
        distributed.initialize("127.0.0.1:1234", 2, 2, env={})

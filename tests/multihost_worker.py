"""One process of the two-process test (tests/test_multihost.py): 4 CPU devices each.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUTDIR

Joins the run through 127.0.0.1:PORT, trains two DiT steps on a hybrid mesh whose data axis
crosses the processes, saves an orbax checkpoint (every process writes its shards) and, on
process 0 only, the losses.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from orbax.checkpoint import multihost  # noqa: E402
from dit_setup import fixed_batch, run_steps, tiny_config  # noqa: E402

from sora_jax.common import checkpoint  # noqa: E402
from sora_jax.parallel import distributed  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402


def main(process_id, num_processes, port, outdir):
    distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
    assert jax.device_count() == 4 * num_processes and jax.local_device_count() == 4
    c = tiny_config(data=1, fsdp=2, tensor=2)
    c.mesh.dcn.data = num_processes
    mesh = mesh_lib.from_config(c.mesh)
    batch = fixed_batch(c)  # every host builds the same batch; shard_batch copies its rows
    barrier = multihost.get_barrier_sync_fn()
    compiled = lambda: barrier(key="train_step_compiled", timeout_ms=600_000)  # noqa: E731
    losses, state = run_steps(c, mesh, batch, steps=2, when_compiled=compiled)
    ckpt = checkpoint.Checkpointer(os.path.join(outdir, "ckpt"))
    ckpt.save(2, state, force=True)
    ckpt.close()
    if jax.process_index() == 0:
        with open(os.path.join(outdir, "losses.json"), "w") as f:
            json.dump({"losses": losses, "mesh": dict(mesh.shape)}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

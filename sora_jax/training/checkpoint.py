"""Orbax checkpointing: atomic saves every N steps and at the end, keep the last k.

Orbax writes each step into a temporary folder and renames it when complete, so
a run killed mid-save resumes from the last finished checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, save_every: int = 1000, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, max_to_keep=keep, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, force: bool = False) -> bool:
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, target, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of `target`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def for_stage(config, workdir: str, stage: str) -> Checkpointer:
    """The checkpointer of a training stage ('vae' or 'dit') under `workdir`."""
    t = config[stage].train
    return Checkpointer(
        os.path.join(workdir, stage, "checkpoints"),
        save_every=t.checkpoint_every,
        keep=t.keep_checkpoints,
    )

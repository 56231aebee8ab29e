"""Orbax checkpointing: atomic saves every N steps and at the end, keep the last k.

Orbax writes each step into a temporary folder and renames it when complete, so
a run killed mid-save resumes from the last finished checkpoint. With `with_data=True` each
step also holds the input pipeline's iterator state (JSON, item 'data') beside the train state
(item 'state'), so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(
        self, directory: str, save_every: int = 1000, keep: int = 2, with_data: bool = False
    ):
        self.directory = os.path.abspath(directory)
        self.with_data = with_data
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, max_to_keep=keep, create=True
            ),
            # Named items: a reopened manager must not take 'state' for a single default item.
            item_names=("state", "data") if with_data else None,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, force: bool = False, data_state: dict | None = None) -> bool:
        if not self.with_data:
            return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
        if data_state is None:
            raise ValueError("this checkpointer saves the data iterator state: pass data_state")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        return self._manager.save(step, args=args, force=force)

    def restore(self, target, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of `target`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        if not self.with_data:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        ).state

    def restore_fields(self, fields: dict, step: int | None = None) -> dict:
        """Only the named fields of a saved train state, e.g. {'ema_params': abstract tree,
        'extras': ...}: the optimizer state and anything else saved beside them are not read
        (what inference needs from a training checkpoint)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fields)
        args = ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
        )
        if not self.with_data:
            return self._manager.restore(step, args=args)
        return self._manager.restore(step, args=ocp.args.Composite(state=args)).state

    def restore_data(self, step: int | None = None) -> dict:
        """The data iterator state saved with step `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        return self._manager.restore(
            step, args=ocp.args.Composite(data=ocp.args.JsonRestore())
        ).data

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def stage_directory(workdir: str, stage: str) -> str:
    """Where a training stage ('vae' or 'dit') keeps its checkpoints in `workdir`."""
    return os.path.join(workdir, stage, "checkpoints")


def stage_has_data(config, stage: str) -> bool:
    """Whether a stage's checkpoints hold the input pipeline's state beside the train state:
    the DiT trained from a grain source."""
    return stage == "dit" and config.data.source != "moving_shapes"


def for_stage(config, workdir: str, stage: str) -> Checkpointer:
    """The checkpointer of a training stage ('vae' or 'dit') under `workdir`."""
    t = config[stage].train
    return Checkpointer(
        stage_directory(workdir, stage),
        save_every=t.checkpoint_every,
        keep=t.keep_checkpoints,
        with_data=stage_has_data(config, stage),
    )

"""Orbax checkpointing: atomic saves every N steps and at the end, keep the last k.

Orbax writes each step into a temporary folder and renames it when complete, so
a run killed mid-save resumes from the last finished checkpoint. With `with_data=True` each
step also holds the input pipeline's iterator state (JSON, item 'data') beside the train state
(item 'state'), so a resumed run continues with exactly the next batch.

A checkpoint damaged after the fact (a truncated or deleted file, a bad disk, non-finite
values written by an older version) is passed over: `restore_newest` tries the steps newest
first, logs which step failed and why, and raises `NoUsableCheckpoint` naming the directory
and the steps tried when none restores. A save that fails raises `SaveFailed` naming the step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

DAMAGED_DIR = "damaged"  # beside `checkpoints/`: steps a training run passed over

# Orbax writes a replicated array in parallel from all its replicas, one slice each; every
# slice is a small program compiled per shape and device (200 of them, 6 s, for a micro run's
# first save on 8 devices), which only pays for large arrays. Arrays whose slices would be
# under this size are written by one replica. No handler-level array metadata is kept: it
# records only typed PRNG-key dtypes, and the saved states hold none.
MIN_REPLICA_SLICE_BYTES = 1 << 20
_verbosity = logging.get_verbosity()
logging.set_verbosity(logging.ERROR)  # orbax warns of every override, this one intended
try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES
        ),
        override=True,
    )
finally:
    logging.set_verbosity(_verbosity)


class NoUsableCheckpoint(FileNotFoundError):
    """Checkpoints exist but none of them restores."""


class SaveFailed(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the message names the step."""


def _reason(e: BaseException) -> str:
    """A one-line reason for a failed restore (tensorstore's messages span pages)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


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

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `save(step)` (without force) writes a checkpoint."""
        return self._manager.should_save(step)

    def save(self, step: int, state, force: bool = False, data_state: dict | None = None) -> bool:
        if self.with_data and data_state is None:
            raise ValueError("this checkpointer saves the data iterator state: pass data_state")
        if not self.with_data:
            args = ocp.args.StandardSave(state)
        else:
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            )
        try:
            return self._manager.save(step, args=args, force=force)
        except Exception as e:  # orbax and tensorstore raise plain Exceptions too
            raise SaveFailed(
                f"saving checkpoint {step} to {self.directory} failed ({_reason(e)})"
            ) from e

    def restore_newest(self, restore_step: Callable[[int], object], what: str = "checkpoint"):
        """(step, restore_step(step)) for the newest step whose `restore_step` succeeds.

        A step that fails (any exception: orbax and tensorstore raise plain ones for missing
        or truncated files) is logged with its reason and the next older one is tried; with
        none left, `NoUsableCheckpoint` names the directory and the steps tried."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        failed = []
        for step in reversed(steps):
            try:
                result = restore_step(step)
            except Exception as e:
                failed.append(step)
                logging.warning(
                    "%s %d in %s is damaged, trying an older one: %s",
                    what,
                    step,
                    self.directory,
                    _reason(e),
                )
                continue
            if failed:
                logging.warning(
                    "restored %s %d from %s (passed over damaged steps %s)",
                    what,
                    step,
                    self.directory,
                    failed,
                )
            return step, result
        raise NoUsableCheckpoint(
            f"no {what} in {self.directory} restores (tried steps {failed}, newest first; "
            f"the warnings above say why each failed)"
        )

    def set_aside(self, steps) -> None:
        """Moves the given (damaged) steps out of the way into `../damaged/` so that training
        can write those steps again; kept, not deleted, for a post-mortem."""
        steps = list(steps)
        if not steps:
            return
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            dest = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
            os.makedirs(dest, exist_ok=True)
            for step in steps:
                target = os.path.join(dest, str(step))
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(os.path.join(self.directory, str(step)), target)
                logging.warning("moved damaged checkpoint %d to %s", step, target)
        self._manager.reload()

    def restore(self, target, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of `target` (by default
        from the newest step that restores, see `restore_newest`)."""
        if step is None:
            return self.restore_newest(lambda s: self.restore(target, s))[1]
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        if not self.with_data:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        ).state

    def restore_fields(self, fields: dict, step: int | None = None) -> dict:
        """Only the named fields of a saved train state, e.g. {'ema_params': abstract tree,
        'extras': ...}: the optimizer state and anything else saved beside them are not read
        (what inference needs from a training checkpoint). By default from the newest step
        that restores."""
        if step is None:
            return self.restore_newest(lambda s: self.restore_fields(fields, s))[1]
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
        """Waits for an in-flight async save; its failure raises `SaveFailed`."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise SaveFailed(
                f"saving a checkpoint to {self.directory} failed ({_reason(e)})"
            ) from e

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def stage_directory(workdir: str, stage: str) -> str:
    """Where a training stage ('vae' or 'dit') keeps its checkpoints in `workdir`."""
    return os.path.join(workdir, stage, "checkpoints")


def stage_has_data(config, stage: str) -> bool:
    """Whether a stage's checkpoints hold the input pipeline's state beside the train state:
    a stage trained from a grain source (the VAE with vae.train.data='source')."""
    if config.data.source == "moving_shapes":
        return False
    return stage == "dit" or config.vae.train.data == "source"


def for_stage(config, workdir: str, stage: str) -> Checkpointer:
    """The checkpointer of a training stage ('vae' or 'dit') under `workdir`."""
    t = config[stage].train
    return Checkpointer(
        stage_directory(workdir, stage),
        save_every=t.checkpoint_every,
        keep=t.keep_checkpoints,
        with_data=stage_has_data(config, stage),
    )

"""A training stage that met NaN / inf: its stop, and the refusal to repeat it unchanged.

The checks themselves are `sora_jax.common.finite` (the loop reads each step's `finite` flag
before every checkpoint and log line; with `train.skip_nonfinite` the step drops a non-finite
update instead, so a rare bad batch costs one step rather than the run).

A run that stops on non-finite values leaves a note (`STOP_FILE`, beside the stage's
checkpoints) holding the stage's train config; re-running with that same config would stop
at the same step again (batches and rngs are functions of the step), so `check_previous_stop`
refuses it at once and says what to change.
"""

from __future__ import annotations

import json
import os

import jax

STOP_FILE = "nonfinite_stop.json"


class NonFiniteError(FloatingPointError):
    """Training met NaN or inf; the message names the step and the checkpoint kept."""


def _train_json(t) -> dict:
    return json.loads(t.to_json())


def stop_path(stage_dir: str) -> str:
    return os.path.join(stage_dir, STOP_FILE)


def record_stop(stage_dir: str, stage: str, step: int, kept: int | None, t) -> None:
    """Notes that `stage` stopped at `step` on non-finite values with train config `t`."""
    if jax.process_index() != 0:
        return
    os.makedirs(stage_dir, exist_ok=True)
    with open(stop_path(stage_dir), "w") as f:
        json.dump(dict(stage=stage, step=step, kept_checkpoint=kept, train=_train_json(t)), f)


def check_previous_stop(stage_dir: str, stage: str, t) -> None:
    """Refuses a re-run that would meet the same non-finite step again (same train config);
    a changed config clears the note (it may stop again and leave a new one)."""
    path = stop_path(stage_dir)
    if not os.path.exists(path):
        return
    with open(path) as f:
        note = json.load(f)
    if note["train"] != _train_json(t):
        if jax.process_index() == 0:
            os.remove(path)
        return
    lr = note["train"]["learning_rate"]
    raise NonFiniteError(
        f"{stage}: the last run stopped on NaN/inf at step {note['step']} with this same "
        f"config.{stage}.train (kept checkpoint {note['kept_checkpoint']}); re-running it would "
        f"stop there again: lower --config.{stage}.train.learning_rate (was {lr:g}), or set "
        f"--config.{stage}.train.skip_nonfinite=true to skip such steps, or delete {path}"
    )

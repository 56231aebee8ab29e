"""The host loop shared by every stage: steps, metrics, NaN stop, checkpoints, progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from sora_jax.common import checkpoint
from sora_jax.logging import progress as progress_lib
from sora_jax.logging import writers
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning
from sora_jax.common import finite
from sora_jax.training import nonfinite


def shardings_of(tree):
    """The shardings of a placed pytree (e.g. a TrainState from an init_state)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def jit_train_step(train_step: Callable, mesh, state_shardings=None, rules=()):
    """jit with explicit shardings: the state as given (default replicated), the batch split
    over ('data', 'fsdp'), rng and metrics replicated; the old state is donated.

    The step is traced and run with the mesh and the logical `rules` active, so the model's
    activation constraints and sequence-parallel attention find them.
    """
    rep = mesh_lib.replicated(mesh)
    state_shardings = rep if state_shardings is None else state_shardings
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, mesh_lib.data_sharding(mesh), rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=0,
    )

    def step(state, batch, rng):
        with partitioning.activate(mesh, rules):
            return jitted(state, batch, rng)

    return step


def resume(stage: str, ckpt: checkpoint.Checkpointer, restore_step: Callable[[int], object]):
    """`restore_step(step)` of the newest checkpoint that restores and holds only finite
    values (its first element, for a tuple); newer, damaged steps are set aside so that the
    run can write those steps again. Each passed-over step is logged with its reason."""

    def checked(step):
        out = restore_step(step)
        if not finite.tree_is_finite(out[0] if isinstance(out, tuple) else out):
            raise nonfinite.NonFiniteError("it holds non-finite values (NaN/inf)")
        return out

    step, out = ckpt.restore_newest(checked, f"{stage} checkpoint")
    ckpt.set_aside([s for s in ckpt.all_steps() if s > step])
    return out


def run(
    stage: str,
    state,
    train_step: Callable,
    batch_fn: Callable[[int], dict],
    t: ml_collections.ConfigDict,
    ckpt: checkpoint.Checkpointer,
    writer: writers.MetricWriter,
    mesh,
    key: jax.Array,
    finalize: Callable | None = None,
    validate: Callable | None = None,
):
    """Runs `train_step` from state.step to t.steps; returns (state, logged metrics).

    The batch and the rng of step s are pure functions of s (batch_fn(s),
    fold_in(key, s)), so a resumed run continues exactly as an uninterrupted one. A batch_fn
    with `get_state` (an input pipeline's iterator) has its state saved with each checkpoint;
    one with `metrics()` (e.g. 'data/num_bad') has them written with the step's metrics.
    `finalize(state) -> state` (optional) runs after the last step, before its checkpoint is
    written (e.g. statistics of the trained model that belong with it). `validate(step,
    state)` (optional) runs after every step with the new state and writes what is due then
    (e.g. `validation.Validator`); it must not change the state.

    Non-finite steps (the step's `finite` metric) are checked before every checkpoint and log
    line: the run stops with `nonfinite.NonFiniteError` naming the step and the checkpoint kept
    (nothing non-finite is ever saved, so rotation never drops the last finite checkpoint),
    or with `t.skip_nonfinite` counts the steps whose update the step skipped.
    """
    data_state = getattr(batch_fn, "get_state", None)
    data_metrics = getattr(batch_fn, "metrics", None)
    start = int(jax.device_get(state.step))
    stage_dir = os.path.dirname(ckpt.directory)
    if start < t.steps:
        nonfinite.check_previous_stop(stage_dir, stage, t)
    history: list[tuple[int, dict[str, float]]] = []
    progress = progress_lib.Progress(stage, t.steps, start=start, enabled=jax.process_index() == 0)
    last_t, last_step = time.perf_counter(), start
    # The steps' `finite` flags since the last check, left on device (no sync per step).
    flags, flags_from, skipped = [], start + 1, 0

    def check_finite(done: int):
        """Stops (or, with skip_nonfinite, counts) non-finite steps up to `done`."""
        nonlocal flags, flags_from, skipped
        bad = finite.first_bad(flags, flags_from)
        flags, flags_from = [], done + 1
        if not bad:
            return
        if t.skip_nonfinite:
            skipped += len(bad)
            logging.warning(
                "%s: skipped the update of %d non-finite step(s) %s (%d in all)",
                stage,
                len(bad),
                bad[:10],
                skipped,
            )
            return
        stop(bad[0])

    def stop(step: int, what: str = "loss or gradients"):
        kept = ckpt.latest_step()
        nonfinite.record_stop(stage_dir, stage, step, kept, t)
        raise nonfinite.NonFiniteError(
            f"{stage}: non-finite {what} (NaN/inf) at step {step}; stopped without saving it, "
            f"keeping checkpoint {kept} (the last finite one). Re-run with a lower "
            f"--config.{stage}.train.learning_rate (resumes from {kept}) or with "
            f"--config.{stage}.train.skip_nonfinite=true; README: 'When things go wrong'"
        )

    # An interrupt (Ctrl-C, preemption, NaN stop) first lets an in-flight async save commit:
    # the work it holds is finished and must not be lost.
    try:
        for step in range(start, t.steps):
            batch = mesh_lib.shard_batch(batch_fn(step), mesh)
            state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
            done = step + 1
            flags.append(metrics["finite"])
            last = done == t.steps
            saving = last or ckpt.should_save(done)
            if done % t.log_every == 0 or last or saving:
                check_finite(done)
            if done % t.log_every == 0 or last:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                m["steps_per_sec"] = (done - last_step) / max(now - last_t, 1e-9)
                m["skipped_steps"] = float(skipped)
                last_t, last_step = now, done
                scalars = {f"{stage}/{k}": v for k, v in m.items()}
                if data_metrics is not None:  # already named by the input pipeline (data/...)
                    d = data_metrics()
                    scalars.update(d)
                    m.update(d)
                history.append((done, m))
                writer.write_scalars(done, scalars)
            if last and finalize is not None:
                state = finalize(state)
            if validate is not None:
                validate(done, state)
            if saving:
                # Flags cover the loss and gradients; the state itself is checked too (an
                # overflowing update, `finalize`'s statistics) before it may be written.
                if not finite.tree_is_finite(state):
                    stop(done, "values in the train state")
                try:
                    if data_state is None:
                        ckpt.save(done, state, force=last)
                    else:
                        ckpt.save(done, state, force=last, data_state=data_state())
                except checkpoint.SaveFailed as e:
                    raise checkpoint.SaveFailed(f"{stage}: stopped at step {done}: {e}") from None
            progress.update(done, extra=f"loss {history[-1][1]['loss']:.4f}" if history else "")
    finally:
        ckpt.wait()
    writer.flush()
    if start >= t.steps:
        logging.info("%s: already trained to step %d; skipping", stage, start)
    return state, history

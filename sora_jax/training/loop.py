"""The host loop shared by every stage: steps, metrics, NaN stop, checkpoints, progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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


def jit_train_step(
    train_step: Callable, mesh, state_shardings=None, rules=(), replicated_args: int = 1
):
    """jit with explicit shardings: the state as given (default replicated), the batch split
    over ('data', 'fsdp'), the `replicated_args` arguments after it (the rng) and the metrics
    replicated; the old state is donated.

    The step is traced and run with the mesh and the logical `rules` active, so the model's
    activation constraints and sequence-parallel attention find them.
    """
    rep = mesh_lib.replicated(mesh)
    state_shardings = rep if state_shardings is None else state_shardings
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, mesh_lib.data_sharding(mesh), *[rep] * replicated_args),
        out_shardings=(state_shardings, rep),
        donate_argnums=0,
    )

    def step(state, batch, *args):
        with partitioning.activate(mesh, rules):
            return jitted(state, batch, *args)

    def lower(state, batch, *args):  # ahead of time: `.compile()` gives a step to call
        with partitioning.activate(mesh, rules):
            return jitted.lower(state, batch, *args)

    step.lower = lower
    return step


class TrainSteps:
    """Consecutive train steps in one call: `steps(state, batches, key, start) -> (state,
    metrics)` runs len(batches) <= per_call steps from step `start` (step s's rng
    fold_in(key, s)); each metric comes back with a leading axis, one entry per step (entries
    past len(batches) are zeros)."""

    def __init__(self, fn: Callable, per_call: int):
        self.fn, self.per_call = fn, per_call

    def __call__(self, state, batches: list, key: jax.Array, start: int):
        return self.fn(state, batches, key, start)


def jit_train_steps(
    train_step: Callable, mesh, state_shardings=None, rules=(), per_call: int = 1
) -> TrainSteps:
    """`train_step` jitted as `jit_train_step` does, run up to `per_call` steps per call.

    With per_call > 1 the steps run in one program (a loop over the batches given, padded to
    per_call): the host dispatches once per call, and XLA allocates the step's temporaries
    once per call rather than once per step (on CPU, mapping them afresh costs the tiny DiT
    ~20 % of its step time; benchmarks/RESULTS.md, "Tiny config: full run"). One program
    serves every count up to per_call.
    """

    def steps(state, batches, key, start, count):
        if per_call == 1:  # the step itself, no loop around it
            state, metrics = train_step(state, batches[0], jax.random.fold_in(key, start))
            return state, jax.tree.map(lambda m: m[None], metrics)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
        at = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
        shapes = jax.eval_shape(train_step, state, at(stacked, 0), key)[1]
        empty = jax.tree.map(lambda m: jnp.zeros((per_call, *m.shape), m.dtype), shapes)

        def body(i, carry):
            state, metrics = carry
            state, m = train_step(state, at(stacked, i), jax.random.fold_in(key, start + i))
            return state, jax.tree.map(lambda buf, v: buf.at[i].set(v), metrics, m)

        return jax.lax.fori_loop(0, count, body, (state, empty))

    jitted = jit_train_step(steps, mesh, state_shardings, rules, replicated_args=3)

    def call(state, batches, key, start):
        if not 0 < len(batches) <= per_call:
            raise ValueError(f"{len(batches)} batches for up to {per_call} steps per call")
        padded = list(batches) + [batches[-1]] * (per_call - len(batches))
        return jitted(state, padded, key, np.int32(start), np.int32(len(batches)))

    return TrainSteps(call, per_call)


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
    train_steps: TrainSteps,
    batch_fn: Callable[[int], dict],
    t: ml_collections.ConfigDict,
    ckpt: checkpoint.Checkpointer,
    writer: writers.MetricWriter,
    mesh,
    key: jax.Array,
    finalize: Callable | None = None,
    validate: Callable | None = None,
):
    """Runs `train_steps` from state.step to t.steps; returns (state, logged metrics).

    The batch and the rng of step s are pure functions of s (batch_fn(s),
    fold_in(key, s)), and the steps one call runs end where the host has work (a log line,
    a checkpoint, validation, a multiple of `train_steps.per_call`), so a resumed run
    continues exactly as an uninterrupted one. A batch_fn
    with `get_state` (an input pipeline's iterator) has its state saved with each checkpoint;
    one with `metrics()` (e.g. 'data/num_bad') has them written with the step's metrics.
    `finalize(state) -> state` (optional) runs after the last step, before its checkpoint is
    written (e.g. statistics of the trained model that belong with it). `validate(step,
    state)` (optional) runs after every call with the new state and writes what is due then
    (e.g. `validation.Validator`; a step where `t.val_every` or `t.sample_every` falls due
    ends a call); it must not change the state.

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

    def host_work(done: int) -> bool:
        """Whether the host logs, saves or validates after step `done` (by the step alone, not
        by the checkpointer's state, so a resumed run's calls end where the first run's did)."""
        every = (t.log_every, t.checkpoint_every, t.get("val_every", 0), t.get("sample_every", 0))
        return any(e > 0 and done % e == 0 for e in every)

    def call_end(step: int) -> int:
        """The step a call starting after `step` steps stops at."""
        end = min(t.steps, (step // train_steps.per_call + 1) * train_steps.per_call)
        return next((d for d in range(step + 1, end) if host_work(d)), end)

    # An interrupt (Ctrl-C, preemption, NaN stop) first lets an in-flight async save commit:
    # the work it holds is finished and must not be lost.
    try:
        step = start
        while step < t.steps:
            done = call_end(step)
            batches = [mesh_lib.shard_batch(batch_fn(s), mesh) for s in range(step, done)]
            state, metrics = train_steps(state, batches, key, step)
            flags.append(metrics["finite"][: done - step])
            last_index, step = done - step - 1, done
            last = done == t.steps
            saving = last or ckpt.should_save(done)
            if done % t.log_every == 0 or last or saving:
                check_finite(done)
            if done % t.log_every == 0 or last:
                m = {k: float(v[last_index]) for k, v in jax.device_get(metrics).items()}
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

"""The host loop shared by every stage: steps, metrics, NaN stop, checkpoints, progress."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from sora_jax.common import checkpoint
from sora_jax.logging import progress as progress_lib
from sora_jax.logging import writers
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning


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
):
    """Runs `train_step` from state.step to t.steps; returns (state, logged metrics).

    The batch and the rng of step s are pure functions of s (batch_fn(s),
    fold_in(key, s)), so a resumed run continues exactly as an uninterrupted one. A batch_fn
    with `get_state` (an input pipeline's iterator) has its state saved with each checkpoint;
    one with `metrics()` (e.g. 'data/num_bad') has them written with the step's metrics.
    `finalize(state) -> state` (optional) runs after the last step, before its checkpoint is
    written (e.g. statistics of the trained model that belong with it).
    """
    data_state = getattr(batch_fn, "get_state", None)
    data_metrics = getattr(batch_fn, "metrics", None)
    start = int(jax.device_get(state.step))
    history: list[tuple[int, dict[str, float]]] = []
    progress = progress_lib.Progress(stage, t.steps, start=start, enabled=jax.process_index() == 0)
    last_t, last_step = time.perf_counter(), start
    # An interrupt (Ctrl-C, preemption, NaN stop) first lets an in-flight async save commit:
    # the work it holds is finished and must not be lost.
    try:
        for step in range(start, t.steps):
            batch = mesh_lib.shard_batch(batch_fn(step), mesh)
            state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(
                        f"{stage}: loss is {m['loss']} at step {done}; stopping (last checkpoint: "
                        f"{ckpt.latest_step()}). Lower the learning rate or check the data."
                    )
                now = time.perf_counter()
                m["steps_per_sec"] = (done - last_step) / max(now - last_t, 1e-9)
                last_t, last_step = now, done
                scalars = {f"{stage}/{k}": v for k, v in m.items()}
                if data_metrics is not None:  # already named by the input pipeline (data/...)
                    d = data_metrics()
                    scalars.update(d)
                    m.update(d)
                history.append((done, m))
                writer.write_scalars(done, scalars)
            if done == t.steps and finalize is not None:
                state = finalize(state)
            if data_state is None:
                ckpt.save(done, state, force=done == t.steps)
            else:
                ckpt.save(done, state, force=done == t.steps, data_state=data_state())
            progress.update(done, extra=f"loss {history[-1][1]['loss']:.4f}" if history else "")
    finally:
        ckpt.wait()
    writer.flush()
    if start >= t.steps:
        logging.info("%s: already trained to step %d; skipping", stage, start)
    return state, history

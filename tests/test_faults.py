"""Fault safety of training: NaN steps are never checkpointed and a re-run never loops,
damaged checkpoints are passed over, a failed save stops the run at its step, one trainer
per workdir (lock file). The loop tests run a toy quadratic model (no compile of a real one);
one test runs the real VAE stage."""

import glob
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_train import micro_config, run_cli, TINY

from sora_jax import train
from sora_jax.common import checkpoint, finite, workdir_lock
from sora_jax.logging import writers
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import loop, nonfinite, vae_trainer
from sora_jax.training import train_state as ts


def _train_config(**kw):
    t = ml_collections.ConfigDict(
        dict(
            steps=8,
            learning_rate=0.1,
            warmup_steps=0,
            weight_decay=0.0,
            grad_clip=1.0,
            ema_decay=0.9,
            log_every=100,  # the NaN must be caught between log steps, at a checkpoint
            checkpoint_every=2,
            keep_checkpoints=2,
            skip_nonfinite=False,
        )
    )
    t.update(kw)
    return t


def _toy_step(t):
    tx = ts.make_optimizer(t)

    def train_step(state, batch, rng):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] - batch["x"]) ** 2))(
            state.params
        )
        new = ts.apply_gradients(state, grads, tx, t.ema_decay)
        norms = ts.norms(grads, state.params)
        ok = finite.step_is_finite(loss, norms["grad_norm"])
        if t.skip_nonfinite:
            new = finite.keep_if_finite(state, new, ok)
        return new, {"loss": loss, **norms, "finite": ok}

    return tx, train_step


class _Batches:
    """Step s -> a batch; NaN at the given step indices (0-based, as batch_fn sees them)."""

    def __init__(self, nan_at=()):
        self.nan_at, self.calls = set(nan_at), []

    def __call__(self, step):
        self.calls.append(step)
        return {"x": np.full((8, 4), np.nan if step in self.nan_at else 1.0, np.float32)}


class _KilledAt(_Batches):
    """Interrupted when asked for the batch of step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def __call__(self, step):
        if step == self.step:
            raise KeyboardInterrupt
        return super().__call__(step)


def _init(tx):
    # Built by jit, as the trainers do, so that no two leaves share a buffer (donation).
    return jax.jit(lambda: ts.create({"w": jnp.zeros(4)}, tx))()


def _run(workdir, t, batches, resume=True):
    """loop.run of the toy model in `workdir/toy/checkpoints` (resuming as trainers do)."""
    mesh = mesh_lib.create_mesh(1)
    tx, step = _toy_step(t)
    state = _init(tx)
    ckpt = checkpoint.Checkpointer(
        checkpoint.stage_directory(str(workdir), "toy"), t.checkpoint_every, t.keep_checkpoints
    )
    if resume and ckpt.all_steps():
        target = state
        state = loop.resume("toy", ckpt, lambda s: ckpt.restore(target, s))
    writer = writers.MetricWriter(os.path.join(str(workdir), "tb"), console=False)
    try:
        return loop.run(
            "toy",
            state,
            loop.jit_train_steps(step, mesh, per_call=t.get("steps_per_call", 1)),
            batches,
            t,
            ckpt,
            writer,
            mesh,
            jax.random.PRNGKey(0),
        )
    finally:
        ckpt.close()
        writer.close()


def _saved(workdir, stage="toy"):
    """{step: restored state} of every checkpoint on disk."""
    ckpt = checkpoint.Checkpointer(checkpoint.stage_directory(str(workdir), stage))
    tx = ts.make_optimizer(_train_config())
    target = _init(tx)
    out = {s: ckpt.restore(target, s) for s in ckpt.all_steps()}
    ckpt.close()
    return out


@pytest.mark.parametrize("per_call", [1, 3])
def test_nan_between_checkpoints_stops_there_and_a_rerun_does_not_loop(tmp_path, per_call):
    t = _train_config(steps_per_call=per_call)
    # Step index 4 is checkpoint step 5: between the checkpoints 4 and 6, not a log step.
    with pytest.raises(nonfinite.NonFiniteError) as e:
        _run(tmp_path, t, _Batches(nan_at=[4]))
    msg = str(e.value)
    assert "\n" not in msg
    assert "at step 5" in msg and "keeping checkpoint 4" in msg, msg
    assert "--config.toy.train.skip_nonfinite=true" in msg and "learning_rate" in msg
    saved = _saved(tmp_path)
    assert sorted(saved) == [2, 4]  # 6 was never written; rotation kept the finite ones
    assert all(finite.tree_is_finite(s) for s in saved.values())

    # The same config again: refused at once (it would stop at step 5 again), no step run.
    batches = _Batches(nan_at=[4])
    with pytest.raises(nonfinite.NonFiniteError, match="last run stopped on NaN/inf at step 5"):
        _run(tmp_path, t, batches)
    assert batches.calls == []

    # The documented way forward: skip such steps (or a lower learning rate) resumes from 4.
    batches = _Batches(nan_at=[4])
    state, history = _run(
        tmp_path, _train_config(skip_nonfinite=True, steps_per_call=per_call), batches
    )
    assert batches.calls == [4, 5, 6, 7]
    assert history[-1][0] == 8 and history[-1][1]["skipped_steps"] == 1.0
    saved = _saved(tmp_path)
    assert sorted(saved) == [6, 8] and all(finite.tree_is_finite(s) for s in saved.values())
    assert not os.path.exists(nonfinite.stop_path(str(tmp_path / "toy")))


def test_steps_per_call_end_where_the_host_has_work_and_resume_the_same(tmp_path):
    """Calls of up to 3 steps end at log steps (5, 10), checkpoints (4, 8) and multiples of
    3; the run, and one resumed from step 4, equal the one-step-per-call run."""
    kw = dict(steps=10, log_every=5, checkpoint_every=4, keep_checkpoints=3)
    one, _ = _run(tmp_path / "one", _train_config(**kw), _Batches())
    batches = _Batches()
    state, history = _run(tmp_path / "three", _train_config(steps_per_call=3, **kw), batches)
    assert batches.calls == list(range(10)) and [s for s, _ in history] == [5, 10]
    assert sorted(_saved(tmp_path / "three")) == [4, 8, 10]
    jax.tree.map(np.testing.assert_array_equal, state, one)

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # killed in the call after checkpoint 4
        _run(resumed, _train_config(steps_per_call=3, **kw), _KilledAt(5))
    assert max(_saved(resumed)) == 4
    batches = _Batches()
    state, _ = _run(resumed, _train_config(steps_per_call=3, **kw), batches)
    assert batches.calls == list(range(4, 10))
    jax.tree.map(np.testing.assert_array_equal, state, one)


def test_skip_nonfinite_equals_a_run_without_the_bad_step(tmp_path):
    """A skipped step leaves params, optimizer and EMA as they were: the next steps see
    the state the step before left (the step counter moves on)."""
    t = _train_config(steps=3, skip_nonfinite=True)
    tx, step = _toy_step(t)
    step = jax.jit(step)
    state = ts.create({"w": jnp.zeros(4)}, tx)
    good = {"x": np.ones((8, 4), np.float32)}
    bad = {"x": np.full((8, 4), np.inf, np.float32)}
    a, m = step(state, bad, jax.random.PRNGKey(0))
    assert not bool(m["finite"]) and int(a.step) == 1
    jax.tree.map(np.testing.assert_array_equal, a.replace(step=state.step), state)
    b, m = step(a, good, jax.random.PRNGKey(0))
    assert bool(m["finite"]) and finite.tree_is_finite(b)


def _data_files(step_dir):
    return [p for p in glob.glob(f"{step_dir}/**/d/*", recursive=True) if os.path.isfile(p)]


@pytest.mark.parametrize("damage", ["truncate", "delete", "truncate_and_no_metadata"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_step(tmp_path, damage):
    t = _train_config(steps=4, keep_checkpoints=3)
    _run(tmp_path, t, _Batches())
    newest = os.path.join(checkpoint.stage_directory(str(tmp_path), "toy"), "4")
    # Every data file: which of OCDBT's files hold the arrays is orbax's business.
    for path in _data_files(newest):
        if damage == "delete":
            os.remove(path)
        else:
            with open(path, "r+b") as f:
                f.truncate(10)
    if damage == "truncate_and_no_metadata":
        for p in glob.glob(f"{newest}/**/_METADATA", recursive=True):
            os.remove(p)
    # A re-run with more steps resumes from 2 (4 is set aside) and writes 4 again.
    state, history = _run(tmp_path, _train_config(steps=6, keep_checkpoints=3), _Batches())
    assert [s for s, _ in history] == [6]
    assert sorted(_saved(tmp_path)) == [2, 4, 6]
    assert os.listdir(tmp_path / "toy" / checkpoint.DAMAGED_DIR) == ["4"]


def test_no_restorable_checkpoint_names_the_directory_and_the_steps(tmp_path):
    _run(tmp_path, _train_config(steps=4), _Batches())
    directory = checkpoint.stage_directory(str(tmp_path), "toy")
    for step in (2, 4):
        for p in _data_files(os.path.join(directory, str(step))):
            os.remove(p)
    with pytest.raises(checkpoint.NoUsableCheckpoint) as e:
        _run(tmp_path, _train_config(steps=6), _Batches())
    assert directory in str(e.value) and "[4, 2]" in str(e.value)


def test_nonfinite_checkpoint_of_an_older_version_is_passed_over(tmp_path):
    t = _train_config(steps=4)
    _run(tmp_path, t, _Batches())
    directory = checkpoint.stage_directory(str(tmp_path), "toy")
    state = _saved(tmp_path)[4]
    nan = state.replace(params={"w": jnp.full(4, jnp.nan)}, step=jnp.int32(6))
    ckpt = checkpoint.Checkpointer(directory, 2, 3)
    ckpt.save(6, nan, force=True)  # as written before every checkpoint was checked
    ckpt.close()
    batches = _Batches()
    _run(tmp_path, _train_config(steps=8, keep_checkpoints=3), batches)
    assert batches.calls == [4, 5, 6, 7]  # resumed from 4, not from the NaN 6
    saved = _saved(tmp_path)
    assert sorted(saved) == [4, 6, 8] and all(finite.tree_is_finite(s) for s in saved.values())


_REAL_SAVE = checkpoint.ocp.CheckpointManager.save


def _full_disk_at_4(manager, step, *a, **kw):
    if step == 4:
        raise OSError(28, "No space left on device")
    return _REAL_SAVE(manager, step, *a, **kw)


def test_failed_save_stops_the_run_at_that_step(tmp_path, monkeypatch):
    # At the orbax call, so that the Checkpointer's and the loop's handling is what is tested.
    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", _full_disk_at_4)
    batches = _Batches()
    with pytest.raises(checkpoint.SaveFailed) as e:
        _run(tmp_path, _train_config(), batches)
    msg = str(e.value)
    assert "\n" not in msg and "stopped at step 4" in msg and "No space left" in msg, msg
    assert batches.calls == [0, 1, 2, 3]
    monkeypatch.undo()
    assert max(_saved(tmp_path)) == 2  # the run stopped at 4: nothing after it


def test_real_vae_stage_with_a_nan_batch_keeps_only_finite_checkpoints(tmp_path, monkeypatch):
    c = micro_config(vae_steps=5)
    c.stages = ("vae",)
    c.vae.train.log_every = 100
    real = vae_trainer.vae_batch

    def batch(config, s):
        b = real(config, s)
        return {k: v * np.nan for k, v in b.items()} if s == 2 else b

    monkeypatch.setattr(vae_trainer, "vae_batch", batch)
    with pytest.raises(nonfinite.NonFiniteError, match="at step 3.*keeping checkpoint 2"):
        train.train_and_evaluate(c, str(tmp_path))
    ckpt = checkpoint.for_stage(c, str(tmp_path), "vae")
    assert max(ckpt.all_steps()) == 2  # 3 and 4 never written
    ckpt.close()
    with pytest.raises(nonfinite.NonFiniteError, match="vae.train.learning_rate"):
        train.train_and_evaluate(c, str(tmp_path))  # refused, no second divergence
    assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)  # released on the error
    c.vae.train.skip_nonfinite = True
    train.train_and_evaluate(c, str(tmp_path))
    _, state = vae_trainer.load_state(c, str(tmp_path), mesh_lib.create_mesh(1))
    assert int(state.step) == 5 and finite.tree_is_finite(state)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(workdir, pid, host=None):
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, workdir_lock.LOCK_FILE)
    with open(path, "w") as f:
        json.dump(dict(pid=pid, host=host or socket.gethostname(), started="then"), f)
    return path


def test_locked_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path):
    live = _write_lock(tmp_path / "a", os.getpid())
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
        workdir_lock.acquire(str(tmp_path / "a"))
    assert json.loads(open(live).read())["started"] == "then"  # left alone
    other = _write_lock(tmp_path / "b", 1, host="another-host")
    with pytest.raises(workdir_lock.WorkdirLocked, match="another-host"):
        workdir_lock.acquire(str(tmp_path / "b"))
    stale = _write_lock(tmp_path / "c", _dead_pid())
    path = workdir_lock.acquire(str(tmp_path / "c"))
    assert path == stale and json.loads(open(path).read())["pid"] == os.getpid()
    workdir_lock.release(path)
    assert not os.path.exists(path) and os.path.exists(other)


def test_second_training_process_on_a_locked_workdir_exits_with_one_line(tmp_path):
    _write_lock(tmp_path, os.getpid())  # this live process holds it
    r = run_cli("sora_jax.train", f"--config={TINY}:micro", f"--workdir={tmp_path}")
    assert r.returncode == 1
    lines = _message_lines(r.stderr)
    assert len(lines) == 1 and "is in use by another training run" in lines[0], r.stderr[-2000:]
    assert f"pid {os.getpid()}" in lines[0]


def _message_lines(stderr: str) -> list[str]:
    """stderr without log lines (absl's `I1204 12:00:00.000 ...`, Python's `WARNING:root:`
    from third-party imports) and warnings (Python prints a warning's source line, indented,
    after it: orbax's 'coroutine ... was never awaited' comes and goes with garbage
    collection)."""
    lines, after_warning = [], False
    for line in stderr.splitlines():
        noise = (
            not line.strip()
            or (line[:1] in "IWEF" and line[1:5].isdigit())
            or "Warning" in line
            or line.startswith("WARNING:")
            or (after_warning and line.startswith("  "))
        )
        if not noise:
            lines.append(line)
        after_warning = "Warning" in line
    return lines

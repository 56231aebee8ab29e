"""One training process per workdir: a lock file holding the owner's pid, host and start time.

Two runs writing the same checkpoints would overwrite each other's steps and rotate each
other's checkpoints away. `hold(workdir)` creates `workdir/LOCK` atomically (O_EXCL) and
removes it on exit; a second run finds it and stops with `WorkdirLocked`. A lock whose pid is
dead on this same host (a killed run) is stale and taken over with a warning; one from another
host cannot be checked from here and is refused (the message says how to clear it). In a
multi-host run only process 0 holds it (the others share the run).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket

import jax
from absl import logging

LOCK_FILE = "LOCK"


class WorkdirLocked(RuntimeError):
    """Another live process trains in this workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # vanished meanwhile, or half written: treated as stale below


def acquire(workdir: str) -> str:
    """Creates the lock file of `workdir` (taking over a stale one); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    me = dict(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    for _ in range(3):  # a stale lock removed, then a retry (another process may race us)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is not None and (owner.get("host") != me["host"] or _alive(owner["pid"])):
                raise WorkdirLocked(
                    f"{workdir} is in use by another training run (pid {owner['pid']} on "
                    f"{owner['host']}, since {owner['started']}; lock file {path}): wait for "
                    f"it to finish or use another --workdir; delete the lock file only if "
                    f"that process is gone"
                ) from None
            logging.warning("taking over the stale lock %s of a dead process: %s", path, owner)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise WorkdirLocked(f"could not create the lock file {path} (other processes keep racing)")


def release(path: str) -> None:
    """Removes the lock file if this process still owns it."""
    owner = _read(path)
    if owner is not None and owner.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def hold(workdir: str):
    """Holds `workdir`'s lock for the block (process 0 of a multi-host run only)."""
    if jax.process_index() != 0:
        yield None
        return
    path = acquire(workdir)
    try:
        yield path
    finally:
        release(path)

"""A progress line with steps/s and ETA for long loops (training, sampling)."""

from __future__ import annotations

import sys
import time

import numpy as np


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Call `update(step)` every step; prints at most every `every_secs` and at the end.

    Rates are measured from the first update so that compilation does not skew ETA.
    """

    def __init__(
        self,
        name: str,
        total: int,
        start: int = 0,
        every_secs: float = 5.0,
        stream=None,
        enabled: bool = True,
    ):
        self.name, self.total, self.every_secs = name, total, every_secs
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._t0 = None
        self._s0 = start
        self._last_print = 0.0
        self.last_line = ""

    def rate(self, step: int) -> float:
        if self._t0 is None or step <= self._s0:
            return 0.0
        return (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)

    def update(self, step: int, extra: str = "") -> str | None:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._s0, self._last_print = now, step, now
            return None
        if now - self._last_print < self.every_secs and step < self.total:
            return None
        self._last_print = now
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = format_duration(eta) if eta != float("inf") else "?"
        line = (
            f"{self.name}: step {step}/{self.total} ({100.0 * step / self.total:.0f}%) | "
            f"{rate:.2f} steps/s | ETA {eta_s}" + (f" | {extra}" if extra else "")
        )
        self.last_line = line
        if self.enabled:
            print(line, file=self.stream, flush=True)
        return line


class SamplerProgress:
    """Progress of a sampler loop that runs inside jit: the loop calls `report(t)` (through
    `jax.debug.callback`) with the time of each model call; the position of t in the time
    grid f32[steps + 1] (1 -> 0) is the number of steps done. `finish()` prints the last line.
    """

    def __init__(self, grid, name: str = "sampling", every_secs: float = 1.0, stream=None):
        self._grid = np.asarray(grid, np.float64)
        self.progress = Progress(name, len(self._grid) - 1, every_secs=every_secs, stream=stream)

    def report(self, t) -> None:
        self.progress.update(int(np.argmin(np.abs(self._grid - float(t)))))

    def finish(self) -> None:
        self.progress.update(self.progress.total)

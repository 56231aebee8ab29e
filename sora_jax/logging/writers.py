"""Metric writers: TensorBoard event files plus the console.

clu's `metric_writers` import TensorFlow at load time; the default install stays
lean by writing TensorBoard events through the `tensorboard` package alone.
The writer keeps clu's MetricWriter method names so either can be used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes scalars to `logdir` (TensorBoard) and logs them; only process 0 writes."""

    def __init__(self, logdir: str, console: bool = True):
        self._active = jax.process_index() == 0
        self._console = console
        self._events = None
        if self._active:
            os.makedirs(logdir, exist_ok=True)
            self._events = EventFileWriter(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, float]):
        if not self._active:
            return
        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
        ]
        self._events.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
        )
        if self._console:
            logging.info("[%d] %s", step, ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items()))

    def write_images(self, step: int, images: Mapping[str, bytes]):
        """Encoded images (PNG, or GIF: TensorBoard shows it animated) under their tags."""
        if not self._active or not images:
            return
        values = [
            summary_pb2.Summary.Value(
                tag=k, image=summary_pb2.Summary.Image(encoded_image_string=v)
            )
            for k, v in images.items()
        ]
        self._events.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
        )

    def write_hparams(self, hparams: Mapping[str, object]):
        if self._active and self._console:
            logging.info("hparams: %s", dict(hparams))

    def flush(self):
        if self._events is not None:
            self._events.flush()

    def close(self):
        if self._events is not None:
            self._events.close()
            self._events = None


def _fmt(v) -> str:
    v = float(np.asarray(v))
    return f"{v:.4g}"


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Reads back every scalar series from TensorBoard event files in `logdir`."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

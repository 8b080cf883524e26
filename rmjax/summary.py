"""Where training reports go: a progress line, TensorBoard event files, `metrics.json`.

Only process 0 writes; other processes get a writer that does nothing, so the training loop
does not branch on the process index everywhere.
"""

from __future__ import annotations

import os
import socket
import time

from absl import logging

from rmjax import atomic


class MetricWriter:
  """Scalars to a TensorBoard event file under `logdir` (process 0), plus a JSON summary."""

  def __init__(self, logdir: str, *, enabled: bool = True):
    self._logdir = logdir
    self._records = None
    if enabled:
      # An event file is a TFRecord file of `Event` protos. TensorFlow (needed by the tfds
      # pipeline anyway) has both; tf.summary would also need the tensorboard package.
      import tensorflow as tf
      from tensorflow.core.util import event_pb2

      os.makedirs(logdir, exist_ok=True)
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
      self._event_pb2 = event_pb2
      self._records = tf.io.TFRecordWriter(os.path.join(logdir, name))
      self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if self._records is None:
      return
    from tensorflow.core.framework import summary_pb2

    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._write(
      self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
      )
    )

  def write_json(self, filename: str, content: dict) -> None:
    if self._records is None:
      return
    path = os.path.join(self._logdir, filename)
    atomic.write_json(path, content, indent=2, sort_keys=True)  # never a half-written summary

  def close(self) -> None:
    if self._records is not None:
      self._records.close()
      self._records = None


class Progress:
  """A progress line every few steps: step, loss, accuracy, learning rate, imgs/s, ETA."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._sums: dict[str, float] = {}
    self._count = 0

  def add(self, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
      self._sums[k] = self._sums.get(k, 0.0) + v
    self._count += 1

  def report(self, step: int) -> dict[str, float]:
    """Logs the averages since the last report and returns them (with imgs/s)."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds = max(now - self._last_time, 1e-9)
    means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
    means["imgs_per_sec"] = steps * self.global_batch / seconds
    eta = (self.total_steps - step) * seconds / steps
    logging.info(
      "step %d/%d (%.0f%%) | loss %.4f | acc %.4f | lr %.4g | %.1f img/s | ETA %s",
      step,
      self.total_steps,
      100.0 * step / self.total_steps,
      means.get("loss", float("nan")),
      means.get("accuracy", float("nan")),
      means.get("learning_rate", float("nan")),
      means["imgs_per_sec"],
      time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
    self._last_step, self._last_time, self._sums, self._count = step, now, {}, 0
    return means


def progress(iterable, what: str, total: int | None = None, *, every_seconds: float = 10.0):
  """Yields the items of `iterable`, logging `what: i/total (p%) | ETA` every `every_seconds`
  (a CLU-style periodic report; without `total`, the count and the time so far). For passes
  that can take minutes: evaluation, calibration, BN re-estimation."""
  start = last = time.perf_counter()
  for i, item in enumerate(iterable, 1):
    yield item
    now = time.perf_counter()
    if now - last < every_seconds:
      continue
    last = now
    if total:
      eta = (total - i) * (now - start) / i
      logging.info(
        "%s: %d/%d (%.0f%%) | ETA %s",
        what,
        i,
        total,
        100.0 * i / total,
        time.strftime("%H:%M:%S", time.gmtime(eta)),
      )
    else:
      logging.info("%s: %d done in %.0f s", what, i, now - start)

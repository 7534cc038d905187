"""Where a run reports: ``metrics.jsonl``, TensorBoard event files and a progress bar.

Only process 0 writes. TensorBoard events are built as protocol buffers by tensorboard's own
summary functions and written by its asynchronous event-file writer: no TensorFlow op runs in
the training process (TensorFlow's eager summary ops cost CPU at every report), and a slow file
system never holds up a step.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter
import tqdm


class MetricsSink:
  """Appends one JSON object per report to ``metrics.jsonl``; TensorBoard scalars and texts.

  Every process may create one; only the one with ``enabled=True`` (process 0) writes anything.
  ``start_step``: the step the run (re)starts from; reports of later steps written before a
  restart are dropped from ``metrics.jsonl`` by the caller and hidden in TensorBoard here.
  """

  def __init__(self, workdir: str, *, enabled: bool, start_step: int = 0):
    self._enabled = enabled
    self._jsonl = None
    self._events = None
    if enabled:
      logdir = os.path.join(workdir, 'tensorboard')
      write_start_marker(logdir, start_step + 1)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
      self._events = EventFileWriter(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Floats are written at full precision (``json`` keeps every digit of a float64)."""
    if not self._enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    self._write_event(step, [scalar_summary.scalar_pb(k, v) for k, v in values.items()])

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Markdown texts (e.g. sample translations) on TensorBoard's Text tab."""
    if self._enabled:
      self._write_event(step, [text_summary.text_pb(k, v) for k, v in texts.items()])

  def _write_event(self, step: int, summaries: list[summary_pb2.Summary]) -> None:
    event = event_pb2.Event(wall_time=time.time(), step=int(step))
    for summary in summaries:
      event.summary.value.extend(summary.value)
    self._events.add_event(event)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._events.close()  # writes the queued events and flushes


def write_start_marker(logdir: str, step: int) -> str:
  """An event file telling TensorBoard that the run (re)started at ``step``.

  After the first such marker, TensorBoard drops the points of steps >= ``step`` read from
  earlier files (its SessionLog.START purge), so steps redone after a resume are not shown
  twice. The name sorts after the earlier runs' files and before the new writer's (in the same
  second, ``0`` precedes any process id).
  """
  os.makedirs(logdir, exist_ok=True)
  path = os.path.join(
      logdir, f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.0.start')
  with open(path, 'wb') as f:
    writer = RecordWriter(f)
    now = time.time()
    for event in (event_pb2.Event(wall_time=now, file_version='brain.Event:2'),
                  event_pb2.Event(wall_time=now, step=step, session_log=event_pb2.SessionLog(
                      status=event_pb2.SessionLog.START))):
      writer.write(event.SerializeToString())
    writer.flush()
  return path


def progress_bar(*, initial: int, total: int, enabled: bool) -> tqdm.tqdm:
  """A bar over steps; the loop sets its postfix to loss and target tokens/s."""
  return tqdm.tqdm(initial=initial, total=total, disable=not enabled, unit='step',
                   dynamic_ncols=True, file=sys.stderr, mininterval=0.5)

"""Where a run reports: ``metrics.jsonl``, TensorBoard events and a progress bar (process 0)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from clu import metric_writers
import tqdm


class MetricsSink:
  """Appends one JSON object per report to ``metrics.jsonl`` and writes TensorBoard scalars.

  Every process may create one; only the one with ``enabled=True`` (process 0) writes anything.
  """

  def __init__(self, workdir: str, *, enabled: bool):
    self._enabled = enabled
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
      self._tensorboard = metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Floats are written at full precision (``json`` keeps every digit of a float64)."""
    if not self._enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._tensorboard.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.flush()
      self._tensorboard.close()


def progress_bar(*, initial: int, total: int, enabled: bool) -> tqdm.tqdm:
  """A bar over steps; the loop sets its postfix to loss and target tokens/s."""
  return tqdm.tqdm(initial=initial, total=total, disable=not enabled, unit='step',
                   dynamic_ncols=True, file=sys.stderr, mininterval=0.5)

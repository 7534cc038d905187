"""A run whose loss or gradients stop being finite stops before that state is saved.

Once a step's loss or gradient norm is NaN or infinite, the parameters it leaves are too, and
every later step's: saving them would push the last good checkpoints out of ``--keep_checkpoints``
(and a NaN evaluation loss would make the "best" checkpoint arbitrary). The loop checks every
step's two scalars before each save and at each report, and each evaluation loss when it is
computed; the first value that is not finite stops the run with ``TrainingDivergedError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from gemma_mt import errors

# The step metrics that say whether the state a step leaves is finite: the loss of its batch
# and the global norm of its gradients (finite gradients give a finite optimizer update).
WATCHED = ('train_loss', 'grad_norm')


@dataclasses.dataclass(frozen=True)
class Divergence:
  """The first metric that was not finite: at ``step``, ``metric`` was ``value``."""

  step: int
  metric: str
  value: float


def first_nonfinite(records: Iterable[tuple[int, Mapping[str, float]]],
                    watched: Iterable[str] = WATCHED) -> Divergence | None:
  """The first of ``watched`` that is NaN or infinite in ``(step, metrics)`` records, in order."""
  watched = tuple(watched)
  for step, metrics in records:
    for name in watched:
      if name in metrics and not math.isfinite(float(metrics[name])):
        return Divergence(step, name, float(metrics[name]))
  return None


class TrainingDivergedError(errors.UserError):
  """The run stopped at a non-finite loss or gradient norm; nothing after it was saved."""

  def __init__(self, divergence: Divergence, latest_checkpoint: int | None):
    self.divergence, self.latest_checkpoint = divergence, latest_checkpoint
    if latest_checkpoint is None:
      then = 'no checkpoint was saved: lower --learning_rate and start again'
    else:
      then = (f'the checkpoints up to step {latest_checkpoint} are kept: lower --learning_rate '
              f'and run the same command to resume from step {latest_checkpoint}')
    super().__init__(f'training diverged: {divergence.metric} is {divergence.value} at step '
                     f'{divergence.step}, and nothing from that step on was saved; {then}')

"""Orbax checkpoints of a run: train state, data iterator position and config, in one step dir.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config}``. Orbax writes each step to a temporary
directory and renames it when complete, so a save killed half-way is never seen as a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from gemma_mt import errors
from gemma_mt.train.config import TrainConfig

_LOG = logging.getLogger(__name__)

_STATE, _DATA, _CONFIG = 'state', 'data', 'config'


class CheckpointError(errors.UserError):
  """A workdir whose checkpoints cannot continue this run."""


class RunCheckpoints:
  """Saves and restores the checkpoints under ``directory`` (asynchronously by default)."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(_STATE, _DATA, _CONFIG))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def saved_config(self, step: int) -> TrainConfig:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return TrainConfig.from_dict(restored[_CONFIG])

  def check_compatible(self, config: TrainConfig, step: int) -> None:
    """Raises CheckpointError if the saved run's parameter shapes differ; logs other changes."""
    saved = self.saved_config(step)
    changes = config.changes_from(saved)
    blocking = {k: v for k, v in changes.items() if k in TrainConfig.SHAPE_FIELDS}
    if blocking:
      described = ', '.join(f'--{k}={new!r} (checkpoint has {old!r})'
                            for k, (old, new) in blocking.items())
      raise CheckpointError(
          f'{self.directory} holds checkpoints of another model: {described}; '
          'use a new --workdir or the same settings')
    for name, (old, new) in changes.items():
      if name != 'workdir':
        _LOG.info('resuming with --%s=%r (checkpoint was saved with %r)', name, new, old)

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           config: TrainConfig, *, force: bool = False) -> bool:
    """Starts saving ``state`` and the iterator position at ``step``; returns whether it did."""
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _DATA: grain.checkpoint.CheckpointSave(data_iterator),
        _CONFIG: ocp.args.JsonSave(json.loads(config.to_json())),
    })
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator) -> Any:
    """The state saved at ``step``, laid out like ``abstract_state``; moves the iterator there."""
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_state),
        _DATA: grain.checkpoint.CheckpointRestore(data_iterator),
    })
    restored = self._manager.restore(step, args=args)
    return restored[_STATE]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """``jax.ShapeDtypeStruct``s (with shardings) of a tree of arrays, for restoring into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

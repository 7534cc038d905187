"""Orbax checkpoints of a run: train state, data position and config, written atomically.

Layout: ``WORKDIR/checkpoints/<step>/{state,config,meta}``, plus ``data`` (each process's Grain
iterator state) in packed runs; ``meta`` holds the data position of unpacked runs. Orbax writes
each step to a temporary directory and renames it when complete, so a save killed half-way is
never taken for a checkpoint. Saves are asynchronous: training goes on while the bytes are written. Kept: the last
``keep`` checkpoints plus the one with the best evaluation loss (or BLEU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from gemma_mt import errors
from gemma_mt.train import distributed
from gemma_mt.train import sharding
from gemma_mt.train.config import TrainConfig

_LOG = logging.getLogger(__name__)
_STATE, _DATA, _CONFIG, _META = 'state', 'data', 'config', 'meta'


@dataclasses.dataclass(frozen=True)
class Ranking:
  """How a ``--best_metric`` ranks evaluations: the metric a checkpoint is saved with (``key``)
  and which way is better."""

  key: str
  lower_is_better: bool

  def better(self, value: float, than: float | None) -> bool:
    """Whether ``value`` beats ``than`` (None: nothing to beat yet); a tie does not."""
    return than is None or (value < than if self.lower_is_better else value > than)

  @property
  def worst(self) -> float:
    return math.inf if self.lower_is_better else -math.inf


# --best_metric → its ranking: the lowest evaluation loss, the highest BLEU.
RANKINGS = {'loss': Ranking('eval_loss', lower_is_better=True),
            'bleu': Ranking('eval_bleu', lower_is_better=False)}


class CheckpointError(errors.UserError):
  """A workdir or checkpoint that cannot serve this run; nothing was overwritten."""


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Where the training data stood at a checkpoint, independent of batch size and processes.

  It is what an unpadded (unpacked) run resumes from. A packed run resumes from the state of
  each process's Grain iterator, saved beside it; there this position is a record only.

  Attributes:
    examples_consumed: examples of the (repeated, shuffled) stream that training has used
      (in packed runs, the examples inside the packed rows).
    batch_size: the global batch size they were read with.
    process_count: the number of processes that read them.
  """

  examples_consumed: int
  batch_size: int
  process_count: int


class RunCheckpoints:
  """Saves and restores the checkpoints under ``directory``.

  The run that owns ``directory`` opens it with ``RunCheckpoints(...)``; everything else
  (resume checks, evaluation, translation, export) with ``RunCheckpoints.for_reading``.
  """

  def __init__(self, directory: str, *, keep: int, save_every_n: int,
               save_every_minutes: float = 0.0, async_save: bool = True,
               best_metric: str = 'loss', read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self._ranking = RANKINGS[best_metric]
    if read_only:
      # No directory made, nothing deleted: a reader must not remove the temporary directory
      # of a save that the run training in this workdir is writing right now. (Orbax's
      # read_only=True does the same but logs a warning on every opening.)
      # Nor does it read each checkpoint's metrics (lightweight_initialize): only a run ranks.
      options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False,
                                             save_interval_steps=0, lightweight_initialize=True)
    else:
      _saved_metrics(self.directory)  # a damaged file stops the run here, in one line
      save_policies = [policies.FixedIntervalPolicy(save_every_n),
                       policies.PreemptionCheckpointingPolicy()]
      if save_every_minutes:
        save_policies.append(policies.ContinuousCheckpointingPolicy(
            minimum_interval_secs=max(int(save_every_minutes * 60), 1)))
      options = ocp.CheckpointManagerOptions(
          create=True,
          # Removes what a save killed half-way left behind; it was never a checkpoint.
          cleanup_tmp_directories=True,
          enable_async_checkpointing=async_save,
          save_decision_policy=policies.AnySavePolicy(save_policies),
          preservation_policy=policies.AnyPreservationPolicy([
              policies.LatestN(n=keep),
              # Ascending sort keeps the last n: the lowest loss with reverse=True, the highest
              # BLEU without.
              policies.BestN(get_metric_fn=self._ranking_value,
                             reverse=self._ranking.lower_is_better,
                             n=1, keep_checkpoints_without_metrics=False),
          ]),
          # A best_fn makes Orbax write each save's metrics beside it (BestN alone keeps them in
          # memory only): a resumed run's manager then still knows which checkpoint is the best.
          best_fn=self._ranking_value,
          best_mode='min' if self._ranking.lower_is_better else 'max',
      )
    # Handlers registered up front, so that a fresh manager reads metadata before any save.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, handler, save_args, restore_args in (
        (_STATE, ocp.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
        (_DATA, grain.checkpoint.CheckpointHandler(), grain.checkpoint.CheckpointSave,
         grain.checkpoint.CheckpointRestore),
        (_CONFIG, ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
        (_META, ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
    ):
      registry.add(item, save_args, handler)
      registry.add(item, restore_args, handler)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=registry)

  @classmethod
  def for_reading(cls, directory: str) -> RunCheckpoints:
    """``directory``'s checkpoints to read, never written or cleaned up (a run may be writing)."""
    return cls(directory, keep=1 << 30, save_every_n=1 << 30, read_only=True)

  def all_steps(self) -> list[int]:
    """Complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _ranking_value(self, metrics: dict[str, float]) -> float:
    """A checkpoint's rank for the best: its evaluation, or the worst for a save without one."""
    return metrics.get(self._ranking.key, self._ranking.worst)

  def best_saved(self) -> tuple[int, float] | None:
    """The kept checkpoint of the best ``best_metric`` value, and that value; None if none
    was saved with one."""
    step = self._manager.best_step()
    value = ((self._manager.metrics(step) if step is not None else None) or {}).get(
        self._ranking.key)
    return None if value is None else (step, value)

  def pick_step(self, step: int | str | None, workdir: str) -> int:
    """The checkpoint ``--step`` names: None → the latest; ``'best'`` → the best evaluation
    by the run's ``--best_metric``; a number → that step. CheckpointError if there is none."""
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'--workdir={workdir} holds no checkpoint: train first')
    listed = ', '.join(map(str, steps))
    if step is None:
      return steps[-1]
    if step == 'best':
      ranking = RANKINGS[self.saved_config(steps[-1]).best_metric]
      ranked = {s: m[ranking.key] for s, m in _saved_metrics(self.directory).items()
                if s in steps and ranking.key in m}
      if not ranked:
        raise CheckpointError(f'--step=best: no checkpoint of {workdir} was saved with an '
                              f'evaluation ({ranking.key}): pass one of its steps, {listed}')
      return (min if ranking.lower_is_better else max)(ranked, key=ranked.get)
    if isinstance(step, str) and not step.isdigit():
      raise CheckpointError(f'--step={step}: pass a step number or best')
    if int(step) not in steps:
      raise CheckpointError(f'--step={step}: {workdir} has checkpoints at steps {listed}')
    return int(step)

  def saved_config(self, step: int) -> TrainConfig:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return TrainConfig.from_dict(restored[_CONFIG])

  def saved_position(self, step: int) -> DataPosition:
    return DataPosition(**self._saved_meta(step)['data_position'])

  def saved_base_fingerprint(self, step: int) -> dict[str, list[float]] | None:
    """The fingerprint of the frozen base a LoRA checkpoint was trained on (None: not LoRA)."""
    return self._saved_meta(step).get('lora_base')

  def saved_evals_since_best(self, step: int) -> int:
    """Evaluations in a row without a new best at checkpoint ``step``, counted by this run's
    ``--best_metric`` (0 where it was saved ranking another one, or before this was saved)."""
    return self._saved_meta(step).get('evals_since_best', {}).get(self._ranking.key, 0)

  def _saved_meta(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
    return restored[_META]

  def check_compatible(self, config: TrainConfig, step: int) -> None:
    """Raises CheckpointError if the saved parameters differ in shape; logs other changes."""
    check_config_compatible(config, self.saved_config(step), self.directory)

  def reached_preemption(self, step: int) -> bool:
    """Whether the job was told to stop (SIGTERM on a cluster), agreed by all processes."""
    return self._manager.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    """Whether the policies (every N steps, every M minutes, preemption) ask for a save."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           config: TrainConfig, position: DataPosition, *,
           metrics: dict[str, float] | None = None, force: bool = False,
           base_fingerprint: dict[str, list[float]] | None = None,
           evals_since_best: int = 0) -> bool:
    """Saves if ``should_save(step)`` or ``force``; returns whether a save started.

    ``data_iterator``: the Grain iterator whose state is the data position (packed runs); None
    where ``position`` alone says where the data stands. ``base_fingerprint``: a LoRA run's
    frozen base (``lora.fingerprint``), checked on resume. ``evals_since_best``: how many
    evaluations in a row have not beaten the best (``--early_stopping_patience``), for the
    ranking metric of this run. Raises CheckpointError if the disk
    refuses the save; earlier checkpoints stay as they were.
    """
    if self.read_only:
      raise ValueError(f'{self.directory} was opened for reading (RunCheckpoints.for_reading)')
    items = {_STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    args = ocp.args.Composite(**items, **{
        _CONFIG: ocp.args.JsonSave(json.loads(config.to_json())),
        _META: ocp.args.JsonSave({'data_position': dataclasses.asdict(position),
                                  'saved_at': time.time(),
                                  'evals_since_best': {self._ranking.key: evals_since_best},
                                  **({'lora_base': base_fingerprint} if base_fingerprint else {})}),
    })
    # Saving first waits for the previous asynchronous save, so its failure surfaces here.
    with self._save_failures():
      # Metrics even where there was no evaluation ({}): Orbax warns of a save without them.
      return self._manager.save(step, args=args, metrics=metrics or {}, force=force)

  @contextlib.contextmanager
  def _save_failures(self) -> Iterator[None]:
    """Turns a failed write (full disk, lost permissions) into one CheckpointError line."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise CheckpointError(
          f'saving a checkpoint to {self.directory} failed ({reason[:300]}); the earlier '
          'checkpoints are intact: free space or fix permissions and run the same command to '
          'resume') from e

  def check_state_matches(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointError if the saved state's arrays differ in path, shape or dtype.

    Catches every change that makes a checkpoint unrestorable for this run (another model, an
    optimizer whose state has another structure) before anything is read or renamed.
    """
    saved = _leaf_specs(self._manager.item_metadata(step)[_STATE])
    wanted = _leaf_specs(abstract_state)
    if saved != wanted:
      differing = sorted(set(saved.items()) ^ set(wanted.items()))[:3]
      described = '; '.join(f'{path} {shape} {dtype}' for path, (shape, dtype) in differing)
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} holds a train state of another shape '
          f'(e.g. {described}): --model, --param_dtype, --optimizer, --weight_decay or '
          '--grad_clip_norm differ from the run that wrote it; use a new --workdir or the same '
          'settings')

  def restore_latest(self, config: TrainConfig, abstract_state: Any,
                     data_iterator: grain.DatasetIterator | None,
                     check: Callable[[int], None] = lambda step: None) -> tuple[int, Any] | None:
    """Restores the newest checkpoint that reads back; None if there is none.

    A checkpoint of another run (see ``check_compatible``, ``check_state_matches`` and
    ``check``) stops with CheckpointError and nothing is touched. A checkpoint shown to be
    damaged (``is_damage``: a missing, truncated or undecodable file of its own) is renamed
    aside with a warning and the one before it is tried. Any other failure (out of memory,
    permissions, a transient I/O error, a bug) stops with CheckpointError and touches nothing.
    With several processes, every process's outcome is gathered first, so that all of them
    set aside, stop or go on together. ``data_iterator`` is moved to the saved position if given.
    """
    for step in reversed(self.all_steps()):
      failure: BaseException | None = None
      restored = None
      try:
        self.check_compatible(config, step)
        self.check_state_matches(step, abstract_state)
        check(step)
        restored = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except  # classified below, never swallowed
        failure = e
      outcome = distributed.agreed_max(
          _outcome_of(failure, os.path.join(self.directory, str(step))))
      if outcome == _RESTORED:
        return step, restored
      if outcome == _REFUSED:
        if isinstance(failure, CheckpointError):
          raise failure
        if failure is None:
          raise CheckpointError(f'another process could not restore checkpoint {step} of '
                                f'{self.directory}; see its log; nothing was moved')
        reason = str(failure).splitlines()[0] if str(failure) else ''
        raise CheckpointError(
            f'restoring checkpoint {step} of {self.directory} failed ({type(failure).__name__}: '
            f'{reason[:300]}); nothing was moved aside: fix the cause (memory, permissions, '
            'storage) and run the same command again') from failure
      aside = os.path.join(self.directory, f'{step}.unreadable-{int(time.time())}')
      if failure is not None:
        _LOG.warning('checkpoint %d in %s is damaged (%s: %s); moved to %s, trying the previous '
                     'one', step, self.directory, type(failure).__name__,
                     str(failure).splitlines()[0][:300] if str(failure) else '', aside)
      if jax.process_index() == 0:
        os.rename(os.path.join(self.directory, str(step)), aside)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f'gemma_mt_set_aside_{step}')
      self._manager.reload()
    return None

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator | None) -> Any:
    """The state saved at ``step``, laid out like ``abstract_state`` (any mesh)."""
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))[_STATE]

  def wait_until_finished(self) -> None:
    with self._save_failures():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save and for the clean-up of unfinished saves that opening started;
    a failure was already reported by save() or is logged."""
    try:
      # Orbax's close() waits for saves only. A clean-up thread left running outlives the
      # caller: at interpreter exit it fails ("cannot schedule new futures after interpreter
      # shutdown") after a command's last line, and it may still be deleting when a test or
      # another manager looks at the directory.
      self._manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
      self._manager.close()
    except (OSError, ValueError, RuntimeError) as e:
      _LOG.warning('closing %s: %s', self.directory, str(e).splitlines()[0] if str(e) else e)


def check_config_compatible(config: TrainConfig, saved: TrainConfig, directory: str) -> None:
  """Raises CheckpointError if ``saved`` (a checkpoint's config in ``directory``) holds other
  parameters than ``config`` would (``TrainConfig.SHAPE_FIELDS``; for LoRA runs also another
  base: ``--ckpt``, ``--init_from``); logs the other changes."""
  changes = config.changes_from(saved)
  fields = TrainConfig.SHAPE_FIELDS + (('ckpt', 'init_from') if saved.lora else ())
  blocking = {k: v for k, v in changes.items() if k in fields}
  if blocking:
    described = ', '.join(f'--{k}={new!r} (checkpoint has {old!r})'
                          for k, (old, new) in blocking.items())
    raise CheckpointError(
        f'{directory} holds checkpoints of another model: {described}; '
        'use a new --workdir or the same settings')
  for name, (old, new) in changes.items():
    if name != 'workdir':
      _LOG.info('resuming with --%s=%r (checkpoint was saved with %r)', name, new, old)


def _saved_metrics(directory: str) -> dict[int, dict[str, float]]:
  """Each checkpoint's saved metrics (``{}`` for a save without an evaluation), by step.

  Raises CheckpointError naming a metrics file that is not JSON: Orbax reads every
  checkpoint's metrics when a run opens the directory, and would stop with a traceback.
  """
  saved = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    path = os.path.join(directory, name, 'metrics', 'metrics')
    if not (name.isdigit() and os.path.isfile(path)):
      continue
    try:
      with open(path, encoding='utf-8') as f:
        saved[int(name)] = json.load(f)
    except (ValueError, OSError) as e:
      raise CheckpointError(
          f'{path} is damaged ({e}): restore it, or delete it (checkpoint {name} is then not '
          'ranked for the best evaluation), and run again') from e
  return saved


_RESTORED, _DAMAGED, _REFUSED = 0, 1, 2
# tensorstore's status codes for a file that is missing, shorter than written, or undecodable.
_DAMAGE_STATUSES = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS')


def is_damage(error: BaseException, step_directory: str) -> bool:
  """Whether ``error`` shows the checkpoint at ``step_directory`` itself to be damaged.

  Only Orbax's and tensorstore's format errors count: an undecodable JSON file, a missing item,
  and a file of this checkpoint (named in the message) that is missing, truncated or corrupt.
  Out-of-memory, permission and other I/O errors, and our own bugs are not damage.
  """
  if isinstance(error, CheckpointError):
    return False
  if isinstance(error, json.JSONDecodeError):
    return True
  if isinstance(error, KeyError):
    return 'was not found in the checkpoint' in str(error)
  if isinstance(error, FileNotFoundError):
    return os.path.abspath(str(error.filename or '')).startswith(step_directory + os.sep)
  message = str(error)
  return (type(error) is ValueError and message.startswith(_DAMAGE_STATUSES)
          and step_directory + os.sep in message)


def _outcome_of(failure: BaseException | None, step_directory: str) -> int:
  if failure is None:
    return _RESTORED
  return _DAMAGED if is_damage(failure, step_directory) else _REFUSED


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """``{path: (shape, dtype)}`` of the arrays of a state or of its saved metadata."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {sharding.path_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in flat}


def _params_misfit(item: str, target: Any) -> str | None:
  """Which arrays of ``target`` the checkpoint item ``item`` lacks or holds in another shape
  (None: all there); read from its metadata. Checked before restoring: Orbax's own refusal
  comes while its reads are in flight, and they end after its event loop is closed."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = _leaf_specs(handler.metadata(epath.Path(item)))
  finally:
    handler.close()
  wanted = _leaf_specs(target)
  problems = [f'{name} is missing' if name not in saved else
              f'{name} is {saved[name][0]}, the model has {shape}'
              for name, (shape, _) in wanted.items()
              if name not in saved or saved[name][0] != shape]
  return '; '.join(problems[:3]) + ('; ...' if len(problems) > 3 else '') if problems else None


def restore_params(path: str, abstract_params: Any, source: str | None = None) -> Any:
  """Parameters from a run directory, a checkpoint step directory or an export directory.

  Raises CheckpointError (one line, led by ``source``: the flag and value the user gave, by
  default ``--init_from=PATH``) if nothing is there or the shapes differ.
  """
  path = os.path.abspath(path)
  source = source or f'--init_from={path}'
  candidates = [path]
  checkpoints = os.path.join(path, 'checkpoints')
  if os.path.isdir(checkpoints):
    steps = sorted((int(n) for n in os.listdir(checkpoints) if n.isdigit()), reverse=True)
    candidates = [os.path.join(checkpoints, str(s)) for s in steps]
  for candidate in candidates:
    if os.path.isdir(os.path.join(candidate, _STATE)):
      item = os.path.join(candidate, _STATE)
      target = {'params': abstract_params}
    elif os.path.isdir(os.path.join(candidate, 'params')):
      item = os.path.join(candidate, 'params')
      target = abstract_params
    else:
      continue
    misfit = _params_misfit(item, target)
    if misfit:
      raise CheckpointError(f'{source}: its parameters do not fit this model ({misfit})')
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          item, args=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
    except (ValueError, KeyError) as e:
      raise CheckpointError(f'{source}: its parameters do not fit this model '
                            f'({str(e).splitlines()[0][:200]})') from None
    return restored['params'] if item.endswith(_STATE) else restored
  raise CheckpointError(f'{source} holds no checkpoint or exported parameters: '
                        'pass a run directory, one of its checkpoints/<step>, or an export')

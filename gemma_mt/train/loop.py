"""The training loop: data, model, sharded steps, evaluation, reports and checkpoints in order.

``train_and_evaluate(config)`` is the one entry point; the CLI is a thin shell over it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gemma_mt import models
from gemma_mt import quality
from gemma_mt.data import pipeline
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.records import TrainingInput
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.models import sources as model_sources
from gemma_mt.models import lora
from gemma_mt.train import checkpoint
from gemma_mt.train import divergence
from gemma_mt.train import frozen_base
from gemma_mt.train import memory
from gemma_mt.train import optimizer as optimizer_lib
from gemma_mt.train import perf
from gemma_mt.train import reporting
from gemma_mt.train import sharding
from gemma_mt.train import step as step_lib
from gemma_mt.train import workdir_lock
from gemma_mt.train.config import ConfigError, TrainConfig, workdir_not_writable
from gemma_mt.train.mesh_spec import MeshSpec
from gemma_mt.decoding import Translator

_LOG = logging.getLogger(__name__)
# Evaluation batches dispatched ahead of the one whose sums are read (see evaluate).
_EVAL_BATCHES_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run leaves: its final step, state and evaluation, and sample translations."""

  step: int
  state: step_lib.TrainState
  eval_loss: float | None
  translations: list[tuple[str, str, str]]  # (source, reference, model output)
  preempted: bool = False
  stopped_early: bool = False  # --early_stopping_patience evaluations without a new best
  quality: quality.QualityScores | None = None  # BLEU and chrF++ of the last evaluation
  memory_plan: memory.MemoryPlan | None = None  # bytes per device of one step


@dataclasses.dataclass(frozen=True)
class RunData:
  """The encoded splits of a run and how each was filtered."""

  train: list[pipeline.EncodedExample]
  eval: list[pipeline.EncodedExample]
  eval_pairs: list[tuple[str, str]]
  train_stats: pipeline.FilterStats
  eval_stats: pipeline.FilterStats


def load_run_data(config: TrainConfig, tokenizer: GemmaTokenizer) -> RunData:
  """Reads, tokenizes and filters the train and eval splits of ``config.dataset``."""
  spec = config.dataset_spec()
  prompt_format = records.PromptFormat.from_template(config.prompt_template)
  encoded = {}
  for split in (config.train_split, config.eval_split):
    pairs, _ = sources.read_pairs(spec, split)
    examples, stats = pipeline.encode_examples(
        pairs, tokenizer, prompt_format, config.max_seq_len, config.too_long)
    _LOG.info('%s split %s: %s', config.dataset, split, stats.summary())
    if not examples:
      raise pipeline.PipelineError(
          f'no {split} example of {config.dataset} fits --max_seq_len={config.max_seq_len}: '
          'raise it or use --too_long=truncate')
    encoded[split] = (examples, stats, pairs)
  train, train_stats, _ = encoded[config.train_split]
  evals, eval_stats, eval_pairs = encoded[config.eval_split]
  return RunData(train, evals, eval_pairs, train_stats, eval_stats)


def total_steps(config: TrainConfig, num_train_examples: int,
                start: checkpoint.DataPosition | None = None, start_step: int = 0) -> int:
  """``max_steps`` if set, else the step at which ``num_epochs`` epochs are used up.

  A run resumed at ``start_step`` from ``start`` counts the examples left at its batch size.
  """
  if config.max_steps:
    return config.max_steps
  consumed = start.examples_consumed if start else 0
  return start_step + (num_train_examples * config.num_epochs - consumed) // config.batch_size


def evaluate(eval_fn: Any, params: Any, batches: Any, mesh: Any,
             frozen: Any = None) -> dict[str, float]:
  """Loss and token accuracy over the whole eval split, weighted by target tokens."""
  totals = np.zeros(3, dtype=np.float64)
  # A batch's sums are read two batches later: the host builds the next batches while the devices
  # compute, and no more than three batches wait on the devices (their inputs held in memory).
  pending: collections.deque[Any] = collections.deque()
  for local in batches:
    pending.append(eval_fn(params, sharding.global_batch(local, mesh), frozen or {}))
    if len(pending) > _EVAL_BATCHES_IN_FLIGHT:
      totals += np.asarray(jax.device_get(pending.popleft()), dtype=np.float64)
  for batch_sums in jax.device_get(list(pending)):  # float64, in batch order
    totals += np.asarray(batch_sums, dtype=np.float64)
  loss_sum, num_tokens, num_correct = totals
  return {'eval_loss': loss_sum / max(num_tokens, 1.0),
          'eval_accuracy': num_correct / max(num_tokens, 1.0)}


def _check_batch_sizes(config: TrainConfig, mesh: Any) -> None:
  shards = sharding.batch_shards(mesh)
  micro = config.batch_size // config.grad_accum_steps
  if micro % shards:
    raise ConfigError(
        f'--batch_size={config.batch_size} / --grad_accum_steps={config.grad_accum_steps} = '
        f'{micro} rows per step is not divisible by the {shards} batch shards (data × fsdp) '
        f'of the mesh: use a multiple of {shards * config.grad_accum_steps}')
  if config.eval_batch_size % shards:
    raise ConfigError(
        f'--eval_batch_size={config.eval_batch_size} is not divisible by the {shards} batch '
        f'shards (data × fsdp) of the mesh: use a multiple of {shards}')


class _StopRequests:
  """SIGTERM / SIGINT → finish the current step, save, stop; a second SIGINT stops at once.

  One process handles both itself. In a job of several processes, SIGTERM is JAX's preemption
  notice (all processes agree on one step through its sync point), and SIGINT is turned into
  that notice, so that Ctrl-C saves an agreed step too.
  """

  def __init__(self) -> None:
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> _StopRequests:
    if threading.current_thread() is not threading.main_thread():
      return self
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    else:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._notify_all)
    return self

  def _handle(self, signum: int, _frame: Any) -> None:
    self.signal_name = signal.Signals(signum).name
    # A second Ctrl-C stops at once.
    signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.SIG_DFL))

  def _notify_all(self, _signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.SIG_DFL))
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier shares it with the job

  def __exit__(self, *_: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _truncate_metrics(workdir: str, after_step: int) -> None:
  """Drops reports of steps after the checkpoint resumed from: they will be made again."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  kept = [l for l in lines if l.strip() and json.loads(l)['step'] <= after_step]
  if len(kept) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.writelines(kept)
    os.replace(tmp, path)


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise workdir_not_writable(workdir, e) from None


@dataclasses.dataclass(frozen=True)
class CompiledRun:
  """What a run is before any weight is read: its model, layout and compiled steps.

  Attributes:
    config: the run's config with ``model`` resolved (from ``--ckpt`` if it was empty).
    run_model: the model's spec, tokenizer and weights' source.
    mesh: the device mesh.
    model: the flax module (for LoRA runs, the adapted one).
    base_layout: the frozen base's layout (LoRA runs), else None.
    optimizer: the Optax optimizer.
    schedule: the learning-rate schedule.
    abstract_state: ``ShapeDtypeStruct``s of the train state with their shardings.
    state_shardings: the shardings of the train state.
    abstract_batch: ``ShapeDtypeStruct``s of one global batch with its sharding.
    train_fn: the ahead-of-time compiled train step.
    eval_fn: the jitted eval step.
    memory_plan: bytes per device of one step.
    num_steps: the step the learning-rate schedule ends at.
  """

  config: TrainConfig
  run_model: model_sources.RunModel
  mesh: Any
  model: Any
  base_layout: frozen_base.BaseLayout | None
  optimizer: Any
  schedule: Any
  abstract_state: step_lib.TrainState
  state_shardings: step_lib.TrainState
  abstract_batch: TrainingInput
  train_fn: Any
  eval_fn: Any
  memory_plan: memory.MemoryPlan
  num_steps: int


def compile_run(config: TrainConfig, run_model: model_sources.RunModel, num_steps: int, *,
                pad_id: int = 0, devices: list[jax.Device] | None = None) -> CompiledRun:
  """The mesh, the state's layout, the compiled steps and the memory plan of ``config``.

  Nothing is allocated on the devices and no weight is read.
  """
  config = dataclasses.replace(config, model=run_model.spec.name)
  mesh = sharding.make_mesh(MeshSpec.parse(config.mesh), devices)
  _check_batch_sizes(config, mesh)
  optimizer, schedule = optimizer_lib.make_optimizer(config, num_steps)
  base_layout = frozen_base.layout(config, run_model.spec, mesh) if config.lora else None
  if base_layout is not None:
    model, abstract_frozen = base_layout.model, base_layout.abstract_frozen
    abstract_trained = base_layout.abstract_adapters
  else:
    model, abstract_frozen = run_model.spec.transformer(jnp.dtype(config.param_dtype),
                                                        config.remat), {}
    abstract_trained = jax.eval_shape(
        lambda: models.init_params(model, config.seed))
  frozen_shardings = jax.tree.map(lambda x: x.sharding, abstract_frozen)
  abstract_state = jax.eval_shape(functools.partial(_state_of, optimizer), abstract_trained)
  state_shardings = sharding.state_shardings(mesh, abstract_state, optimizer,
                                             rules=sharding.rules_for(model.config))
  abstract_state = sharding.with_shardings(abstract_state, state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_shape = (config.batch_size, config.max_seq_len)
  tokens_shape = jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=batch_sharding)
  abstract_batch = TrainingInput(
      input_tokens=tokens_shape,
      target_mask=jax.ShapeDtypeStruct(batch_shape, jnp.bool_, sharding=batch_sharding),
      segment_ids=tokens_shape if config.packing else None,
      positions=tokens_shape if config.packing else None)
  compute_dtype = None if config.compute_dtype == config.param_dtype else jnp.dtype(
      config.compute_dtype)
  # Compiled ahead of time, once, before the loop (and before any weight is read).
  train_fn = jax.jit(
      functools.partial(step_lib.train_step, model=model, optimizer=optimizer,
                        pad_id=pad_id, learning_rate_fn=schedule,
                        grad_accum_steps=config.grad_accum_steps, compute_dtype=compute_dtype,
                        loss_chunk=config.loss_chunk),
      in_shardings=(state_shardings, batch_sharding, frozen_shardings),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  ).lower(abstract_state, abstract_batch, abstract_frozen).compile()
  eval_fn = jax.jit(
      functools.partial(step_lib.eval_step, model=model, pad_id=pad_id,
                        loss_chunk=config.loss_chunk),
      in_shardings=(state_shardings.params, batch_sharding, frozen_shardings),
      out_shardings=sharding.replicated(mesh),
  )
  plan = memory.plan(train_fn, abstract_state, state_shardings, abstract_batch, mesh,
                     abstract_frozen)
  return CompiledRun(config, run_model, mesh, model, base_layout, optimizer, schedule,
                     abstract_state, state_shardings, abstract_batch, train_fn, eval_fn, plan,
                     num_steps)


def plan_memory(config: TrainConfig, *,
                devices: list[jax.Device] | None = None) -> tuple[CompiledRun, list[str]]:
  """The memory plan of ``config`` (``--dry_run``): no data and no weight is read.

  Returns the compiled run and the lines to print.
  """
  config.validate()
  run_model = model_sources.resolve_run_model(config.model_name, config.ckpt, config.tokenizer,
                                              need_weights=False)
  run = compile_run(config, run_model, config.max_steps or 1, devices=devices)
  return run, _describe_run(run) + run.memory_plan.lines()


def _describe_run(run: CompiledRun) -> list[str]:
  config, mesh = run.config, run.mesh
  params_bytes = run.memory_plan.params
  lines = [f'model {config.model}: {models.count_params(run.abstract_state.params):,} '
           f'{"adapter parameters" if config.lora else "parameters"} ({config.param_dtype}, '
           f'{params_bytes / 2**20:.2f} MiB per device); mesh '
           f'{dict(mesh.shape)} over {mesh.size} devices in {jax.process_count()} processes']
  if run.base_layout is not None:
    lora_spec = config.lora_spec()
    lines.append(
        f'LoRA rank {lora_spec.rank}, scale {lora_spec.scale:g} on {", ".join(lora_spec.targets)}; '
        f'frozen base of {models.count_params(run.base_layout.abstract_base):,} parameters '
        f'({config.frozen_dtype}, quantization {config.base_quantization}, '
        f'{run.memory_plan.frozen / 2**20:.2f} MiB per device)')
  if run.run_model.source is not None:
    lines.append(f'weights from {run.run_model.source.source}; tokenizer '
                 f'{run.run_model.tokenizer_path}')
  lines += ['  ' + line for line in sharding.describe_param_shardings(
      run.abstract_state.params, run.state_shardings.params)]
  return lines


def _state_of(optimizer: Any, params: Any) -> step_lib.TrainState:
  return step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def _has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir`` holds a checkpoint to resume from (read without creating anything)."""
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


WORKDIR_TOKENIZER = 'tokenizer.model'


@dataclasses.dataclass(frozen=True)
class _Latest:
  """What the newest checkpoint of a workdir says before anything is restored; a part that does
  not read back is None (restoring decides what to do with such a checkpoint)."""

  step: int
  config: TrainConfig | None
  position: checkpoint.DataPosition | None


def _read_latest(workdir: str) -> _Latest | None:
  """The newest checkpoint's config and data position, read once at start; None if none."""
  if not _has_checkpoint(workdir):
    return None
  store = checkpoint.RunCheckpoints.for_reading(os.path.join(workdir, 'checkpoints'))

  def readable(read: Any, *args: int) -> Any:
    try:
      return read(*args)
    except (OSError, ValueError, KeyError):
      return None

  try:
    step = readable(store.latest_step)
    if step is None:
      return None
    return _Latest(step, readable(store.saved_config, step), readable(store.saved_position, step))
  finally:
    store.close()


def _resumed_run_model(config: TrainConfig,
                       latest: _Latest | None) -> model_sources.RunModel | None:
  """The model of a run that resumes: its saved model name and the tokenizer kept in the
  workdir, so that the weights' source is neither read nor needed again. None for a fresh run."""
  saved_tokenizer = os.path.join(config.workdir, WORKDIR_TOKENIZER)
  if latest is None or not os.path.isfile(saved_tokenizer):
    return None
  saved = latest.config
  if saved is None or saved.model not in models.MODELS:
    return None
  # Another --model is refused by the compatibility check, with both names.
  spec = models.get_model_spec(config.model or saved.model)
  return model_sources.RunModel(spec, saved_tokenizer, source=None)


def train_and_evaluate(config: TrainConfig, *,
                       devices: list[jax.Device] | None = None) -> TrainResult:
  """Trains ``config.model`` on ``config.dataset``, resuming from ``config.workdir`` if it can.

  ``devices`` (default: all devices of all processes) are laid out by ``config.mesh``. SIGTERM
  or SIGINT ends the run after the current step with a checkpoint (``result.preempted``).
  Raises ``workdir_lock.WorkdirBusyError`` if another job is training in ``config.workdir``,
  and ``divergence.TrainingDivergedError`` when a loss or gradient norm stops being finite (the
  state from that step on is never saved).
  """
  config.validate()
  config.check_paths()
  lock = workdir_lock.WorkdirLock(config.workdir)
  try:
    return _train_and_evaluate(config, devices, lock)
  finally:
    lock.release()


def _train_and_evaluate(config: TrainConfig, devices: list[jax.Device] | None,
                        lock: workdir_lock.WorkdirLock) -> TrainResult:
  is_main = jax.process_index() == 0
  if os.path.isdir(config.workdir):
    lock.acquire()  # before anything is read: another job may be writing it
  latest = _read_latest(config.workdir)
  if config.lora and latest and latest.config and latest.config.lora:
    # The same command resumes without the base's flags: the run recorded them.
    config = dataclasses.replace(config, ckpt=config.ckpt or latest.config.ckpt,
                                 init_from=config.init_from or latest.config.init_from)
  # A LoRA run reads its base again on resume: its source is needed.
  run_model = (None if config.lora else _resumed_run_model(config, latest)) or (
      model_sources.resolve_run_model(config.model_name, config.ckpt, config.tokenizer))
  if latest and latest.config:
    # Another model (or LoRA where the checkpoints are full, or another base) is refused
    # before anything is compiled, read or written.
    checkpoint.check_config_compatible(
        dataclasses.replace(config, model=run_model.spec.name), latest.config,
        os.path.join(config.workdir, 'checkpoints'))
  tokenizer = GemmaTokenizer(run_model.tokenizer_path)
  data = load_run_data(config, tokenizer)
  # Sized from where a resumed run stands, so that its schedule ends at its own last step.
  resumed_at = (latest.position, latest.step) if latest and latest.position else (None, 0)
  num_steps = total_steps(config, len(data.train), *resumed_at)
  _check_epochs_cover_max_steps(config, data, tokenizer.pad_id, *resumed_at)
  if num_steps <= 0:
    raise ConfigError(f'{len(data.train)} training examples make no full batch of '
                      f'--batch_size={config.batch_size}: lower it or raise --num_epochs')
  run = compile_run(config, run_model, num_steps, pad_id=tokenizer.pad_id, devices=devices)
  config = run.config
  if is_main:
    for line in _describe_run(run) + run.memory_plan.lines():
      _LOG.info('%s', line)
  if not run.memory_plan.fits():
    raise ConfigError(f'one training step needs {run.memory_plan.total / 2**30:.2f} GiB per '
                      f'device, more than the {run.memory_plan.device_bytes / 2**30:.2f} GiB of '
                      f'{run.memory_plan.device}: {run.memory_plan.advice(config, run.mesh)}')

  frozen, base_fingerprint = (frozen_base.load(config, run_model, run.base_layout)
                              if run.base_layout is not None else ({}, None))

  def initial_params() -> Any:
    if config.lora:
      return None  # new adapters (the base is loaded above)
    if config.init_from:
      return checkpoint.restore_params(config.init_from, run.abstract_state.params)
    source = run_model.source
    if source is None and not run_model.spec.is_random_init:
      # A resumed run whose checkpoints all turned out unreadable starts over from its weights.
      source = model_sources.resolve_run_model(config.model, config.ckpt, config.tokenizer).source
    if source is not None:
      return source.load_params(run.abstract_state.params)
    return None  # random

  # A fresh run reads its weights before anything is written, so a mismatch costs nothing.
  loaded = initial_params() if not _has_checkpoint(config.workdir) else None
  _make_workdir(config.workdir)
  lock.acquire()
  saved_tokenizer = os.path.join(config.workdir, WORKDIR_TOKENIZER)
  if is_main and not os.path.isfile(saved_tokenizer):
    shutil.copyfile(tokenizer.path, saved_tokenizer + '.tmp')
    os.replace(saved_tokenizer + '.tmp', saved_tokenizer)
  store = checkpoint.RunCheckpoints(
      os.path.join(config.workdir, 'checkpoints'), keep=config.keep_checkpoints,
      save_every_n=config.save_every_n, save_every_minutes=config.save_every_minutes,
      best_metric=config.best_metric)
  try:
    start = _start(run, lambda: loaded if loaded is not None else initial_params(), tokenizer,
                   data, store, base_fingerprint)
    if start.num_steps != run.num_steps:
      # Resumed from an older checkpoint than the latest (the latest was damaged).
      run = compile_run(config, run_model, start.num_steps, pad_id=tokenizer.pad_id,
                        devices=list(run.mesh.devices.flat))
    if is_main and start.step:
      _truncate_metrics(config.workdir, start.step)
    sink = reporting.MetricsSink(config.workdir, enabled=is_main, start_step=start.step)
    try:
      state, eval_loss, preempted, stopped_early, scores = _train_loop(
          run, start, tokenizer, data, store, sink, is_main, frozen, base_fingerprint)
      translations = []
      if config.num_translations and not preempted:
        translations = _sample_translations(run, step_lib.model_params(state.params, frozen),
                                            tokenizer, data)
        sink.write_texts(int(jax.device_get(state.step)), {'translations': '\n\n'.join(
            f'en: {src}  \nfr: {out}  \nreference: {ref}' for src, ref, out in translations)})
    finally:
      sink.close()
  finally:
    store.close()
  return TrainResult(step=int(jax.device_get(state.step)), state=state, eval_loss=eval_loss,
                     translations=translations, preempted=preempted,
                     stopped_early=stopped_early, quality=scores,
                     memory_plan=run.memory_plan)


def _check_epochs_cover_max_steps(config: TrainConfig, data: RunData, pad_id: int,
                                  position: checkpoint.DataPosition | None, step: int) -> None:
  """With both ``--num_epochs`` and ``--max_steps``, the epochs must hold ``max_steps`` batches:
  checked at start, so that a run never stops half-way for want of data."""
  if not (config.num_epochs and config.max_steps):
    return
  if config.packing:
    # Packed batches per epoch depend on the lengths: count them (this process's share).
    packed = pipeline.packed_train_dataset(
        data.train, max_seq_len=config.max_seq_len, pad_id=pad_id,
        global_batch_size=config.batch_size, seed=config.seed, num_epochs=config.num_epochs,
        process=pipeline.ProcessSlice(jax.process_index(), jax.process_count()))
    available = sum(1 for _ in packed)
    if jax.process_count() > 1:
      available = int(np.min(multihost_utils.process_allgather(np.int64(available))))
  else:
    available = total_steps(dataclasses.replace(config, max_steps=0), len(data.train), position,
                            step)
  if config.max_steps > available:
    raise ConfigError(
        f'--max_steps={config.max_steps} is more than the {available} steps that '
        f'--num_epochs={config.num_epochs} of the {len(data.train)} training examples make at '
        f'--batch_size={config.batch_size}: raise --num_epochs, lower --max_steps, or set '
        '--num_epochs=0 to repeat the data until --max_steps')


@dataclasses.dataclass(frozen=True)
class _Start:
  """Where the loop starts: the state, its step and data position, and the step it ends at."""

  step: int
  state: step_lib.TrainState
  examples_consumed: int
  data_iterator: Any
  num_steps: int
  evals_since_best: int = 0  # evaluations in a row without a new best (--best_metric)


def _start(run: CompiledRun, initial_params: Any, tokenizer: GemmaTokenizer, data: RunData,
           store: checkpoint.RunCheckpoints,
           base_fingerprint: dict[str, list[float]] | None = None) -> _Start:
  """The newest checkpoint that restores, or a fresh state; the data iterator at its position.

  Unpacked data resumes from the number of examples used (any batch size or number of
  processes); packed data from each process's Grain iterator state.
  """
  config = run.config
  process = pipeline.ProcessSlice(jax.process_index(), jax.process_count())

  def train_iterator(start_example: int) -> Any:
    if config.packing:
      return pipeline.make_iterator(pipeline.packed_train_dataset(
          data.train, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
          global_batch_size=config.batch_size, seed=config.seed,
          num_epochs=config.num_epochs or None, process=process))
    return pipeline.make_iterator(pipeline.train_dataset(
        data.train, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
        global_batch_size=config.batch_size, seed=config.seed,
        num_epochs=config.num_epochs or None, process=process, start_example=start_example))

  def check_packed_layout(step: int) -> None:
    if base_fingerprint is not None:
      frozen_base.check_base(store, step, base_fingerprint, config)
    saved = store.saved_position(step)
    if config.packing and (saved.batch_size, saved.process_count) != (
        config.batch_size, jax.process_count()):
      raise checkpoint.CheckpointError(
          f'{store.directory} was saved with --batch_size={saved.batch_size} on '
          f'{saved.process_count} processes; a --packing run resumes exactly only with the '
          'same batch size and number of processes')

  packed_iterator = train_iterator(0) if config.packing else None
  restored = store.restore_latest(config, run.abstract_state, packed_iterator,
                                  check_packed_layout)
  if restored is None:
    state = _fresh_state(run, initial_params)
    return _Start(0, state, 0, packed_iterator if config.packing else train_iterator(0),
                  total_steps(config, len(data.train)))
  step, state = restored
  position = store.saved_position(step)
  if position.batch_size != config.batch_size:
    _LOG.info('batch size changed from %d to %d: continuing after example %d of the stream',
              position.batch_size, config.batch_size, position.examples_consumed)
  _LOG.info('resumed from %s at step %d', store.directory, step)
  return _Start(step, state, position.examples_consumed,
                packed_iterator if config.packing else train_iterator(position.examples_consumed),
                total_steps(config, len(data.train), position, step),
                store.saved_evals_since_best(step))


def _fresh_state(run: CompiledRun, initial_params: Any) -> step_lib.TrainState:
  """Step 0: loaded (or seeded random) parameters and a new optimizer state, laid out on the
  mesh; each piece created where it lives, loaded parameters passed as arguments."""
  config, shardings = run.config, run.state_shardings
  params = initial_params()
  if params is None:
    def init(key: jax.Array) -> Any:
      params = models.init_params(run.model, key)
      # New adapters alone: the base's random initialization is dead code to XLA.
      return lora.split(params)[1] if config.lora else params

    # The key an argument, not a constant: one compiled program for every seed.
    params = jax.jit(init, out_shardings=shardings.params,
                     compiler_options=models.INIT_COMPILER_OPTIONS)(jax.random.key(config.seed))
  return jax.jit(functools.partial(_state_of, run.optimizer), out_shardings=shardings)(params)


class _Reports:
  """Step reports (loss, throughput, MFU) every ``--log_every_n`` steps, fetched in one go."""

  def __init__(self, run: CompiledRun, sink: reporting.MetricsSink, bar: Any):
    config, model = run.config, run.model
    self._run, self._sink, self._bar = run, sink, bar
    self._step_flops = perf.model_flops_per_step(
        num_params=models.count_params(run.abstract_state.params),
        num_layers=model.config.num_layers, num_heads=model.config.num_heads,
        head_dim=model.config.head_dim, batch_size=config.batch_size,
        seq_len=config.max_seq_len,
        num_frozen_params=models.count_params(run.base_layout.abstract_base)
        if run.base_layout is not None else 0)
    self._peak = perf.peak_tflops(jax.devices()[0].device_kind, config.peak_tflops_per_device)
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.restart_clock()

  @property
  def model_flops_per_step(self) -> float:
    return self._step_flops

  def restart_clock(self) -> None:
    self._window_start, self.data_wait = time.perf_counter(), 0.0

  def add(self, step: int, metrics: dict[str, jax.Array], *,
          last: bool) -> divergence.Divergence | None:
    """Reports at a report step (or the last); returns the first non-finite step then."""
    self._pending.append((step, metrics))
    if step % self._run.config.log_every_n and not last:
      return None
    # The host synchronisation of the step loop: once per report (and before a save).
    steps = [s for s, _ in self._pending]
    fetched = jax.device_get([m for _, m in self._pending])
    self._pending = []
    elapsed = time.perf_counter() - self._window_start
    step_time = elapsed / len(fetched)
    report = {k: float(v) for k, v in fetched[-1].items()
              if k not in ('num_target_tokens', 'num_examples')}
    report['target_tokens_per_sec'] = sum(float(m['num_target_tokens']) for m in fetched) / elapsed
    report['step_time_sec'] = step_time
    report['data_wait_fraction'] = self.data_wait / elapsed
    report['model_tflops_per_sec_per_device'] = (
        self._step_flops / self._run.mesh.size / step_time / 1e12)
    if self._peak:
      report['mfu'] = report['model_tflops_per_sec_per_device'] / self._peak
    self._sink.write(step, report)
    self._bar.set_postfix(loss=f'{report["train_loss"]:.4f}',
                          tok_s=f'{report["target_tokens_per_sec"]:.0f}', refresh=False)
    self._bar.update(step - self._bar.n)
    self.restart_clock()
    return divergence.first_nonfinite(zip(steps, fetched))

  def first_nonfinite_pending(self) -> divergence.Divergence | None:
    """The first step since the last report whose loss or gradient norm is not finite."""
    watched = jax.device_get([{k: m[k] for k in divergence.WATCHED if k in m}
                              for _, m in self._pending])
    return divergence.first_nonfinite(zip((s for s, _ in self._pending), watched))


def _train_loop(run: CompiledRun, start: _Start, tokenizer: GemmaTokenizer, data: RunData,
                store: checkpoint.RunCheckpoints, sink: reporting.MetricsSink,
                is_main: bool, frozen: Any,
                base_fingerprint: dict[str, list[float]] | None) -> tuple[
                    step_lib.TrainState, float | None, bool, bool,
                    quality.QualityScores | None]:
  """Steps from ``start`` to ``start.num_steps``: reports, evaluations and saves.

  Returns the final state, the last evaluation loss, whether a stop signal ended the run,
  whether early stopping did, and the last translation scores.
  """
  config, mesh = run.config, run.mesh
  state, data_iterator = start.state, start.data_iterator
  process = pipeline.ProcessSlice(jax.process_index(), jax.process_count())
  eval_batches = pipeline.eval_dataset(
      data.eval, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
      global_batch_size=config.eval_batch_size, process=process)
  bar = reporting.progress_bar(initial=start.step, total=start.num_steps, enabled=is_main)
  reports = _Reports(run, sink, bar)
  if is_main:
    _LOG.info('%d steps of %d examples (%d accumulation steps); %.3g FLOPs per step in the '
              'model (6 × parameters × tokens + attention)', start.num_steps, config.batch_size,
              config.grad_accum_steps, reports.model_flops_per_step)
  # A resumed run's new best must beat its kept checkpoints' best, or its first evaluation
  # would always count as one and be saved.
  eval_loss, preempted = None, False
  best_step, best = store.best_saved() or (None, None)
  ranking = checkpoint.RANKINGS[config.best_metric]
  quality_scores: quality.QualityScores | None = None
  consumed, uncounted = start.examples_consumed, []
  patience, since_best = config.early_stopping_patience, start.evals_since_best
  # The same command again after an early stop: nothing more to train.
  stopped_early = 0 < patience <= since_best
  if stopped_early and is_main:
    _LOG.warning('not training: this run stopped early at step %d (%d evaluations without a '
                 'better %s); pass a larger --early_stopping_patience (or 0) to go on',
                 start.step, since_best, ranking.key)

  def stop_diverged(found: divergence.Divergence) -> NoReturn:
    store.wait_until_finished()  # the saves before it are good: let them complete
    raise divergence.TrainingDivergedError(found, store.latest_step())

  def save(step: int, *, metrics: dict[str, float] | None, force: bool) -> None:
    nonlocal consumed, uncounted
    if not (force or store.should_save(step)):
      return
    if found := reports.first_nonfinite_pending():
      stop_diverged(found)
    if uncounted:  # packed rows: the examples they held, counted on the devices
      consumed += int(sum(jax.device_get(uncounted)))
      uncounted = []
    store.save(step, state, data_iterator if config.packing else None, config,
               checkpoint.DataPosition(consumed, config.batch_size, jax.process_count()),
               metrics=metrics, force=True, base_fingerprint=base_fingerprint,
               evals_since_best=since_best)

  try:
    with _StopRequests() as stop:
      for step in range(start.step + 1, start.step if stopped_early else start.num_steps + 1):
        fetch_start = time.perf_counter()
        local = next(data_iterator)
        reports.data_wait += time.perf_counter() - fetch_start
        state, metrics = run.train_fn(state, sharding.global_batch(local, mesh), frozen)
        if config.packing:
          uncounted.append(metrics['num_examples'])
        else:
          consumed += config.batch_size
        last = step == start.num_steps
        if found := reports.add(step, metrics, last=last):
          stop_diverged(found)
        eval_metrics = None
        bleu_due = _bleu_due(config, step, last)
        if step % config.eval_every_n == 0 or last or bleu_due:
          eval_metrics = evaluate(run.eval_fn, state.params, eval_batches, mesh, frozen)
          eval_loss = eval_metrics['eval_loss']
          if found := divergence.first_nonfinite([(step, eval_metrics)], ['eval_loss']):
            sink.write(step, eval_metrics)
            stop_diverged(found)
          line = (f'step {step}: eval_loss {eval_loss:.4f}, '
                  f'eval_accuracy {eval_metrics["eval_accuracy"]:.4f}')
          if bleu_due:
            scores = _translation_quality(run, step_lib.model_params(state.params, frozen),
                                          tokenizer, data, sink, step)
            if scores is not None:
              quality_scores = scores
              eval_metrics.update(eval_bleu=scores.bleu, eval_chrf=scores.chrf)
              line += f', BLEU {scores.bleu:.2f}, chrF++ {scores.chrf:.2f}'
          sink.write(step, eval_metrics)
          if is_main:
            bar.write(line)
          reports.restart_clock()
        preempted = stop.signal_name is not None or (
            jax.process_count() > 1 and store.reached_preemption(step))
        # A new best evaluation is always saved, with its score, so that it is kept.
        value = eval_metrics.get(ranking.key) if eval_metrics else None
        new_best = value is not None and ranking.better(value, best)
        if new_best:
          best_step, best = step, value
        if value is not None:
          since_best = 0 if new_best else since_best + 1
        stopped_early = 0 < patience <= since_best
        save(step, metrics={ranking.key: value} if value is not None else None,
             force=last or preempted or new_best or stopped_early)
        if stopped_early:
          if is_main:
            _LOG.warning('stopping early at step %d: %d evaluations without a better %s than '
                         '%.4f (checkpoint %s, --step=best); saved a checkpoint', step,
                         since_best, ranking.key, best, best_step)
          break
        if preempted:
          _LOG.warning('stopping on %s: saved a checkpoint at step %d; run the same command '
                       'to resume', stop.signal_name or 'a preemption notice (SIGTERM or SIGINT)',
                       step)
          break
      store.wait_until_finished()
  finally:
    bar.close()
  return state, eval_loss, preempted, stopped_early, quality_scores


def _bleu_due(config: TrainConfig, step: int, last: bool) -> bool:
  """Whether ``step`` scores translations: every ``--bleu_every_n`` steps (0: with every
  evaluation) and at the end, unless ``--bleu_examples=0``."""
  if config.bleu_examples == 0:
    return False
  every = config.bleu_every_n or config.eval_every_n
  return last or step % every == 0


def _translation_quality(run: CompiledRun, params: Any, tokenizer: GemmaTokenizer,
                         data: RunData, sink: reporting.MetricsSink,
                         step: int) -> quality.QualityScores:
  """Corpus BLEU and chrF++ of ``--bleu_examples`` validation pairs, translated greedily on the
  training mesh (each process its rows); a few (source, reference, hypothesis) triples go to
  TensorBoard."""
  config = run.config
  pairs = data.eval_pairs if config.bleu_examples < 0 else data.eval_pairs[: config.bleu_examples]
  translator = Translator(run.model, params, tokenizer,
                          records.PromptFormat.from_template(config.prompt_template),
                          config.max_new_tokens, batch_size=config.eval_batch_size, mesh=run.mesh)
  outputs = translator([source for source, _ in pairs])
  sink.write_texts(step, {'eval_translations': '\n\n'.join(
      f'en: {source}  \nfr: {output}  \nreference: {reference}'
      for (source, reference), output in list(zip(pairs, outputs))[:5])})
  return quality.corpus_scores(outputs, [reference for _, reference in pairs])


def _sample_translations(run: CompiledRun, params: Any, tokenizer: GemmaTokenizer,
                         data: RunData) -> list[tuple[str, str, str]]:
  """(source, reference, output) of the first ``--num_translations`` validation pairs."""
  config = run.config
  prompt_format = records.PromptFormat.from_template(config.prompt_template)
  translator = Translator(run.model, params, tokenizer, prompt_format, config.max_new_tokens,
                          batch_size=config.num_translations, mesh=run.mesh)
  pairs = data.eval_pairs[: config.num_translations]
  outputs = translator([src for src, _ in pairs])
  return [(src, ref, out) for (src, ref), out in zip(pairs, outputs)]


def print_translations(result: TrainResult) -> None:
  for source, reference, output in result.translations:
    mark = '=' if output == reference else '≠'
    print(f'  en: {source}\n  fr: {output}\n  {mark}  {reference}\n')

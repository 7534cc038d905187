"""The training loop: data, model, sharded steps, evaluation, reports and checkpoints in order.

``train_and_evaluate(config)`` is the one entry point; the CLI is a thin shell over it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemma_mt import models
from gemma_mt.data import pipeline
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.records import TrainingInput
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.models import sources as model_sources
from gemma_mt.train import checkpoint
from gemma_mt.train import memory
from gemma_mt.train import optimizer as optimizer_lib
from gemma_mt.train import perf
from gemma_mt.train import reporting
from gemma_mt.train import sharding
from gemma_mt.train import step as step_lib
from gemma_mt.train.config import ConfigError, TrainConfig
from gemma_mt.train.mesh_spec import MeshSpec
from gemma_mt.translate import Translator

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run leaves: its final step, state and evaluation, and sample translations."""

  step: int
  state: step_lib.TrainState
  eval_loss: float | None
  translations: list[tuple[str, str, str]]  # (source, reference, model output)
  preempted: bool = False


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


def evaluate(eval_fn: Any, params: Any, batches: Any, mesh: Any) -> dict[str, float]:
  """Loss and token accuracy over the whole eval split, weighted by target tokens."""
  totals = np.zeros(3, dtype=np.float64)
  for local in batches:
    sums = eval_fn(params, sharding.global_batch(local, mesh))
    totals += np.asarray(jax.device_get(jnp.stack(sums)), dtype=np.float64)
  loss_sum, num_tokens, num_correct = totals
  return {'eval_loss': loss_sum / max(num_tokens, 1.0),
          'eval_accuracy': num_correct / max(num_tokens, 1.0)}


def _check_batch_sizes(config: TrainConfig, mesh: Any) -> None:
  shards = mesh.shape['data'] * mesh.shape['fsdp']
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
  """SIGTERM / SIGINT → finish the current step, save, stop (one process; several processes
  agree through JAX's preemption sync point instead)."""

  def __init__(self) -> None:
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> _StopRequests:
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum: int, _frame: Any) -> None:
    self.signal_name = signal.Signals(signum).name
    # A second Ctrl-C stops at once.
    signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.SIG_DFL))

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


def _check_workdir_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-probe-{os.getpid()}')
    with open(probe, 'w', encoding='utf-8') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not writable ({e.strerror}): choose a directory '
                      'you can write to') from None


@dataclasses.dataclass(frozen=True)
class CompiledRun:
  """What a run is before any weight is read: its model, layout and compiled steps.

  Attributes:
    config: the run's config with ``model`` resolved (from ``--ckpt`` if it was empty).
    run_model: the model's spec, tokenizer and weights' source.
    mesh: the device mesh.
    model: the flax module.
    optimizer: the Optax optimizer.
    schedule: the learning-rate schedule.
    abstract_state: ``ShapeDtypeStruct``s of the train state with their shardings.
    state_shardings: the shardings of the train state.
    abstract_batch: ``ShapeDtypeStruct``s of one global batch with its sharding.
    train_fn: the ahead-of-time compiled train step.
    eval_fn: the jitted eval step.
    memory_plan: bytes per device of one step.
  """

  config: TrainConfig
  run_model: model_sources.RunModel
  mesh: Any
  model: Any
  optimizer: Any
  schedule: Any
  abstract_state: step_lib.TrainState
  state_shardings: step_lib.TrainState
  abstract_batch: TrainingInput
  train_fn: Any
  eval_fn: Any
  memory_plan: memory.MemoryPlan


def compile_run(config: TrainConfig, run_model: model_sources.RunModel, num_steps: int, *,
                pad_id: int = 0, devices: list[jax.Device] | None = None) -> CompiledRun:
  """The mesh, the state's layout, the compiled steps and the memory plan of ``config``.

  Nothing is allocated on the devices and no weight is read.
  """
  config = dataclasses.replace(config, model=run_model.spec.name)
  mesh = sharding.make_mesh(MeshSpec.parse(config.mesh), devices)
  _check_batch_sizes(config, mesh)
  model = run_model.spec.transformer(jnp.dtype(config.param_dtype), config.remat)
  optimizer, schedule = optimizer_lib.make_optimizer(config, num_steps)
  abstract_state = jax.eval_shape(lambda: _state_of(
      optimizer, models.init_params(model, config.seed, config.max_seq_len)))
  state_shardings = sharding.state_shardings(mesh, abstract_state,
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
                        grad_accum_steps=config.grad_accum_steps, compute_dtype=compute_dtype),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  ).lower(abstract_state, abstract_batch).compile()
  eval_fn = jax.jit(
      functools.partial(step_lib.eval_step, model=model, pad_id=pad_id),
      in_shardings=(state_shardings.params, batch_sharding),
      out_shardings=sharding.replicated(mesh),
  )
  plan = memory.plan(train_fn, abstract_state, state_shardings, abstract_batch, mesh)
  return CompiledRun(config, run_model, mesh, model, optimizer, schedule, abstract_state,
                     state_shardings, abstract_batch, train_fn, eval_fn, plan)


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
  lines = [f'model {config.model}: {models.count_params(run.abstract_state.params):,} parameters '
           f'({config.param_dtype}, {params_bytes / 2**20:.2f} MiB per device); mesh '
           f'{dict(mesh.shape)} over {mesh.size} devices in {jax.process_count()} processes']
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


def _resumed_run_model(config: TrainConfig) -> model_sources.RunModel | None:
  """The model of a run that resumes: its saved model name and the tokenizer kept in the
  workdir, so that the weights' source is neither read nor needed again. None for a fresh run."""
  saved_tokenizer = os.path.join(config.workdir, WORKDIR_TOKENIZER)
  if not (_has_checkpoint(config.workdir) and os.path.isfile(saved_tokenizer)):
    return None
  store = checkpoint.RunCheckpoints(os.path.join(config.workdir, 'checkpoints'), keep=1 << 30,
                                    save_every_n=1 << 30)
  try:
    step = store.latest_step()
    saved = store.saved_config(step) if step is not None else None
  except (OSError, ValueError, KeyError):
    saved = None  # restore_latest decides what to do with an unreadable checkpoint
  finally:
    store.close()
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
  """
  config.validate()
  is_main = jax.process_index() == 0
  run_model = _resumed_run_model(config) or model_sources.resolve_run_model(
      config.model_name, config.ckpt, config.tokenizer)
  tokenizer = GemmaTokenizer(run_model.tokenizer_path)
  saved_tokenizer = os.path.join(config.workdir, WORKDIR_TOKENIZER)
  data = load_run_data(config, tokenizer)
  if total_steps(config, len(data.train)) <= 0:
    raise ConfigError(f'{len(data.train)} training examples make no full batch of '
                      f'--batch_size={config.batch_size}: lower it or raise --num_epochs')
  run = compile_run(config, run_model, total_steps(config, len(data.train)),
                    pad_id=tokenizer.pad_id, devices=devices)
  config = run.config
  if is_main:
    for line in _describe_run(run) + run.memory_plan.lines():
      _LOG.info('%s', line)
  if not run.memory_plan.fits():
    raise ConfigError(f'one training step needs {run.memory_plan.total / 2**30:.2f} GiB per '
                      f'device, more than the {run.memory_plan.device_bytes / 2**30:.2f} GiB of '
                      f'{run.memory_plan.device}: {run.memory_plan.advice(config, run.mesh)}')

  def initial_params() -> Any:
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
  _check_workdir_writable(config.workdir)
  if is_main and not os.path.isfile(saved_tokenizer):
    shutil.copyfile(tokenizer.path, saved_tokenizer + '.tmp')
    os.replace(saved_tokenizer + '.tmp', saved_tokenizer)
  store = checkpoint.RunCheckpoints(
      os.path.join(config.workdir, 'checkpoints'), keep=config.keep_checkpoints,
      save_every_n=config.save_every_n, save_every_minutes=config.save_every_minutes)
  try:
    return _train(run, lambda: loaded if loaded is not None else initial_params(), tokenizer,
                  data, store, is_main)
  finally:
    store.close()


def _train(run: CompiledRun, initial_params: Any, tokenizer: GemmaTokenizer, data: RunData,
           store: checkpoint.RunCheckpoints, is_main: bool) -> TrainResult:
  config, mesh, model = run.config, run.mesh, run.model
  abstract_state, state_shardings = run.abstract_state, run.state_shardings
  train_fn, eval_fn = run.train_fn, run.eval_fn

  def fresh_state() -> step_lib.TrainState:
    # Each piece created where it lives; loaded parameters are arguments, not constants.
    params = initial_params()
    if params is None:
      params = jax.jit(lambda: models.init_params(model, config.seed, config.max_seq_len),
                       out_shardings=state_shardings.params)()
    return jax.jit(functools.partial(_state_of, run.optimizer),
                   out_shardings=state_shardings)(params)

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
    saved = store.saved_position(step)
    if config.packing and (saved.batch_size, saved.process_count) != (
        config.batch_size, jax.process_count()):
      raise checkpoint.CheckpointError(
          f'{store.directory} was saved with --batch_size={saved.batch_size} on '
          f'{saved.process_count} processes; a --packing run resumes exactly only with the '
          'same batch size and number of processes')

  # Unpacked data resumes from the number of examples used (any batch size or number of
  # processes); packed data from each process's Grain iterator state.
  packed_iterator = train_iterator(0) if config.packing else None
  restored = store.restore_latest(config, abstract_state, packed_iterator, check_packed_layout)
  position = None
  if restored is None:
    state = fresh_state()
    start_step, consumed = 0, 0
  else:
    start_step, state = restored
    position = store.saved_position(start_step)
    consumed = position.examples_consumed
    if position.batch_size != config.batch_size:
      _LOG.info('batch size changed from %d to %d: continuing after example %d of the stream',
                position.batch_size, config.batch_size, consumed)
    _LOG.info('resumed from %s at step %d', store.directory, start_step)
    if is_main:
      _truncate_metrics(config.workdir, start_step)
  num_steps = total_steps(config, len(data.train), position, start_step)
  data_iterator = packed_iterator if config.packing else train_iterator(consumed)

  eval_batches = pipeline.eval_dataset(
      data.eval, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
      global_batch_size=config.eval_batch_size, process=process)
  step_flops = perf.model_flops_per_step(
      num_params=models.count_params(abstract_state.params), num_layers=model.config.num_layers,
      num_heads=model.config.num_heads, head_dim=model.config.head_dim,
      batch_size=config.batch_size, seq_len=config.max_seq_len)
  peak = perf.peak_tflops(jax.devices()[0].device_kind, config.peak_tflops_per_device)

  if is_main:
    _LOG.info('%d steps of %d examples (%d accumulation steps); %.3g model FLOPs per step',
              num_steps, config.batch_size, config.grad_accum_steps, step_flops)
  sink = reporting.MetricsSink(config.workdir, enabled=is_main)
  bar = reporting.progress_bar(initial=start_step, total=num_steps, enabled=is_main)
  eval_loss, best_eval_loss, preempted = None, None, False
  window_start, data_wait = time.perf_counter(), 0.0
  pending: list[dict[str, jax.Array]] = []

  def save(step: int, *, metrics: dict[str, float] | None = None, force: bool = False) -> None:
    store.save(step, state, data_iterator, config,
               checkpoint.DataPosition(consumed, config.batch_size, jax.process_count()),
               metrics=metrics, force=force)

  try:
    with _StopRequests() as stop:
      for step in range(start_step + 1, num_steps + 1):
        fetch_start = time.perf_counter()
        local = next(data_iterator)
        data_wait += time.perf_counter() - fetch_start
        state, metrics = train_fn(state, sharding.global_batch(local, mesh))
        consumed += config.batch_size
        pending.append(metrics)
        if step % config.log_every_n == 0 or step == num_steps:
          # The only host synchronisation of the step loop: once per report.
          fetched = jax.device_get(pending)
          pending = []
          elapsed = time.perf_counter() - window_start
          step_time = elapsed / len(fetched)
          report = {k: float(v) for k, v in fetched[-1].items() if k != 'num_target_tokens'}
          report['target_tokens_per_sec'] = sum(
              float(m['num_target_tokens']) for m in fetched) / elapsed
          report['step_time_sec'] = step_time
          report['data_wait_fraction'] = data_wait / elapsed
          report['model_tflops_per_sec_per_device'] = step_flops / mesh.size / step_time / 1e12
          if peak:
            report['mfu'] = report['model_tflops_per_sec_per_device'] / peak
          sink.write(step, report)
          bar.set_postfix(loss=f'{report["train_loss"]:.4f}',
                          tok_s=f'{report["target_tokens_per_sec"]:.0f}', refresh=False)
          bar.update(step - bar.n)
          window_start, data_wait = time.perf_counter(), 0.0
        eval_metrics = None
        if step % config.eval_every_n == 0 or step == num_steps:
          eval_metrics = evaluate(eval_fn, state.params, eval_batches, mesh)
          eval_loss = eval_metrics['eval_loss']
          sink.write(step, eval_metrics)
          if is_main:
            bar.write(f'step {step}: eval_loss {eval_loss:.4f}, '
                      f'eval_accuracy {eval_metrics["eval_accuracy"]:.4f}')
          window_start = time.perf_counter()
        preempted = stop.signal_name is not None or (
            jax.process_count() > 1 and store.reached_preemption(step))
        # A new best evaluation is always saved, with its loss, so that it is kept.
        new_best = eval_metrics is not None and (best_eval_loss is None or
                                                 eval_loss < best_eval_loss)
        if new_best:
          best_eval_loss = eval_loss
        save(step, metrics={'eval_loss': eval_loss} if eval_metrics else None,
             force=step == num_steps or preempted or new_best)
        if preempted:
          _LOG.warning('stopping on %s: saved a checkpoint at step %d; run the same command '
                       'to resume', stop.signal_name or 'preemption notice', step)
          break
      store.wait_until_finished()
  finally:
    bar.close()
    sink.close()

  translations = []
  if config.num_translations and not preempted and jax.process_count() > 1:
    _LOG.info('sample translations are skipped in multi-process runs')
  elif config.num_translations and not preempted:
    prompt_format = records.PromptFormat.from_template(config.prompt_template)
    translator = Translator(model, state.params, tokenizer, prompt_format, config.max_new_tokens)
    pairs = data.eval_pairs[: config.num_translations]
    outputs = translator([src for src, _ in pairs])
    translations = [(src, ref, out) for (src, ref), out in zip(pairs, outputs)]
  return TrainResult(step=int(jax.device_get(state.step)), state=state, eval_loss=eval_loss,
                     translations=translations, preempted=preempted)


def print_translations(result: TrainResult) -> None:
  for source, reference, output in result.translations:
    mark = '=' if output == reference else '≠'
    print(f'  en: {source}\n  fr: {output}\n  {mark}  {reference}\n')

"""The training loop: data, model, sharded steps, evaluation, reports and checkpoints in order.

``train_and_evaluate(config)`` is the one entry point; the CLI is a thin shell over it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemma_mt import models
from gemma_mt.data import pipeline
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.train import checkpoint
from gemma_mt.train import optimizer as optimizer_lib
from gemma_mt.train import reporting
from gemma_mt.train import sharding
from gemma_mt.train import step as step_lib
from gemma_mt.train.config import ConfigError, TrainConfig
from gemma_mt.translate import Translator

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run leaves: its final step, state and evaluation, and sample translations."""

  step: int
  state: step_lib.TrainState
  eval_loss: float | None
  translations: list[tuple[str, str, str]]  # (source, reference, model output)


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
  spec = sources.DatasetSpec.parse(config.dataset)
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


def total_steps(config: TrainConfig, num_train_examples: int) -> int:
  """``max_steps`` if set, else the full batches of ``num_epochs`` epochs."""
  if config.max_steps:
    return config.max_steps
  return (num_train_examples * config.num_epochs) // config.batch_size


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
  for name in ('batch_size', 'eval_batch_size'):
    if getattr(config, name) % shards:
      raise ConfigError(
          f'--{name}={getattr(config, name)} is not divisible by the {shards} batch shards '
          f'(data × fsdp) of the mesh: use a multiple of {shards}')


def train_and_evaluate(config: TrainConfig) -> TrainResult:
  """Trains ``config.model`` on ``config.dataset``, resuming from ``config.workdir`` if it can."""
  config.validate()
  is_main = jax.process_index() == 0
  spec = models.get_model_spec(config.model)
  tokenizer = GemmaTokenizer(spec.tokenizer_path)
  mesh = sharding.make_mesh()
  _check_batch_sizes(config, mesh)
  data = load_run_data(config, tokenizer)
  num_steps = total_steps(config, len(data.train))
  if num_steps <= 0:
    raise ConfigError(f'{len(data.train)} training examples make no full batch of '
                      f'--batch_size={config.batch_size}: lower it or raise --num_epochs')

  process = pipeline.ProcessSlice(jax.process_index(), jax.process_count())
  train_data = pipeline.train_dataset(
      data.train, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
      global_batch_size=config.batch_size, seed=config.seed,
      num_epochs=config.num_epochs or None, process=process)
  eval_batches = pipeline.eval_dataset(
      data.eval, max_seq_len=config.max_seq_len, pad_id=tokenizer.pad_id,
      global_batch_size=config.eval_batch_size, process=process)
  data_iterator = pipeline.make_iterator(train_data)

  param_dtype = jnp.dtype(config.param_dtype)
  model = spec.transformer(param_dtype)
  optimizer, schedule = optimizer_lib.make_optimizer(config, num_steps)

  def init_state() -> step_lib.TrainState:
    params = models.init_params(model, config.seed, config.max_seq_len)
    return step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  abstract_state = jax.eval_shape(init_state)
  state_shardings = sharding.state_sharding(mesh, abstract_state)
  init_fn = jax.jit(init_state, out_shardings=state_shardings)
  train_fn = jax.jit(
      functools.partial(step_lib.train_step, model=model, optimizer=optimizer,
                        pad_id=tokenizer.pad_id, learning_rate_fn=schedule),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
  eval_fn = jax.jit(
      functools.partial(step_lib.eval_step, model=model, pad_id=tokenizer.pad_id),
      in_shardings=(state_shardings.params, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
  )

  os.makedirs(config.workdir, exist_ok=True)
  store = checkpoint.RunCheckpoints(
      os.path.join(config.workdir, 'checkpoints'), keep=config.keep_checkpoints)
  start_step = store.latest_step()
  if start_step is None:
    state = init_fn()
    start_step = 0
  else:
    store.check_compatible(config, start_step)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        abstract_state, state_shardings)
    state = store.restore(start_step, abstract, data_iterator)
    _LOG.info('resumed from %s at step %d', store.directory, start_step)

  if is_main:
    _LOG.info('model %s: %s parameters; mesh %s; %d steps of %d examples',
                 config.model, f'{models.count_params(abstract_state.params):,}',
                 dict(mesh.shape), num_steps, config.batch_size)
  sink = reporting.MetricsSink(config.workdir, enabled=is_main)
  bar = reporting.progress_bar(initial=start_step, total=num_steps, enabled=is_main)
  eval_loss = None
  window_tokens, window_start, data_wait = 0.0, time.perf_counter(), 0.0
  pending: list[dict[str, jax.Array]] = []
  try:
    for step in range(start_step + 1, num_steps + 1):
      fetch_start = time.perf_counter()
      local = next(data_iterator)
      data_wait += time.perf_counter() - fetch_start
      state, metrics = train_fn(state, sharding.global_batch(local, mesh))
      pending.append(metrics)
      if step % config.log_every_n == 0 or step == num_steps:
        # The only host synchronisation of the step loop: once per report.
        fetched = jax.device_get(pending)
        pending = []
        elapsed = time.perf_counter() - window_start
        window_tokens = sum(float(m['num_target_tokens']) for m in fetched)
        report = {k: float(v) for k, v in fetched[-1].items() if k != 'num_target_tokens'}
        report['target_tokens_per_sec'] = window_tokens / elapsed
        report['step_time_sec'] = elapsed / len(fetched)
        report['data_wait_fraction'] = data_wait / elapsed
        sink.write(step, report)
        bar.set_postfix(loss=f'{report["train_loss"]:.4f}',
                        tok_s=f'{report["target_tokens_per_sec"]:.0f}', refresh=False)
        bar.update(step - bar.n)
        window_start, data_wait = time.perf_counter(), 0.0
      if step % config.eval_every_n == 0 or step == num_steps:
        eval_metrics = evaluate(eval_fn, state.params, eval_batches, mesh)
        eval_loss = eval_metrics['eval_loss']
        sink.write(step, eval_metrics)
        if is_main:
          bar.write(f'step {step}: eval_loss {eval_loss:.4f}, '
                    f'eval_accuracy {eval_metrics["eval_accuracy"]:.4f}')
        window_start = time.perf_counter()
      if step % config.save_every_n == 0 or step == num_steps:
        store.save(step, state, data_iterator, config, force=True)
    bar.update(num_steps - bar.n)
    store.wait_until_finished()
  finally:
    bar.close()
    sink.close()
    store.close()

  translations = []
  if config.num_translations:
    prompt_format = records.PromptFormat.from_template(config.prompt_template)
    translator = Translator(model, state.params, tokenizer, prompt_format, config.max_new_tokens)
    pairs = data.eval_pairs[: config.num_translations]
    outputs = translator([src for src, _ in pairs])
    translations = [(src, ref, out) for (src, ref), out in zip(pairs, outputs)]
  return TrainResult(step=num_steps, state=state, eval_loss=eval_loss,
                     translations=translations)


def print_translations(result: TrainResult) -> None:
  for source, reference, output in result.translations:
    mark = '=' if output == reference else '≠'
    print(f'  en: {source}\n  fr: {output}\n  {mark}  {reference}\n')

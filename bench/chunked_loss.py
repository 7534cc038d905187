"""Benchmark: the loss from full logits against ``--loss_chunk`` (chunks of positions, logits
recomputed in the backward pass), on the Gemma 3 270M shape (262,144-piece vocabulary).

    .venv/bin/python bench/chunked_loss.py             # memory at 32 × 256, time at 2 × 256 (CPU)
    .venv/bin/python bench/chunked_loss.py --quick     # seconds: the tiny model
    python bench/chunked_loss.py --time_batch=32       # on a GPU: time at 32 × 256 too

Memory is XLA's own account of the compiled training step (``memory_analysis()``: temporaries,
and arguments + outputs + temporaries − aliased donations = the step's peak), for the library's
jitted ``train_step`` (AdamW, float32) at ``--batch × --seq_len``; nothing runs. Step time is the
median of ``--steps`` real steps at ``--time_batch × --seq_len`` (a 32 × 256 step takes minutes
on 2 CPU cores), random weights and tokens, every position a target.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow


def compiled_step(spec, batch: int, seq_len: int, loss_chunk: int):
  import jax
  import jax.numpy as jnp
  import optax
  from gemma_mt import models
  from gemma_mt.data.records import TrainingInput
  from gemma_mt.train import step

  model = spec.transformer(jnp.float32)
  optimizer = optax.adamw(1e-5)
  abstract_state = jax.eval_shape(lambda: step.TrainState(
      step=jnp.zeros((), jnp.int32), params=(p := models.init_params(model, 0)),
      opt_state=optimizer.init(p)))
  tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
  abstract_batch = TrainingInput(tokens, jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_))
  train = jax.jit(functools.partial(step.train_step, model=model, optimizer=optimizer, pad_id=0,
                                    loss_chunk=loss_chunk), donate_argnums=0)
  return model, optimizer, train.lower(abstract_state, abstract_batch).compile()


def memory(compiled) -> tuple[float, float]:
  """(temporaries, peak) in GiB of a compiled step."""
  analysis = compiled.memory_analysis()
  peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return analysis.temp_size_in_bytes / 2**30, peak / 2**30


def step_time(spec, batch: int, seq_len: int, loss_chunk: int, steps: int,
              compiled=None) -> float:
  """Median seconds of a step (after one warm-up step); ``compiled``: `compiled_step`'s result
  for these shapes, if there is one already."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gemma_mt import models
  from gemma_mt.data.records import TrainingInput
  from gemma_mt.train import step

  model, optimizer, train = compiled or compiled_step(spec, batch, seq_len, loss_chunk)
  params = models.init_params(model, 0)
  state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, spec.transformer_config().num_embed, (batch, seq_len), dtype=np.int32)
  data = TrainingInput(jnp.asarray(tokens), jnp.ones((batch, seq_len), bool))
  times = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    state, metrics = train(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times[1:])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model, small shapes')
  parser.add_argument('--model', default='gemma3-270m')
  parser.add_argument('--batch', type=int, default=32, help='rows of the memory rows')
  parser.add_argument('--time_batch', type=int, default=2, help='rows of the timed steps')
  parser.add_argument('--seq_len', type=int, default=256)
  parser.add_argument('--chunks', default='0,8,32', help='--loss_chunk values (0: full logits)')
  parser.add_argument('--steps', type=int, default=3, help='timed steps per row')
  args = parser.parse_args()
  if args.quick:
    args.model, args.batch, args.time_batch, args.seq_len, args.steps = 'tiny', 8, 2, 64, 2
    args.chunks = '0,8'
  from gemma_mt import models

  try:
    spec = models.get_model_spec(args.model)
  except KeyError as e:
    parser.exit(2, f'error: --model: {e.args[0]}\n')
  import jax
  chunks = [int(c) for c in args.chunks.split(',')]
  rows = []
  for chunk in chunks:
    compiled = compiled_step(spec, args.batch, args.seq_len, chunk)
    temp, peak = memory(compiled[2])
    # One compilation serves both when the timed batch is the measured one (on a GPU).
    reuse = compiled if args.time_batch == args.batch else None
    del compiled
    rows.append((chunk, temp, peak, step_time(spec, args.time_batch, args.seq_len, chunk,
                                              args.steps, reuse)))
  base = rows[0] if chunks[0] == 0 else None
  vocab = spec.transformer_config().num_embed
  print(f'## Loss from full logits vs --loss_chunk: {args.model} (vocabulary {vocab:,}), '
        f'{jax.devices()[0].platform.upper()} ({jax.devices()[0].device_kind})\n')
  print(f'Memory of the compiled step at {args.batch} × {args.seq_len} (float32 logits would '
        f'take {args.batch * args.seq_len * vocab * 4 / 2**30:.2f} GiB); time at '
        f'{args.time_batch} × {args.seq_len}, median of {args.steps} steps.\n')
  print('| --loss_chunk | temporaries (GiB) | step peak (GiB) | temporaries / full | '
        'step time (s) | time / full |')
  print('|---|---|---|---|---|---|')
  for chunk, temp, peak, seconds in rows:
    ratio = lambda value, index: f'{value / base[index]:.2f}' if base else '—'
    print(f'| {chunk or "0 (full logits)"} | {temp:.3f} | {peak:.3f} | {ratio(temp, 1)} | '
          f'{seconds:.3f} | {ratio(seconds, 3)} |')


if __name__ == '__main__':
  main()

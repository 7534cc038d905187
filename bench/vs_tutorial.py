"""Benchmark: the reference tutorial's way of training against gemma_mt's, on the same MTNT pairs,
tokenizer, model shape and batch shape, measured in one run.

    .venv/bin/python bench/vs_tutorial.py            # the real Gemma 3 270M (GGUF), on CPU
    .venv/bin/python bench/vs_tutorial.py --quick    # seconds: the tiny model on the demo corpus

Rows:
  (a) the tutorial's way ("Fine-tune Gemma using JAX and Flax"): tf.data with the tokenizer
      called through ``tf.numpy_function``, every example padded to ``--max_seq_len``, batched
      and prefetched; a plain ``jax.jit`` step per batch on one device — with the loss over every
      target token of the batch (the tutorial's uses row 0 only) and AdamW, so that the work per
      step is the same as gemma_mt's;
  (b) gemma_mt with padding: ``train_and_evaluate`` (Grain input, the sharded step on 1 device);
  (c) gemma_mt with ``--packing`` (several examples per row, attention kept inside each).

Pairs: the offline MTNT file (``../shared/data/mtnt/valid.en-fr.tsv``, one pair per line),
plain prompt, examples longer than ``--max_seq_len`` dropped in every row alike. Step time is the
median over ``--steps`` steps after the first; tokens/s counts every position of the batch
(padding too); target tokens/s only the tokens that carry loss; data wait is the share of the
time spent waiting for the next batch; MFU is the model's FLOPs per step (6 × parameters ×
positions + attention) per second over the float32 matmul rate measured in this process.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow
MTNT_VALID = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'


def matmul_tflops() -> float:
  """Float32 matmul rate of this process's first device, TFLOP/s."""
  import jax
  import jax.numpy as jnp

  n = 2048
  a, b = jnp.ones((n, n), jnp.float32), jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  for _ in range(10):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def tutorial_row(pairs, tokenizer, model, params, args) -> dict:
  """(a): tf.data + tf.numpy_function tokenization, padded rows, a plain jitted step."""
  import jax
  import numpy as np
  import optax
  import tensorflow as tf
  from gemma_mt.data.records import PromptFormat
  from gemma_mt.data.records import TrainingInput
  from gemma_mt.train import step

  prompt_format = PromptFormat()
  length = args.max_seq_len

  def tokenize(source: bytes, target: bytes) -> tuple[np.ndarray, np.ndarray]:
    prompt = [tokenizer.bos_id, *tokenizer.encode(prompt_format.render(source.decode()))]
    answer = [*tokenizer.encode(target.decode()), tokenizer.eos_id]
    tokens = np.asarray(prompt + answer, np.int32)
    mask = np.asarray([False] * len(prompt) + [True] * len(answer))
    return tokens, mask

  def pad(tokens, mask):
    padding = length - tf.shape(tokens)[0]
    return tf.pad(tokens, [[0, padding]]), tf.pad(mask, [[0, padding]])

  dataset = (tf.data.Dataset.from_tensor_slices(([s for s, _ in pairs], [t for _, t in pairs]))
             .map(lambda s, t: tf.numpy_function(tokenize, [s, t], [tf.int32, tf.bool]))
             .filter(lambda tokens, _: tf.shape(tokens)[0] <= length)
             .map(pad).shuffle(1000, seed=0).repeat().batch(args.batch_size, drop_remainder=True)
             .prefetch(tf.data.AUTOTUNE))
  optimizer = optax.adamw(args.learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, tokens, mask):
    def loss_fn(params):
      loss, sums = step.mean_loss(params, TrainingInput(tokens, mask), model, tokenizer.pad_id)
      return loss, sums
    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, sums.num_tokens

  times, waits, targets = [], [], []
  batches = iter(dataset.as_numpy_iterator())
  for _ in range(args.steps + 1):
    start = time.perf_counter()
    tokens, mask = next(batches)
    waited = time.perf_counter() - start
    params, opt_state, num_tokens = train_step(params, opt_state, tokens, mask)
    targets.append(float(num_tokens))  # waits for the step, as the tutorial's loop does
    times.append(time.perf_counter() - start)
    waits.append(waited)
  step_time = statistics.median(times[1:])
  return {'step_time': step_time, 'target_tokens': statistics.mean(targets[1:]),
          'data_wait': sum(waits[1:]) / sum(times[1:])}


def gemma_mt_row(data_dir: str, args, packing: bool) -> dict:
  """(b), (c): train_and_evaluate, one device, step metrics from metrics.jsonl."""
  import jax
  from gemma_mt.train import loop
  from gemma_mt.train.config import TrainConfig

  workdir = tempfile.mkdtemp(prefix='vs_tutorial_')
  config = TrainConfig(
      workdir=workdir, model='tiny' if args.quick else '', ckpt=args.ckpt,
      dataset=f'tsv:{data_dir}/{{split}}.tsv', tsv_quoting='none', packing=packing,
      max_seq_len=args.max_seq_len, batch_size=args.batch_size, eval_batch_size=args.batch_size,
      learning_rate=args.learning_rate, lr_schedule='constant', warmup_steps=0,
      max_steps=args.steps + 1, log_every_n=1, eval_every_n=10**6, save_every_n=10**6,
      bleu_examples=0, num_translations=0)
  loop.train_and_evaluate(config, devices=jax.devices()[:1])
  metrics = [json.loads(line) for line in
             pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]
  steps = [m for m in metrics if 'step_time_sec' in m][1:]
  step_time = statistics.median(m['step_time_sec'] for m in steps)
  return {'step_time': step_time,
          'target_tokens': statistics.mean(m['target_tokens_per_sec'] * m['step_time_sec']
                                           for m in steps),
          'data_wait': statistics.mean(m['data_wait_fraction'] for m in steps)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model on the demo corpus')
  parser.add_argument('--ckpt', default='gguf:gemma3-270m', help='the model (its weights)')
  parser.add_argument('--max_seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=4, help='timed steps per row')
  parser.add_argument('--learning_rate', type=float, default=1e-5)
  args = parser.parse_args()
  if args.quick:
    args.ckpt, args.max_seq_len, args.batch_size, args.steps = '', 48, 16, 3

  import jax.numpy as jnp
  from gemma_mt import inference, models
  from gemma_mt.data import sources
  from gemma_mt.data.tokenizer import GemmaTokenizer
  from gemma_mt.models import sources as model_sources
  from gemma_mt.train import perf

  if args.quick:
    spec = models.get_model_spec('tiny')
    pairs = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'train')[0]
    tokenizer_path = spec.tokenizer_path
    model = spec.transformer(jnp.float32)
    params = models.init_params(model, 0)
  else:
    lines = MTNT_VALID.read_text(encoding='utf-8').splitlines()
    pairs = sources.parse_mtnt_tsv(lines, quoting='none')[0]
    loaded = inference.from_source(args.ckpt)
    spec = model_sources.resolve_run_model('', args.ckpt, '').spec
    model, params, tokenizer_path = loaded.model, loaded.params, loaded.tokenizer.path
  tokenizer = GemmaTokenizer(tokenizer_path)
  data_dir = tempfile.mkdtemp(prefix='vs_tutorial_data_')
  for split, rows in (('train', pairs), ('valid', pairs[:args.batch_size])):
    pathlib.Path(data_dir, f'{split}.tsv').write_text(
        ''.join(f'{i}\t{s}\t{t}\n' for i, (s, t) in enumerate(rows)), encoding='utf-8')

  shape = spec.transformer_config()
  flops = perf.model_flops_per_step(
      num_params=models.count_params(params), num_layers=shape.num_layers,
      num_heads=shape.num_heads, head_dim=shape.head_dim, batch_size=args.batch_size,
      seq_len=args.max_seq_len)
  peak = matmul_tflops()
  rows = [('(a) tutorial: tf.data, padded, plain jit', tutorial_row(pairs, tokenizer, model,
                                                                    params, args))]
  del params
  for label, packing in (('(b) gemma_mt, padded', False), ('(c) gemma_mt, --packing', True)):
    rows.append((label, gemma_mt_row(data_dir, args, packing)))

  positions = args.batch_size * args.max_seq_len
  base = rows[0][1]['target_tokens'] / rows[0][1]['step_time']
  print(f'## The tutorial\'s way vs gemma_mt: {spec.name}, '
        f'{len(pairs)} {"demo" if args.quick else "MTNT"} pairs, batch {args.batch_size} × '
        f'{args.max_seq_len}, 1 CPU device, matmul {peak:.3f} TFLOP/s\n')
  print('| row | step (s) | tokens/s | target tokens/s | data wait | MFU | '
        'target tokens/s ÷ (a) |')
  print('|---|---|---|---|---|---|---|')
  for label, r in rows:
    target_rate = r['target_tokens'] / r['step_time']
    print(f'| {label} | {r["step_time"]:.3f} | {positions / r["step_time"]:.0f} | '
          f'{target_rate:.0f} | {100 * r["data_wait"]:.1f}% | '
          f'{flops / r["step_time"] / 1e12 / peak:.2f} | {target_rate / base:.2f} |')


if __name__ == '__main__':
  main()

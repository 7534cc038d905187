"""Benchmark: the Grain pipeline against a tf.data pipeline written the way the tutorial writes it.

    .venv/bin/python bench/data_pipeline.py [--copies=37 --max_seq_len=256 --batch_size=16]

Both start from the same in-memory pairs (the shared MTNT validation split, replicated to ~30k
examples), use the same sentencepiece model and prompt, and produce the same records (checked
row by row, order aside) for one epoch of full batches. The tf.data pipeline tokenizes with
`tf.numpy_function` one example at a time, as the tutorial does; gemma_mt tokenizes in bulk once,
then shuffles and batches indices with Grain.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow

import numpy as np  # pylint: disable=wrong-import-position

from gemma_mt import models  # pylint: disable=wrong-import-position
from gemma_mt.data import pipeline, records, sources  # pylint: disable=wrong-import-position
from gemma_mt.data.tokenizer import GemmaTokenizer  # pylint: disable=wrong-import-position

MTNT = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'


def grain_epoch(pairs, tokenizer, max_seq_len, batch_size):
  examples, _ = pipeline.encode_examples(pairs, tokenizer, records.PromptFormat(), max_seq_len)
  ds = pipeline.train_dataset(examples, max_seq_len=max_seq_len, pad_id=tokenizer.pad_id,
                              global_batch_size=batch_size, seed=0, num_epochs=1)
  return [b.input_tokens for b in pipeline.make_iterator(ds)]


def tfdata_epoch(pairs, tokenizer, max_seq_len, batch_size):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  prompt = records.PromptFormat()

  def tokenize_source(text):
    return tokenizer.encode(text.decode('utf-8'), prompt.prefix, prompt.suffix, add_bos=True)

  def tokenize_target(text):
    return tokenizer.encode(text.decode('utf-8'), add_eos=True)

  def to_training_input(src_tokens, dst_tokens):
    tokens = tf.concat([src_tokens, dst_tokens], axis=0)
    mask = tf.concat([tf.zeros_like(src_tokens, tf.bool), tf.ones_like(dst_tokens, tf.bool)], 0)
    length = tf.shape(tokens)[0]
    pad = tf.maximum(max_seq_len - length, 0)
    return {'input_tokens': tf.pad(tokens, [[0, pad]], constant_values=tokenizer.pad_id),
            'target_mask': tf.pad(mask, [[0, pad]]), 'length': length}

  ds = tf.data.Dataset.from_tensor_slices(
      {'src': [s for s, _ in pairs], 'dst': [d for _, d in pairs]})
  ds = ds.map(lambda x: (tf.numpy_function(tokenize_source, [x['src']], tf.int32),
                         tf.numpy_function(tokenize_target, [x['dst']], tf.int32)))
  ds = ds.map(to_training_input)
  ds = ds.filter(lambda x: x['length'] <= max_seq_len)
  ds = ds.map(lambda x: {'input_tokens': tf.ensure_shape(x['input_tokens'], [max_seq_len]),
                         'target_mask': tf.ensure_shape(x['target_mask'], [max_seq_len])})
  ds = ds.shuffle(buffer_size=1000, seed=0).batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return [b['input_tokens'] for b in ds.as_numpy_iterator()]


def _rows(batches):
  return [bytes(row) for row in np.concatenate(batches)]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--copies', type=int, default=37, help='811 examples × copies')
  parser.add_argument('--max_seq_len', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--quick', action='store_true',
                      help='the bundled demo validation split, once: seconds')
  args = parser.parse_args()
  if args.quick:
    args.copies, args.repeats = 1, 1
    pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  elif not MTNT.is_file():
    print(f'error: {MTNT} not found: this benchmark reads the shared MTNT validation split '
          '(--quick uses the bundled demo split)', file=sys.stderr)
    sys.exit(2)
  else:
    pairs, _ = sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{MTNT}'), 'valid')
  pairs = pairs * args.copies
  tokenizer = GemmaTokenizer(models.DEMO_TOKENIZER)
  import tensorflow  # pylint: disable=import-outside-toplevel,unused-import  # import time apart

  results = {}
  for name, epoch in (('grain (gemma_mt)', grain_epoch), ('tf.data (tutorial)', tfdata_epoch)):
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      batches = epoch(pairs, tokenizer, args.max_seq_len, args.batch_size)
      times.append(time.perf_counter() - start)
    results[name] = (min(times), batches)
  # Same records: each epoch is a sub-multiset of all kept records (only the shuffled remainder
  # is dropped), of the same size.
  examples, _ = pipeline.encode_examples(pairs, tokenizer, records.PromptFormat(),
                                         args.max_seq_len)
  everything = collections.Counter(bytes(records.make_training_input(
      e.prompt_ids, e.target_ids, args.max_seq_len, tokenizer.pad_id).input_tokens)
      for e in examples)
  epochs = [collections.Counter(_rows(batches)) for _, batches in results.values()]
  same = all(not (epoch - everything) for epoch in epochs) and len(
      {sum(epoch.values()) for epoch in epochs}) == 1
  base = results['tf.data (tutorial)'][0]
  print(f'{len(pairs)} examples ({"demo" if args.quick else "shared MTNT"} valid × '
        f'{args.copies}), max_seq_len '
        f'{args.max_seq_len}, batch {args.batch_size}, best of {args.repeats}; '
        f'same records (each epoch a same-size sub-multiset of the kept ones): {same}')
  print()
  print('| pipeline | one epoch (s) | examples/s | speed-up |')
  print('|---|---|---|---|')
  for name, (seconds, batches) in results.items():
    rows = sum(len(b) for b in batches)
    print(f'| {name} | {seconds:.2f} | {rows / seconds:.0f} | {base / seconds:.2f}× |')


if __name__ == '__main__':
  main()

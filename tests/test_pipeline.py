import collections

import numpy as np
import pytest

from gemma_mt.data import pipeline
from gemma_mt.data import records


def _examples(n: int, length: int = 3) -> list[pipeline.EncodedExample]:
  """Example i has prompt [2, 100 + i] and target [200 + i, 1], easy to recognise in a batch."""
  return [pipeline.EncodedExample(np.array([2, 100 + i], np.int32),
                                  np.array([200 + i] * (length - 2) + [1], np.int32))
          for i in range(n)]


def _ids(batch: records.TrainingInput) -> list[int]:
  """The example index of each row (-1 for a padding row)."""
  return [int(row[1]) - 100 if row[0] == 2 else -1 for row in batch.input_tokens]


def test_encode_examples_filters_and_counts(demo_tokenizer):
  pairs = [('The cat.', 'Le chat.'), ('', 'Vide.'), ('Empty target.', '  '),
           ('The dog ' * 20, 'Le chien ' * 20)]
  prompt_format = records.PromptFormat()
  kept, stats = pipeline.encode_examples(pairs, demo_tokenizer, prompt_format, 32)
  assert (stats.examples, stats.kept, stats.dropped_empty, stats.dropped_too_long) == (4, 1, 2, 1)
  assert kept[0].prompt_ids[0] == demo_tokenizer.bos_id
  assert kept[0].target_ids[-1] == demo_tokenizer.eos_id
  # The long source still fits alone; truncation cuts its target, with no end token after it.
  pairs = [('The dog.', 'Le chien ' * 20)]
  kept, stats = pipeline.encode_examples(pairs, demo_tokenizer, prompt_format, 32, 'truncate')
  assert stats.truncated == 1 and len(kept[0].prompt_ids) + len(kept[0].target_ids) == 32
  assert demo_tokenizer.eos_id not in kept[0].target_ids
  # Gemma's dialog turns: targets end with <end_of_turn>, as instruction-tuned Gemma's turns do.
  chat = records.PromptFormat.from_template('gemma_chat')
  kept, _ = pipeline.encode_examples([('The cat.', 'Le chat.')], demo_tokenizer, chat, 48)
  end_of_turn = demo_tokenizer.piece_id('<end_of_turn>')
  assert end_of_turn is not None and kept[0].target_ids[-1] == end_of_turn
  assert demo_tokenizer.eos_id not in kept[0].target_ids


def test_each_epoch_is_a_new_permutation_without_remainder():
  examples = _examples(50)
  ds = pipeline.train_dataset(examples, max_seq_len=8, pad_id=0, global_batch_size=8, seed=3,
                              num_epochs=2)
  batches = [_ids(b) for b in ds]
  assert len(batches) == 100 // 8
  assert all(len(b) == 8 for b in batches)
  order = [i for b in batches for i in b]
  first, second = order[:50], order[50:]
  assert sorted(first) == list(range(50))  # every example once in the first epoch
  assert first != second and len(set(second)) == len(second)  # reshuffled, no repeats
  again = [_ids(b) for b in pipeline.train_dataset(
      examples, max_seq_len=8, pad_id=0, global_batch_size=8, seed=3, num_epochs=2)]
  assert again == batches
  other = [_ids(b) for b in pipeline.train_dataset(
      examples, max_seq_len=8, pad_id=0, global_batch_size=8, seed=4, num_epochs=2)]
  assert other != batches


def test_process_slices_make_up_the_global_batch():
  examples = _examples(64)
  kwargs = dict(max_seq_len=8, pad_id=0, global_batch_size=16, seed=0, num_epochs=1)
  whole = [b for b in pipeline.train_dataset(examples, **kwargs)]
  parts = [[b for b in pipeline.train_dataset(
      examples, process=pipeline.ProcessSlice(i, 4), **kwargs)] for i in range(4)]
  for step, batch in enumerate(whole):
    joined = np.concatenate([parts[i][step].input_tokens for i in range(4)])
    np.testing.assert_array_equal(joined, batch.input_tokens)
    assert parts[0][step].input_tokens.shape == (4, 8)
  with pytest.raises(pipeline.PipelineError, match='multiple of the 3 processes'):
    pipeline.train_dataset(examples, process=pipeline.ProcessSlice(0, 3), **kwargs)


def test_eval_keeps_every_example_in_order_and_pads_the_last_batch():
  examples = _examples(21)
  batches = list(pipeline.eval_dataset(examples, max_seq_len=8, pad_id=0, global_batch_size=8))
  ids = [i for b in batches for i in _ids(b)]
  assert ids == list(range(21)) + [-1, -1, -1]
  last = batches[-1]
  assert not last.target_mask[5:].any() and last.target_mask[:5].any()


def test_too_few_examples_for_one_batch():
  with pytest.raises(pipeline.PipelineError, match='fewer than one global batch'):
    pipeline.train_dataset(_examples(3), max_seq_len=8, pad_id=0, global_batch_size=8, seed=0,
                           num_epochs=None)


def test_iterator_state_restores_the_exact_next_batches():
  ds = pipeline.train_dataset(_examples(40), max_seq_len=8, pad_id=0, global_batch_size=4,
                              seed=1, num_epochs=None)
  it = pipeline.make_iterator(ds)
  for _ in range(13):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [_ids(next(it)) for _ in range(7)]
  fresh = pipeline.make_iterator(ds)
  fresh.set_state(state)
  assert [_ids(next(fresh)) for _ in range(7)] == expected
  counts = collections.Counter(i for b in expected for i in b)
  assert max(counts.values()) == 1


def test_packing_fills_rows_and_keeps_every_example_once(demo_tokenizer):
  from gemma_mt.data import sources
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  examples, _ = pipeline.encode_examples(pairs, demo_tokenizer, records.PromptFormat(), 48)
  ds = pipeline.packed_train_dataset(examples, max_seq_len=96, pad_id=0, global_batch_size=8,
                                     seed=0, num_epochs=1)
  batches = list(ds)
  tokens = sum(int((b.segment_ids > 0).sum()) for b in batches)
  total = sum(b.input_tokens.size for b in batches)
  padded_fill = sum(len(e.prompt_ids) + len(e.target_ids) for e in examples) / (96 * len(examples))
  assert tokens / total > 0.85 and tokens / total > 3 * padded_fill
  seen = []
  for batch in batches:
    assert batch.input_tokens.shape == (8, 96) and batch.positions.shape == (8, 96)
    for row in range(8):
      for segment in range(1, batch.segment_ids[row].max() + 1):
        where = batch.segment_ids[row] == segment
        np.testing.assert_array_equal(batch.positions[row][where], np.arange(where.sum()))
        seen.append(tuple(batch.input_tokens[row][where]))
      assert not batch.target_mask[row][batch.segment_ids[row] == 0].any()
  expected = [tuple(np.concatenate([e.prompt_ids, e.target_ids])) for e in examples]
  # The last partial set of rows is dropped (as with padded batches); nothing else is lost.
  assert len(set(seen)) == len(seen) and set(seen) <= set(expected)
  assert len(seen) > 0.95 * len(expected)


def test_packed_iterator_state_restores_the_exact_next_batches():
  ds = pipeline.packed_train_dataset(_examples(60, 5), max_seq_len=16, pad_id=0,
                                     global_batch_size=4, seed=0, num_epochs=None)
  it = pipeline.make_iterator(ds)
  for _ in range(9):
    next(it)
  state = it.get_state()
  expected = [next(it).input_tokens for _ in range(5)]
  fresh = pipeline.make_iterator(ds)
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh).input_tokens, want)

"""The Grain pipeline: pairs → token ids → filtered → shuffled, batched, per-process records.

Examples are tokenized once up front (so that filtering is exact and counted), then every order
and batch is a ``grain.MapDataset`` over example indices. An index pipeline has an exact,
checkpointable position, and each process turns only its own rows of the global batch into
``TrainingInput`` records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from gemma_mt import errors
from gemma_mt.data import records
from gemma_mt.data.tokenizer import GemmaTokenizer

@dataclasses.dataclass(frozen=True)
class EncodedExample:
  """One pair as token ids: ``prompt_ids[p]`` (BOS first) and ``target_ids[t]`` (EOS or
  ``<end_of_turn>`` last, unless truncated)."""

  prompt_ids: np.ndarray
  target_ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class FilterStats:
  """How many examples a split had, kept, and dropped for each reason."""

  examples: int
  kept: int
  dropped_too_long: int
  dropped_empty: int
  truncated: int

  def summary(self) -> str:
    return (f'{self.kept}/{self.examples} kept, {self.dropped_too_long} too long, '
            f'{self.dropped_empty} empty, {self.truncated} truncated')


class PipelineError(errors.UserError):
  """A split that cannot feed training (e.g. nothing fits ``max_seq_len``)."""


def encode_examples(
    pairs: Sequence[tuple[str, str]],
    tokenizer: GemmaTokenizer,
    prompt_format: records.PromptFormat,
    max_seq_len: int,
    too_long: str = 'drop',
) -> tuple[list[EncodedExample], FilterStats]:
  """Tokenizes pairs and applies the length rule; returns kept examples in order and counts.

  Targets end with ``prompt_format``'s end token (EOS, or ``<end_of_turn>`` for Gemma's dialog
  turns). ``too_long='drop'`` drops an example whose prompt + target exceeds ``max_seq_len`` (the
  tutorial's rule); ``'truncate'`` cuts the target when the prompt fits, without an end token
  (the sentence did not end there). Empty sources or targets are always dropped.
  """
  if too_long not in records.TOO_LONG_POLICIES:
    raise ValueError(f'too_long={too_long!r}: use one of {records.TOO_LONG_POLICIES}')
  non_empty = [(s, t) for s, t in pairs if s.strip() and t.strip()]
  prompts = tokenizer.encode_batch(
      [s for s, _ in non_empty], prompt_format.prefix, prompt_format.suffix, add_bos=True)
  end = np.asarray([prompt_format.end_of_target_id(tokenizer)], dtype=np.int32)
  targets = tokenizer.encode_batch([t for _, t in non_empty])
  kept, too_long_count, truncated = [], 0, 0
  for prompt_ids, text_ids in zip(prompts, targets):
    room = max_seq_len - len(prompt_ids)
    if len(text_ids) + 1 <= room:
      kept.append(EncodedExample(prompt_ids, np.concatenate([text_ids, end])))
    elif too_long == 'truncate' and room >= 1:
      kept.append(EncodedExample(prompt_ids, text_ids[:room]))
      truncated += 1
    else:
      too_long_count += 1
  stats = FilterStats(
      examples=len(pairs),
      kept=len(kept),
      dropped_too_long=too_long_count,
      dropped_empty=len(pairs) - len(non_empty),
      truncated=truncated,
  )
  return kept, stats


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
  """Which rows of each global batch this process builds: ``[index * rows, (index + 1) * rows)``."""

  index: int = 0
  count: int = 1

  def rows(self, global_batch_size: int) -> slice:
    local = global_batch_size // self.count
    return slice(self.index * local, (self.index + 1) * local)


class BuildLocalBatch(grain.transforms.Map):
  """``int[global_batch]`` example indices (-1 = padding row) → this process's TrainingInput."""

  def __init__(
      self,
      examples: Sequence[EncodedExample],
      max_seq_len: int,
      pad_id: int,
      global_batch_size: int,
      process: ProcessSlice,
  ):
    self._examples = examples
    self._max_seq_len = max_seq_len
    self._pad_id = pad_id
    self._global_batch_size = global_batch_size
    self._process = process

  def map(self, indices: np.ndarray) -> records.TrainingInput:
    padded = np.full((self._global_batch_size,), -1, dtype=np.int64)
    padded[: len(indices)] = indices
    rows = []
    for index in padded[self._process.rows(self._global_batch_size)]:
      if index < 0:
        rows.append(records.empty_training_input(self._max_seq_len, self._pad_id))
      else:
        example = self._examples[index]
        rows.append(records.make_training_input(
            example.prompt_ids, example.target_ids, self._max_seq_len, self._pad_id))
    return records.TrainingInput(
        input_tokens=np.stack([r.input_tokens for r in rows]),
        target_mask=np.stack([r.target_mask for r in rows]),
    )


def _check_batch(global_batch_size: int, process: ProcessSlice) -> None:
  if global_batch_size <= 0 or global_batch_size % process.count:
    raise PipelineError(
        f'global batch size {global_batch_size} must be a positive multiple of the '
        f'{process.count} processes')


def train_dataset(
    examples: Sequence[EncodedExample],
    *,
    max_seq_len: int,
    pad_id: int,
    global_batch_size: int,
    seed: int,
    num_epochs: int | None,
    process: ProcessSlice = ProcessSlice(),
    start_example: int = 0,
) -> grain.MapDataset:
  """Training batches: a seeded shuffle reshuffled every epoch, remainder dropped.

  ``num_epochs=None`` repeats forever. Element ``i`` is global batch ``i``; this process's rows
  of it as ``TrainingInput(int32[b, L], bool[b, L])`` with ``b = global_batch_size / count``.
  ``start_example`` skips that many examples of the shuffled stream: a run resumed with another
  batch size or number of processes continues with the next example, none repeated or skipped.
  """
  _check_batch(global_batch_size, process)
  if len(examples) < global_batch_size:
    raise PipelineError(
        f'only {len(examples)} training examples, fewer than one global batch of '
        f'{global_batch_size}: lower --batch_size or raise --max_seq_len')
  stream = grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(num_epochs)
  if start_example:
    stream = stream[start_example:]
  return (
      stream
      .batch(global_batch_size, drop_remainder=True)
      .map(BuildLocalBatch(examples, max_seq_len, pad_id, global_batch_size, process))
  )


def eval_dataset(
    examples: Sequence[EncodedExample],
    *,
    max_seq_len: int,
    pad_id: int,
    global_batch_size: int,
    process: ProcessSlice = ProcessSlice(),
) -> grain.MapDataset:
  """Evaluation batches in file order; the last one is filled with rows that weigh nothing."""
  _check_batch(global_batch_size, process)
  return (
      grain.MapDataset.range(len(examples))
      .batch(global_batch_size, drop_remainder=False)
      .map(BuildLocalBatch(examples, max_seq_len, pad_id, global_batch_size, process))
  )


def _unpadded_record(example: EncodedExample) -> dict[str, np.ndarray]:
  tokens = np.concatenate([example.prompt_ids, example.target_ids])
  target_mask = np.zeros(len(tokens), dtype=bool)
  target_mask[len(example.prompt_ids):] = True
  return {'input_tokens': tokens, 'target_mask': target_mask}


def _packed_training_input(packed: dict[str, np.ndarray]) -> records.TrainingInput:
  return records.TrainingInput(
      input_tokens=packed['input_tokens'],
      target_mask=packed['target_mask'],
      segment_ids=packed['input_tokens_segment_ids'],
      positions=packed['input_tokens_positions'],
  )


def packed_train_dataset(
    examples: Sequence[EncodedExample],
    *,
    max_seq_len: int,
    pad_id: int,
    global_batch_size: int,
    seed: int,
    num_epochs: int | None,
    process: ProcessSlice = ProcessSlice(),
) -> grain.IterDataset:
  """Training batches of packed rows: several examples per row, first fit up to ``max_seq_len``.

  The shuffled stream is dealt out to the processes (example i to process i mod count); each
  packs its share into ``global_batch_size / count`` rows at a time. Rows are
  ``TrainingInput`` with ``segment_ids`` and per-example ``positions``; padding has segment 0.
  """
  _check_batch(global_batch_size, process)
  if pad_id != 0:
    raise PipelineError(f'packing pads with 0 but the tokenizer pads with {pad_id}')
  local_rows = global_batch_size // process.count
  stream = (
      grain.MapDataset.range(len(examples))
      .shuffle(seed=seed)
      .repeat(num_epochs)[process.index::process.count]
      .map(lambda i: _unpadded_record(examples[i]))
      .to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
  )
  packed = grain.experimental.FirstFitPackIterDataset(
      stream,
      length_struct={'input_tokens': max_seq_len, 'target_mask': max_seq_len},
      num_packing_bins=local_rows,
      shuffle_bins=False,
  )
  return packed.map(_packed_training_input).batch(local_rows, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset | grain.IterDataset,
                  prefetch: int = 8) -> grain.DatasetIterator:
  """A checkpointable iterator (``get_state``/``set_state``) that builds batches on threads."""
  if isinstance(dataset, grain.MapDataset):
    dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
  return iter(dataset)

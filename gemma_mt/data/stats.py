"""What a split holds once tokenized: counts, drops, length percentiles, padding and packing fill.

The command line is ``python -m gemma_mt.stats`` (it picks the tokenizer of a model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemma_mt.data import pipeline
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.tokenizer import GemmaTokenizer

PERCENTILES = (50, 90, 95, 99, 100)


def split_stats(spec: sources.DatasetSpec, split: str, tokenizer: GemmaTokenizer, *,
                max_seq_len: int, prompt_format: records.PromptFormat = records.PromptFormat(),
                too_long: str = 'drop', batch_size: int = 32) -> dict[str, Any]:
  """The numbers ``python -m gemma_mt.stats`` prints, as one dict."""
  pairs, source_stats = sources.read_pairs(spec, split)
  everything, _ = pipeline.encode_examples(pairs, tokenizer, prompt_format, 1 << 30)
  kept, filter_stats = pipeline.encode_examples(pairs, tokenizer, prompt_format, max_seq_len,
                                                too_long)
  prompt_lengths = np.array([len(e.prompt_ids) for e in everything])
  target_lengths = np.array([len(e.target_ids) for e in everything])
  kept_tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in kept)
  packed_fill = None
  if len(kept) >= batch_size:
    packed = pipeline.packed_train_dataset(kept, max_seq_len=max_seq_len, pad_id=0,
                                           global_batch_size=batch_size, seed=0, num_epochs=1)
    filled = total = 0
    for batch in packed:
      filled += int((batch.segment_ids > 0).sum())
      total += batch.segment_ids.size
    packed_fill = filled / total if total else None
  return {
      'dataset': sources_name(spec),
      'split': split,
      'max_seq_len': max_seq_len,
      'examples': source_stats.rows,
      'dropped_malformed': source_stats.malformed,
      'dropped_empty': filter_stats.dropped_empty,
      'dropped_too_long': filter_stats.dropped_too_long,
      'truncated': filter_stats.truncated,
      'kept': filter_stats.kept,
      'prompt_tokens_percentiles': _percentiles(prompt_lengths),
      'target_tokens_percentiles': _percentiles(target_lengths),
      'padding_fraction': 1 - kept_tokens / (max_seq_len * len(kept)) if kept else None,
      'packed_fill_rate': packed_fill,
  }


def sources_name(spec: sources.DatasetSpec) -> str:
  return spec.kind if spec.kind == 'demo' else f'{spec.kind}:{spec.path}'


def _percentiles(lengths: np.ndarray) -> dict[str, int]:
  if not len(lengths):
    return {}
  return {f'p{p}': int(np.percentile(lengths, p, method='higher')) for p in PERCENTILES}


def format_table(stats: dict[str, Any]) -> str:
  lines = [f'{stats["dataset"]} split {stats["split"]}, max_seq_len {stats["max_seq_len"]}']
  for key in ('examples', 'kept', 'dropped_too_long', 'dropped_empty', 'dropped_malformed',
              'truncated'):
    lines.append(f'  {key:<20} {stats[key]}')
  for key in ('prompt_tokens_percentiles', 'target_tokens_percentiles'):
    values = ' '.join(f'{k}={v}' for k, v in stats[key].items())
    lines.append(f'  {key.replace("_percentiles", ""):<20} {values}')
  for key in ('padding_fraction', 'packed_fill_rate'):
    value = stats[key]
    lines.append(f'  {key:<20} {"n/a" if value is None else f"{value:.4f}"}')
  return '\n'.join(lines)

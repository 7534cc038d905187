"""What a split holds once tokenized: counts, drops, length percentiles, padding and packing fill.

    python -m gemma_mt.data.stats --dataset=tsv:MTNT/{split}/{split}.en-fr.tsv --split=valid \
        --max_seq_len=256 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from gemma_mt import errors
from gemma_mt.models import sources as model_sources
from gemma_mt.data import pipeline
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.tokenizer import GemmaTokenizer

PERCENTILES = (50, 90, 95, 99, 100)


def split_stats(spec: sources.DatasetSpec, split: str, tokenizer: GemmaTokenizer, *,
                max_seq_len: int, prompt_format: records.PromptFormat = records.PromptFormat(),
                too_long: str = 'drop', batch_size: int = 32) -> dict[str, Any]:
  """The numbers ``python -m gemma_mt.data.stats`` prints, as one dict."""
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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gemma_mt.data.stats',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='demo', help='as --dataset of gemma_mt.train')
  parser.add_argument('--split', default='train')
  parser.add_argument('--max_seq_len', type=int, default=48)
  parser.add_argument('--model', default='', help='whose tokenizer to use (default: tiny, or '
                      'the model --ckpt holds)')
  parser.add_argument('--ckpt', default='', help='as --ckpt of gemma_mt.train: its tokenizer')
  parser.add_argument('--tokenizer', default='', help='a sentencepiece tokenizer.model')
  parser.add_argument('--prompt_template', default='plain', choices=records.PROMPT_TEMPLATES)
  parser.add_argument('--too_long', default='drop', choices=records.TOO_LONG_POLICIES)
  parser.add_argument('--batch_size', type=int, default=32, help='rows per packed batch')
  parser.add_argument('--tsv_quoting', default='csv', choices=sources.TSV_QUOTING)
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--tfds_manual_dir', default=None)
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)
  try:
    if args.max_seq_len <= 0 or args.batch_size <= 0:
      raise errors.UserError('--max_seq_len and --batch_size must be positive')
    run_model = model_sources.resolve_run_model(args.model or ('' if args.ckpt else 'tiny'),
                                                args.ckpt, args.tokenizer, need_weights=False)
    if not run_model.tokenizer_path:
      raise errors.UserError(f'--model={args.model} brings no tokenizer: pass --ckpt or '
                             '--tokenizer')
    spec = sources.DatasetSpec.parse(args.dataset, tsv_quoting=args.tsv_quoting,
                                     tfds_data_dir=args.tfds_data_dir,
                                     tfds_manual_dir=args.tfds_manual_dir)
    stats = split_stats(spec, args.split, GemmaTokenizer(run_model.tokenizer_path),
                        max_seq_len=args.max_seq_len,
                        prompt_format=records.PromptFormat.from_template(args.prompt_template),
                        too_long=args.too_long, batch_size=args.batch_size)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(stats) if args.json else format_table(stats))
  return 0


if __name__ == '__main__':
  sys.exit(main())

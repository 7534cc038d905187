"""Where (source, target) pairs come from, named by one ``--dataset`` string.

- ``demo``: the bundled English→French corpus (``gemma_mt/data/assets``), splits train/valid.
- ``jsonl:PATH``: one JSON object per line with ``src`` and ``dst``.
- ``tsv:PATH``: MTNT-format rows ``id<TAB>source<TAB>target``, parsed like the TFDS ``mtnt``
  builder (``csv.reader``, tab delimiter, default quoting; rows with fewer than 3 fields skipped).

A PATH may contain ``{split}``, replaced by the split name (``tsv:MTNT/{split}/{split}.en-fr.tsv``);
a PATH without it serves every split.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os

from gemma_mt import errors
from gemma_mt.data import demo_corpus

Pair = tuple[str, str]
DATASET_KINDS = ('demo', 'jsonl:PATH', 'tsv:PATH')


class SourceError(errors.UserError):
  """A dataset name or file that cannot give pairs; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class SourceStats:
  """What reading a split kept and skipped."""

  rows: int = 0
  malformed: int = 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed ``--dataset`` value: ``kind`` is demo, jsonl or tsv; ``path`` may hold ``{split}``."""

  kind: str
  path: str = ''

  @classmethod
  def parse(cls, value: str) -> DatasetSpec:
    if value == 'demo':
      return cls('demo')
    kind, sep, path = value.partition(':')
    if sep and kind in ('jsonl', 'tsv') and path:
      return cls(kind, path)
    raise SourceError(
        f'--dataset={value!r} is not a known dataset: use one of {", ".join(DATASET_KINDS)}')

  def split_path(self, split: str) -> str:
    if self.kind == 'demo':
      name = {'train': demo_corpus.TRAIN_FILE, 'valid': demo_corpus.VALID_FILE}.get(split)
      if name is None:
        raise SourceError(f'--dataset=demo has no split {split!r}: use train or valid')
      return str(demo_corpus.ASSETS_DIR / name)
    return self.path.replace('{split}', split)


def _read_text(path: str) -> str:
  if not os.path.isfile(path):
    raise SourceError(f'dataset file {path} does not exist: check --dataset')
  try:
    with open(path, encoding='utf-8') as f:  # universal newlines, like the TFDS builder
      return f.read()
  except UnicodeDecodeError as e:
    raise SourceError(f'dataset file {path} is not UTF-8 text ({e.reason} at byte {e.start})') from e
  except OSError as e:
    raise SourceError(f'dataset file {path} cannot be read: {e.strerror}') from e


def parse_jsonl(text: str) -> tuple[list[Pair], SourceStats]:
  """Pairs from ``{"src": ..., "dst": ...}`` lines; other lines count as malformed."""
  pairs, malformed = [], 0
  for line in text.split('\n'):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      pairs.append((str(row['src']), str(row['dst'])))
    except (ValueError, KeyError, TypeError):
      malformed += 1
  return pairs, SourceStats(rows=len(pairs) + malformed, malformed=malformed)


def parse_mtnt_tsv(text: str) -> tuple[list[Pair], SourceStats]:
  """Pairs from MTNT rows, by the TFDS builder's rule (quotes may join physical lines)."""
  pairs, malformed = [], 0
  for row in csv.reader(io.StringIO(text), delimiter='\t'):
    if len(row) < 3:
      malformed += 1
      continue
    pairs.append((row[1], row[2]))
  return pairs, SourceStats(rows=len(pairs) + malformed, malformed=malformed)


def read_pairs(spec: DatasetSpec, split: str) -> tuple[list[Pair], SourceStats]:
  """All pairs of one split, in file order, and what was skipped; SourceError if none remain."""
  path = spec.split_path(split)
  text = _read_text(path)
  parse = parse_mtnt_tsv if spec.kind == 'tsv' else parse_jsonl
  pairs, stats = parse(text)
  if not pairs:
    raise SourceError(
        f'dataset file {path} has no usable {spec.kind} rows ({stats.malformed} malformed)')
  return pairs, stats

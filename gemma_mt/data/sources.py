"""Where (source, target) pairs come from, named by one ``--dataset`` string.

- ``demo``: the bundled English→French corpus (``gemma_mt/data/assets``), splits train/valid.
- ``jsonl:PATH``: one JSON object per line with ``src`` and ``dst``.
- ``tsv:PATH``: MTNT-format rows ``id<TAB>source<TAB>target``, parsed like the TFDS ``mtnt``
  builder (``csv.reader``, tab delimiter, default quoting; rows with fewer than 3 fields skipped);
  ``tsv_quoting='none'`` reads one row per line instead.
- ``tfds:NAME`` (``tfds:mtnt/en-fr``, ``tfds:mtnt/fr-en``): a TFDS data set prepared as
  ``array_record`` in ``tfds_data_dir`` and read through ``tfds.data_source`` (random access). If
  it is not prepared yet, it is prepared, offline from the archive in ``tfds_manual_dir`` (e.g.
  ``MTNT.1.1.tar.gz``) when one is given, else by download.

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
from gemma_mt.data import asset_paths

Pair = tuple[str, str]
DATASET_KINDS = ('demo', 'jsonl:PATH', 'tsv:PATH', 'tfds:NAME')
TSV_QUOTING = ('csv', 'none')


class SourceError(errors.UserError):
  """A dataset name or file that cannot give pairs; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class SourceStats:
  """What reading a split kept and skipped."""

  rows: int = 0
  malformed: int = 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed ``--dataset`` value and the options of its kind.

  Attributes:
    kind: demo, jsonl, tsv or tfds.
    path: the file (may hold ``{split}``), or the TFDS name.
    tsv_quoting: ``csv`` (the TFDS builder's rule) or ``none`` (one row per line).
    tfds_data_dir: where TFDS data sets are prepared (None: TFDS's default).
    tfds_manual_dir: a folder with the data set's archive, to prepare it offline.
  """

  kind: str
  path: str = ''
  tsv_quoting: str = 'csv'
  tfds_data_dir: str | None = None
  tfds_manual_dir: str | None = None

  @classmethod
  def parse(cls, value: str, **options: str | None) -> DatasetSpec:
    if value == 'demo':
      return cls('demo', **options)
    kind, sep, path = value.partition(':')
    if sep and kind in ('jsonl', 'tsv', 'tfds') and path:
      spec = cls(kind, path, **options)
      if spec.tsv_quoting not in TSV_QUOTING:
        raise SourceError(f'--tsv_quoting={spec.tsv_quoting!r}: use csv or none')
      return spec
    raise SourceError(
        f'--dataset={value!r} is not a known dataset: use one of {", ".join(DATASET_KINDS)}')

  def split_path(self, split: str) -> str:
    if self.kind == 'demo':
      name = {'train': asset_paths.DEMO_TRAIN_FILE, 'valid': asset_paths.DEMO_VALID_FILE}.get(split)
      if name is None:
        raise SourceError(f'--dataset=demo has no split {split!r}: use train or valid')
      return str(asset_paths.ASSETS_DIR / name)
    return self.path.replace('{split}', split)


def check_split_file(spec: DatasetSpec, split: str) -> None:
  """Raises SourceError if ``split`` has no file (tfds splits are the builder's); reads nothing."""
  if spec.kind != 'tfds':
    _require_file(spec.split_path(split))


def _require_file(path: str) -> None:
  if not os.path.isfile(path):
    raise SourceError(f'dataset file {path} does not exist: check --dataset')


def _read_lines(path: str) -> tuple[list[str], int]:
  """The file's lines (universal newlines, like the TFDS builder) and how many were not UTF-8."""
  _require_file(path)
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise SourceError(f'dataset file {path} cannot be read: {e.strerror}') from e
  lines, invalid = [], 0
  for line in raw.replace(b'\r\n', b'\n').replace(b'\r', b'\n').split(b'\n'):
    try:
      lines.append(line.decode('utf-8'))
    except UnicodeDecodeError:
      invalid += 1
  return lines, invalid


def parse_jsonl(lines: list[str]) -> tuple[list[Pair], int]:
  """Pairs from ``{"src": ..., "dst": ...}`` lines and the number of malformed lines."""
  pairs, malformed = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      pairs.append((str(row['src']), str(row['dst'])))
    except (ValueError, KeyError, TypeError):
      malformed += 1
  return pairs, malformed


def parse_mtnt_tsv(lines: list[str], quoting: str = 'csv') -> tuple[list[Pair], int]:
  """Pairs from MTNT rows and the number of malformed rows.

  ``csv``: the TFDS builder's rule, where quotes may join physical lines into one row;
  ``none``: one row per line, quotes kept as text.
  """
  if quoting == 'none':
    rows = [line.split('\t') for line in lines if line]
  else:
    rows = csv.reader(io.StringIO('\n'.join(lines)), delimiter='\t')
  pairs, malformed = [], 0
  for row in rows:
    if len(row) < 3:
      malformed += 1
      continue
    pairs.append((row[1], row[2]))
  return pairs, malformed


def _read_tfds(spec: DatasetSpec, split: str) -> list[Pair]:
  from gemma_mt.data import tfds_source  # pylint: disable=import-outside-toplevel

  try:
    return tfds_source.read_pairs(spec.path, split, data_dir=spec.tfds_data_dir,
                                  manual_dir=spec.tfds_manual_dir)
  except tfds_source.TfdsSourceError as e:
    raise SourceError(str(e)) from None


def read_pairs(spec: DatasetSpec, split: str) -> tuple[list[Pair], SourceStats]:
  """All pairs of one split, in order, and what was skipped; SourceError if none remain."""
  if spec.kind == 'tfds':
    pairs = _read_tfds(spec, split)
    return pairs, SourceStats(rows=len(pairs), malformed=0)
  path = spec.split_path(split)
  lines, invalid = _read_lines(path)
  if spec.kind == 'tsv':
    pairs, malformed = parse_mtnt_tsv(lines, spec.tsv_quoting)
  else:
    pairs, malformed = parse_jsonl(lines)
  malformed += invalid
  stats = SourceStats(rows=len(pairs) + malformed, malformed=malformed)
  if not pairs:
    raise SourceError(
        f'dataset file {path} has no usable {spec.kind} rows ({malformed} malformed)')
  return pairs, stats

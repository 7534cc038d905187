"""Pairs from a TFDS data set (MTNT), prepared as array_record and read with random access.

Importing this module imports TensorFlow Datasets; ``sources`` imports it only for ``tfds:``.
"""

from __future__ import annotations

import hashlib
import os

from gemma_mt import errors


class TfdsSourceError(errors.UserError):
  """A TFDS data set that cannot be prepared or read; ``sources`` reports it as a SourceError."""

# TFDS names this module knows how to prepare offline: name prefix → (download URL, archive name).
OFFLINE_ARCHIVES = {
    'mtnt': ('https://github.com/pmichel31415/mtnt/releases/download/v1.1/MTNT.1.1.tar.gz',
             'MTNT.1.1.tar.gz'),
}


def _register_local_archive(name: str, manual_dir: str, data_dir: str) -> None:
  """Tells TFDS the checksum of the archive in ``manual_dir``, so that it uses that file.

  The installed TFDS ships no checksums for mtnt, and without one it ignores ``manual_dir``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  dataset = name.split('/')[0]
  if dataset not in OFFLINE_ARCHIVES:
    raise TfdsSourceError(f'--tfds_manual_dir: no offline preparation known for {name}; '
                      f'known: {", ".join(OFFLINE_ARCHIVES)}')
  url, archive = OFFLINE_ARCHIVES[dataset]
  path = os.path.join(manual_dir, archive)
  if not os.path.isfile(path):
    raise TfdsSourceError(f'--tfds_manual_dir={manual_dir} has no {archive}: put the archive there')
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  checksums_dir = os.path.join(data_dir, 'gemma_mt_checksums')
  os.makedirs(checksums_dir, exist_ok=True)
  with open(os.path.join(checksums_dir, f'{dataset}.txt'), 'w', encoding='utf-8') as f:
    f.write(f'{url}\t{os.path.getsize(path)}\t{digest.hexdigest()}\t{archive}\n')
  tfds.download.add_checksums_dir(checksums_dir)


def read_pairs(name: str, split: str, *, data_dir: str | None = None,
               manual_dir: str | None = None) -> list[tuple[str, str]]:
  """All ``(src, dst)`` pairs of ``split`` of the TFDS data set ``name`` (e.g. ``mtnt/en-fr``).

  Prepares the data set as array_record first if ``data_dir`` does not hold it yet.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    raise TfdsSourceError(f'--dataset=tfds:{name}: {str(e).splitlines()[0]}') from None
  if not builder.is_prepared():
    download_config = None
    if manual_dir:
      _register_local_archive(name, manual_dir, builder.data_dir_root)
      download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
      builder.download_and_prepare(download_config=download_config,
                                   file_format='array_record')
    except Exception as e:  # pylint: disable=broad-except  # network, checksum, archive errors
      raise TfdsSourceError(
          f'--dataset=tfds:{name} could not be prepared in {builder.data_dir_root}: '
          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}; offline, pass '
          '--tfds_manual_dir with the archive') from None
  if split not in builder.info.splits:
    raise TfdsSourceError(f'--dataset=tfds:{name} has no split {split!r}: use one of '
                      f'{", ".join(sorted(builder.info.splits))}')
  source = builder.as_data_source(split=split)
  return [(_text(source[i]['src']), _text(source[i]['dst'])) for i in range(len(source))]


def _text(value: bytes | str) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)

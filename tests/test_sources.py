import json

import pytest

from gemma_mt.data import sources


def test_mtnt_tsv_parses_like_the_tfds_builder(mtnt_valid_tsv):
  pairs, stats = sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{mtnt_valid_tsv}'), 'valid')
  assert len(pairs) == 811
  assert pairs[0] == ('yea', 'Oui')
  assert stats.malformed == stats.rows - 811


def test_demo_splits():
  spec = sources.DatasetSpec.parse('demo')
  train, _ = sources.read_pairs(spec, 'train')
  valid, _ = sources.read_pairs(spec, 'valid')
  assert len(train) == 24000 and len(valid) == 400
  with pytest.raises(sources.SourceError, match='no split'):
    sources.read_pairs(spec, 'test')


def test_jsonl_with_split_placeholder_counts_malformed(tmp_path):
  rows = [json.dumps({'src': 'a', 'dst': 'b'}), 'not json', json.dumps({'src': 'c'}), '',
          json.dumps({'src': 'x\u2028y', 'dst': 'z'})]
  (tmp_path / 'valid.jsonl').write_text('\n'.join(rows), encoding='utf-8')
  pairs, stats = sources.read_pairs(sources.DatasetSpec.parse(f'jsonl:{tmp_path}/{{split}}.jsonl'),
                                    'valid')
  assert pairs == [('a', 'b'), ('x\u2028y', 'z')]
  assert stats.malformed == 2


@pytest.mark.parametrize('value', ['mtnt', 'tsv:', 'csv:/x', ''])
def test_unknown_dataset(value):
  with pytest.raises(sources.SourceError, match='--dataset'):
    sources.DatasetSpec.parse(value)


def test_bad_files(tmp_path):
  spec = sources.DatasetSpec.parse(f'tsv:{tmp_path}/missing.tsv')
  with pytest.raises(sources.SourceError, match='missing.tsv does not exist'):
    sources.read_pairs(spec, 'train')
  (tmp_path / 'empty.tsv').write_text('')
  with pytest.raises(sources.SourceError, match='no usable'):
    sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{tmp_path}/empty.tsv'), 'train')
  (tmp_path / 'short.tsv').write_text('1\tonly two\n')
  with pytest.raises(sources.SourceError, match=r'1 malformed'):
    sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{tmp_path}/short.tsv'), 'train')
  (tmp_path / 'latin1.tsv').write_bytes('1\tcaf\xe9\tcaf\xe9\n'.encode('latin-1'))
  with pytest.raises(sources.SourceError, match=r'latin1.tsv has no usable tsv rows \(1 malformed'):
    sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{tmp_path}/latin1.tsv'), 'train')


def test_tsv_without_quoting_reads_every_line(mtnt_valid_tsv):
  spec = sources.DatasetSpec.parse(f'tsv:{mtnt_valid_tsv}', tsv_quoting='none')
  pairs, stats = sources.read_pairs(spec, 'valid')
  assert len(pairs) == 852 and stats.malformed == 0


def test_invalid_utf8_rows_are_skipped_and_counted(tmp_path):
  path = tmp_path / 'mixed.tsv'
  path.write_bytes(b'1\tcat\tchat\n2\tcaf\xe9\tcaf\xe9\n3\tdog\tchien\n')
  pairs, stats = sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{path}'), 'train')
  assert pairs == [('cat', 'chat'), ('dog', 'chien')] and stats.malformed == 1


def test_tfds_mtnt_prepared_offline_matches_the_tsv(tmp_path, mtnt_valid_tsv):
  import tarfile
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'MTNT.1.1.tar.gz', 'w:gz') as tar:
    for split in ('train', 'valid', 'test'):
      tar.add(mtnt_valid_tsv, arcname=f'MTNT/{split}/{split}.en-fr.tsv')
  spec = sources.DatasetSpec.parse('tfds:mtnt/en-fr', tfds_data_dir=str(tmp_path / 'tfds'),
                                   tfds_manual_dir=str(manual))
  pairs, _ = sources.read_pairs(spec, 'valid')
  tsv, _ = sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{mtnt_valid_tsv}'), 'valid')
  assert len(pairs) == 811
  assert sorted(pairs) == sorted(tsv)
  # Prepared once: a second read needs no archive.
  again, _ = sources.read_pairs(
      sources.DatasetSpec.parse('tfds:mtnt/en-fr', tfds_data_dir=str(tmp_path / 'tfds')), 'test')
  assert len(again) == 811
  with pytest.raises(sources.SourceError, match='no split'):
    sources.read_pairs(spec, 'dev')


def test_tfds_offline_without_the_archive(tmp_path):
  spec = sources.DatasetSpec.parse('tfds:mtnt/en-fr', tfds_data_dir=str(tmp_path / 'tfds'),
                                   tfds_manual_dir=str(tmp_path))
  with pytest.raises(sources.SourceError, match='has no MTNT.1.1.tar.gz'):
    sources.read_pairs(spec, 'valid')

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
  with pytest.raises(sources.SourceError, match='not UTF-8'):
    sources.read_pairs(sources.DatasetSpec.parse(f'tsv:{tmp_path}/latin1.tsv'), 'train')

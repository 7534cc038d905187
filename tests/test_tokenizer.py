import pickle

import numpy as np
import pytest

from gemma_mt.data.tokenizer import GemmaTokenizer, TokenizerError


def test_gemma_special_ids(demo_tokenizer):
  assert (demo_tokenizer.pad_id, demo_tokenizer.eos_id, demo_tokenizer.bos_id) == (0, 1, 2)
  assert demo_tokenizer.piece_id('<unk>') == 3
  assert demo_tokenizer.piece_id('<start_of_turn>') is not None
  assert demo_tokenizer.piece_id('no such piece') is None


def test_encode_prefix_suffix_bos_eos(demo_tokenizer):
  ids = demo_tokenizer.encode('The cat.', 'Translate this into French:\n', '\n', add_bos=True)
  assert ids.dtype == np.int32
  assert ids[0] == demo_tokenizer.bos_id and demo_tokenizer.bos_id not in ids[1:]
  assert demo_tokenizer.decode(ids) == 'Translate this into French:\nThe cat.\n'
  target = demo_tokenizer.encode('Le chat.', add_eos=True)
  assert target[-1] == demo_tokenizer.eos_id
  batch = demo_tokenizer.encode_batch(['The cat.', 'Le chat.'], 'x', 'y', add_eos=True)
  np.testing.assert_array_equal(batch[1], demo_tokenizer.encode('Le chat.', 'x', 'y', add_eos=True))


def test_decode_stops_at_eos_and_drops_padding(demo_tokenizer):
  text = demo_tokenizer.encode('Le chat a vu deux pommes.')
  ids = np.concatenate([[demo_tokenizer.bos_id], text, [demo_tokenizer.eos_id],
                        demo_tokenizer.encode('Ignored after EOS.'), [0, 0, 0]])
  assert demo_tokenizer.decode(ids) == 'Le chat a vu deux pommes.'
  assert demo_tokenizer.decode_batch(np.stack([ids, ids])) == ['Le chat a vu deux pommes.'] * 2


def test_unseen_characters_round_trip_through_byte_fallback(demo_tokenizer):
  text = 'Ouais 😄 — 3CR, naïveté.'
  ids = demo_tokenizer.encode(text)
  assert 3 not in ids  # no <unk>
  assert demo_tokenizer.decode(ids) == text


def test_pickles_for_worker_processes(demo_tokenizer):
  clone = pickle.loads(pickle.dumps(demo_tokenizer))
  np.testing.assert_array_equal(clone.encode('The dog.'), demo_tokenizer.encode('The dog.'))


def test_missing_or_bad_file(tmp_path):
  with pytest.raises(TokenizerError, match='does not exist'):
    _ = GemmaTokenizer(str(tmp_path / 'none.model')).eos_id
  bad = tmp_path / 'bad.model'
  bad.write_text('not a model')
  with pytest.raises(TokenizerError, match='not a sentencepiece model'):
    _ = GemmaTokenizer(str(bad)).eos_id

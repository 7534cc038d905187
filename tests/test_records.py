import numpy as np
import pytest

from gemma_mt.data import records


def test_layout_bos_prompt_target_eos_padding(demo_tokenizer):
  prompt_format = records.PromptFormat()
  prompt = demo_tokenizer.encode('The cat.', prompt_format.prefix, prompt_format.suffix,
                                 add_bos=True)
  target = demo_tokenizer.encode('Le chat.', add_eos=True)
  row = records.make_training_input(prompt, target, 32, demo_tokenizer.pad_id)
  n = len(prompt) + len(target)
  assert row.input_tokens.shape == (32,) and row.target_mask.shape == (32,)
  assert row.input_tokens[0] == demo_tokenizer.bos_id
  assert list(row.input_tokens).count(demo_tokenizer.bos_id) == 1  # no BOS before the target
  np.testing.assert_array_equal(row.input_tokens[len(prompt):n], target)
  assert row.input_tokens[n - 1] == demo_tokenizer.eos_id
  assert (row.input_tokens[n:] == demo_tokenizer.pad_id).all()
  assert not row.target_mask[: len(prompt)].any()
  assert row.target_mask[len(prompt):n].all() and not row.target_mask[n:].any()


def test_too_long_raises():
  with pytest.raises(ValueError, match='does not fit'):
    records.make_training_input(np.arange(5), np.arange(6), 10, 0)


def test_prompt_templates():
  assert records.PromptFormat.from_template('plain').render('Hi.') == (
      'Translate this into French:\nHi.\n')
  chat = records.PromptFormat.from_template('gemma_chat').render('Hi.')
  assert chat.startswith('<start_of_turn>user\n') and chat.endswith('<start_of_turn>model\n')
  with pytest.raises(ValueError, match='unknown prompt template'):
    records.PromptFormat.from_template('nope')


def test_empty_row_weighs_nothing():
  row = records.empty_training_input(8, 0)
  assert not row.target_mask.any() and (row.input_tokens == 0).all()

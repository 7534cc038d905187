import pytest

from gemma_mt.train.config import ConfigError, TrainConfig


def test_defaults_are_valid_and_round_trip_through_json(tmp_path):
  config = TrainConfig(workdir=str(tmp_path)).validate()
  import json
  assert TrainConfig.from_dict(json.loads(config.to_json())) == config
  assert TrainConfig.from_dict({**json.loads(config.to_json()), 'future_flag': 1}) == config


@pytest.mark.parametrize('change, flag', [
    (dict(batch_size=0), '--batch_size'),
    (dict(max_seq_len=-1), '--max_seq_len'),
    (dict(model='gemma-99b'), '--model'),
    (dict(dataset='mtnt'), '--dataset'),
    (dict(optimizer='lamb'), '--optimizer'),
    (dict(lr_schedule='step'), '--lr_schedule'),
    (dict(learning_rate=0.0), '--learning_rate'),
    (dict(num_epochs=0, max_steps=0), '--num_epochs'),
    (dict(prompt_template='chatml'), '--prompt_template'),
    (dict(workdir=''), '--workdir'),
])
def test_bad_values_name_their_flag(tmp_path, change, flag):
  with pytest.raises(ConfigError, match=flag):
    TrainConfig(**{'workdir': str(tmp_path), **change}).validate()


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(ConfigError, match='is a file'):
    TrainConfig(workdir=str(path)).validate()


def test_changes_from():
  a = TrainConfig(workdir='a')
  b = TrainConfig(workdir='a', learning_rate=1.0)
  assert b.changes_from(a) == {'learning_rate': (a.learning_rate, 1.0)}

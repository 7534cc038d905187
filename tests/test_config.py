import pytest

from gemma_mt.train.config import ConfigError, TrainConfig


def test_demo_flagfile_is_the_defaults_but_for_bleu_every_n():
  import dataclasses
  import pathlib
  path = pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'demo.flags'
  values = dict(line[2:].split('=', 1) for line in path.read_text().splitlines()
                if line.startswith('--'))
  defaults = TrainConfig()
  differing = {k for k, v in values.items()
               if str(getattr(defaults, k)) != v and str(getattr(defaults, k)) != str(type(
                   getattr(defaults, k))(v))}
  # --model= empty by default means tiny when no --ckpt is given.
  assert differing == {'bleu_every_n', 'model'}
  assert values['model'] == defaults.model_name == 'tiny'
  assert {f.name for f in dataclasses.fields(TrainConfig)} >= set(values)


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
    (dict(early_stopping_patience=-1), '--early_stopping_patience'),
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


def test_run_paths_are_checked_and_the_probe_leaves_nothing(tmp_path):
  TrainConfig(workdir=str(tmp_path / 'a' / 'b')).check_paths()
  TrainConfig(workdir=str(tmp_path)).check_paths()
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(ConfigError, match=r'^--workdir=/dev/null/run is not writable \(Not a dir'):
    TrainConfig(workdir='/dev/null/run').check_paths()
  with pytest.raises(ConfigError, match=r'^dataset file /nowhere/valid.tsv does not exist'):
    TrainConfig(workdir=str(tmp_path), dataset='tsv:/nowhere/{split}.tsv',
                train_split='valid').check_paths()
  # The library's run makes the same checks before it compiles or reads anything.
  from gemma_mt.train import loop
  with pytest.raises(ConfigError, match='is not writable'):
    loop.train_and_evaluate(TrainConfig(workdir='/dev/null/run'))

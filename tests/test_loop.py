"""train_and_evaluate end to end in-process, on the 8 simulated devices."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import tensorboard_events
from gemma_mt.data import pipeline
from gemma_mt.errors import UserError
from gemma_mt.train import checkpoint, divergence, loop
from gemma_mt.train.checkpoint import CheckpointError
from gemma_mt.train.config import ConfigError, TrainConfig


def _config(workdir, **overrides) -> TrainConfig:
  values = dict(workdir=str(workdir), max_steps=12, batch_size=16, eval_batch_size=64,
                eval_every_n=6, save_every_n=4, log_every_n=2, lr_schedule='constant',
                warmup_steps=0, num_translations=0, bleu_examples=0)
  values.update(overrides)
  return TrainConfig(**values)


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _losses(workdir) -> dict[int, float]:
  return {m['step']: m['train_loss'] for m in _metrics(workdir) if 'train_loss' in m}


@pytest.fixture(scope='session')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  return workdir, loop.train_and_evaluate(_config(workdir))


def test_run_writes_metrics_tensorboard_and_checkpoints(uninterrupted):
  workdir, result = uninterrupted
  metrics = _metrics(workdir)
  assert [m['step'] for m in metrics if 'train_loss' in m] == list(range(2, 13, 2))
  assert [m['step'] for m in metrics if 'eval_loss' in m] == [6, 12]
  assert result.eval_loss == metrics[-1]['eval_loss']
  for key in ('grad_norm', 'learning_rate', 'train_accuracy', 'target_tokens_per_sec',
              'data_wait_fraction'):
    assert key in metrics[0]
  # TensorBoard gets the same scalars, written by tensorboard's writer (no TensorFlow op).
  from tensorboard.backend.event_processing import event_file_loader
  files = sorted((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  writers = {e.source_metadata.writer for f in files
             for e in event_file_loader.EventFileLoader(str(f)).Load()
             if e.HasField('source_metadata')}
  assert writers == {'tensorboard.summary.writer.event_file_writer'}, writers
  points = tensorboard_events(workdir).Tensors('train_loss')
  assert [(e.step, float(e.tensor_proto.float_val[0])) for e in points] == [
      (m['step'], pytest.approx(m['train_loss'], rel=1e-6)) for m in metrics if 'train_loss' in m]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['12', '8']
  assert result.step == 12 and int(result.state.step) == 12


def test_same_seed_gives_bit_identical_losses(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  again = loop.train_and_evaluate(_config(tmp_path))
  assert _losses(tmp_path) == _losses(workdir)
  for a, b in zip(jax.tree.leaves(again.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_continues_exactly(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  loop.train_and_evaluate(_config(tmp_path, max_steps=8))  # stops at step 8, saved
  resumed = loop.train_and_evaluate(_config(tmp_path))  # continues to 12 from the checkpoint
  assert _losses(tmp_path) == _losses(workdir)
  for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_diverging_run_stops_before_saving_and_resumes_from_its_last_checkpoint(
    uninterrupted, tmp_path):
  """A learning rate of 1e30 from step 5 on: the parameters it leaves give a finite loss (that of
  uniform guesses) but NaN gradients at step 6, whose update leaves NaN parameters. Whichever
  check sees it first (the report, the evaluation, the check before a save), the run
  stops with one line naming the step and keeps its checkpoints as they were; the same command
  with a sane rate resumes from the last one, as if nothing had happened."""
  loop.train_and_evaluate(_config(tmp_path, max_steps=4))  # saved at step 4
  diverging = dict(learning_rate=1e30, log_every_n=100, eval_every_n=100, save_every_n=100)
  for overrides, metric, step in (
      (dict(log_every_n=2), 'grad_norm', 6),  # the report at step 6
      (dict(save_every_n=6), 'grad_norm', 6),  # the save due at step 6
      (dict(eval_every_n=6), 'eval_loss', 6),  # the evaluation after step 6
  ):
    with pytest.raises(divergence.TrainingDivergedError) as raised:
      loop.train_and_evaluate(_config(tmp_path, **{**diverging, **overrides}))
    assert str(raised.value) == (
        f'training diverged: {metric} is nan at step {step}, and nothing from that step on was '
        'saved; the checkpoints up to step 4 are kept: lower --learning_rate and run the same '
        'command to resume from step 4')
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['4']
    assert isinstance(raised.value, UserError)  # one line and exit status 2 from the CLI
  # The last failure's metrics are on file for a look; resuming drops them.
  assert np.isnan(_metrics(tmp_path)[-1]['eval_loss'])
  loop.train_and_evaluate(_config(tmp_path, max_steps=8))
  workdir, _ = uninterrupted
  assert _losses(tmp_path) == {s: v for s, v in _losses(workdir).items() if s <= 8}


def test_other_model_in_workdir_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  with pytest.raises(CheckpointError, match='another model'):
    loop.train_and_evaluate(_config(workdir, param_dtype='bfloat16', max_steps=16))
  # Another optimizer's state has another structure: refused, nothing renamed or overwritten.
  with pytest.raises(CheckpointError, match='train state of another shape'):
    loop.train_and_evaluate(_config(workdir, optimizer='sgd', max_steps=16))
  with pytest.raises(CheckpointError, match='train state of another shape'):
    loop.train_and_evaluate(_config(workdir, grad_clip_norm=0.0, max_steps=16))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def test_batch_not_divisible_by_the_mesh(tmp_path):
  with pytest.raises(ConfigError, match='--batch_size=12 .* not divisible by the 8 batch shards'):
    loop.train_and_evaluate(_config(tmp_path / 'run', batch_size=12))
  assert not (tmp_path / 'run').exists()


def test_max_seq_len_shorter_than_any_prompt(tmp_path):
  from gemma_mt.data.pipeline import PipelineError
  with pytest.raises(PipelineError, match='--max_seq_len=8'):
    loop.train_and_evaluate(_config(tmp_path / 'run', max_seq_len=8))
  assert not (tmp_path / 'run').exists()


def test_packed_run_resumes_exactly(tmp_path):
  packed = dict(packing=True, max_seq_len=96, max_steps=8, save_every_n=4)
  loop.train_and_evaluate(_config(tmp_path / 'ref', **packed))
  loop.train_and_evaluate(_config(tmp_path / 'run', **{**packed, 'max_steps': 4}))
  loop.train_and_evaluate(_config(tmp_path / 'run', **packed))
  assert _losses(tmp_path / 'run') == _losses(tmp_path / 'ref')
  with pytest.raises(CheckpointError, match='same batch size'):
    loop.train_and_evaluate(_config(tmp_path / 'run', **{**packed, 'max_steps': 12,
                                                          'batch_size': 8}))
  # The position records examples (segments of the packed rows), not rows.
  store = checkpoint.RunCheckpoints.for_reading(str(tmp_path / 'run' / 'checkpoints'))
  run = loop.load_run_data(_config(tmp_path / 'x', **packed), _demo_tokenizer())
  batches = pipeline.packed_train_dataset(run.train, max_seq_len=96, pad_id=0,
                                          global_batch_size=16, seed=0, num_epochs=None)
  segments = [int(np.sum((b.positions == 0) & (b.segment_ids > 0))) for _, b in zip(range(8),
                                                                                      batches)]
  assert store.saved_position(8).examples_consumed == sum(segments) > 8 * 16
  assert store.saved_position(6).examples_consumed == sum(segments[:6])
  assert (tmp_path / 'run' / 'checkpoints' / '8' / 'data').is_dir()  # Grain's state: the source


def _demo_tokenizer():
  from gemma_mt import models
  from gemma_mt.data.tokenizer import GemmaTokenizer
  return GemmaTokenizer(models.DEMO_TOKENIZER)


def _small_tsv(directory, num_train=64) -> str:
  directory.mkdir()
  for split, count in (('train', num_train), ('valid', 16)):
    lines = [f'{i}\tI see {i} cats.\tJe vois {i} chats.\n' for i in range(count)]
    (directory / f'{split}.tsv').write_text(''.join(lines))
  return f'tsv:{directory}/{{split}}.tsv'


def test_resumed_epoch_run_with_another_batch_size_ends_its_decay_at_its_last_step(tmp_path):
  config = _config(tmp_path / 'run', dataset=_small_tsv(tmp_path / 'data'), tsv_quoting='none',
                   max_steps=0, num_epochs=1, lr_schedule='linear', learning_rate=3e-3,
                   log_every_n=1, eval_every_n=100, save_every_n=100, eval_batch_size=16)
  loop.train_and_evaluate(config)  # 64 examples at 16: steps 1-4
  # Another epoch at batch 8: 64 more examples, steps 5-12; the schedule ends at 12, not 16.
  result = loop.train_and_evaluate(dataclasses.replace(config, num_epochs=2, batch_size=8))
  assert result.step == 12
  rates = {m['step']: m['learning_rate'] for m in _metrics(tmp_path / 'run') if 'train_loss' in m}
  assert sorted(rates) == list(range(1, 13))
  assert rates[12] == pytest.approx(3e-3 / 12, rel=1e-5)  # linear to 0 over 12 steps


def test_max_steps_beyond_the_epochs_is_refused_at_start(tmp_path):
  dataset = _small_tsv(tmp_path / 'data')
  for packing in (False, True):
    workdir = tmp_path / f'run-{packing}'
    with pytest.raises(ConfigError, match='--max_steps=50 is more than the .* steps that '
                       '--num_epochs=2'):
      loop.train_and_evaluate(_config(workdir, dataset=dataset, tsv_quoting='none', max_steps=50,
                                      num_epochs=2, packing=packing, max_seq_len=96))
    assert not workdir.exists()
  # Within the epochs: runs to the end (64 × 2 examples hold 8 batches of 16).
  assert loop.train_and_evaluate(_config(tmp_path / 'ok', dataset=dataset, tsv_quoting='none',
                                         max_steps=8, num_epochs=2, eval_every_n=8,
                                         eval_batch_size=16)).step == 8

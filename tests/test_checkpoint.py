"""Checkpoints: exact resume after SIGKILL, SIGTERM, corruption; elastic restore; init_from; export.

The kill tests run the real CLI in subprocesses (one CPU device each) and compare with an
uninterrupted run of the same command, bit for bit.
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO, subprocess_env, tensorboard_events
from gemma_mt.train import checkpoint, loop, workdir_lock
from gemma_mt.train.config import TrainConfig

FLAGS = ['--max_steps=24', '--batch_size=16', '--save_every_n=6', '--log_every_n=1',
         '--eval_every_n=12', '--num_translations=0', '--bleu_examples=0',
         '--warmup_steps=4']


def _command(workdir) -> list[str]:
  return [sys.executable, '-m', 'gemma_mt.train', f'--workdir={workdir}', *FLAGS]


def _run(workdir) -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir), cwd=REPO, env=subprocess_env(), capture_output=True,
                        text=True, timeout=300)


def _start(workdir) -> subprocess.Popen:
  return subprocess.Popen(_command(workdir), cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=240.0, poll=0.02):
  # Each poll reads the run's files: a short poll costs the test process CPU the whole wait long.
  # The moments that pass in milliseconds (an asynchronous save) poll faster.
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  raise TimeoutError('condition not reached')


def _reported_step(workdir) -> int:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return 0
  steps = [json.loads(l)['step'] for l in path.read_text().splitlines() if l.strip()]
  return max(steps, default=0)


def _train_losses(workdir) -> list[tuple[int, float]]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [(m['step'], m['train_loss']) for m in map(json.loads, lines) if 'train_loss' in m]


def _final_params(workdir):
  from gemma_mt import models
  model = models.get_model_spec('tiny').transformer(jax.numpy.float32)
  abstract = jax.eval_shape(lambda: models.init_params(model, 0))
  return checkpoint.restore_params(str(workdir), abstract)


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, _train_losses(workdir), _final_params(workdir)


def _tmp_dirs(workdir):
  directory = pathlib.Path(workdir) / 'checkpoints'
  return [p for p in directory.glob('*') if 'tmp' in p.name] if directory.exists() else []


def _complete_steps(workdir) -> set[int]:
  directory = pathlib.Path(workdir) / 'checkpoints'
  return {int(p.name) for p in directory.glob('*') if p.name.isdigit()} if directory.exists() \
      else set()


def test_sigterm_and_sigkill_at_any_moment_then_same_command_ends_bit_identical(reference,
                                                                                tmp_path):
  """One run stopped four times and started again with the same command each time ends as the
  uninterrupted run: SIGTERM (a scheduler's preemption notice) saves the current step and exits
  0; SIGKILL inside a step, during an asynchronous save and right after a save loses at most
  the steps since the last complete checkpoint."""
  ref_dir, ref_losses, ref_params = reference
  workdir = tmp_path / 'run'
  proc = _start(workdir)
  assert _wait_for(lambda: _reported_step(workdir) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  line = [l for l in stderr.splitlines() if 'stopping on SIGTERM' in l]
  assert len(line) == 1
  stopped = int(line[0].split('checkpoint at step ')[1].split(';')[0])
  assert 2 <= stopped < 9, stopped  # below the next leg's kill, which must not see it
  assert _complete_steps(workdir) >= {stopped}
  for moment in ('inside_a_step', 'during_an_async_save', 'right_after_a_save'):
    before = _complete_steps(workdir)
    proc = _start(workdir)
    if moment == 'inside_a_step':
      reached = _wait_for(lambda: _reported_step(workdir) >= 9, proc)
    elif moment == 'during_an_async_save':
      # A new save caught while its temporary directory exists.
      reached = _wait_for(lambda: any(int(p.name.split('.')[0]) not in before
                                      for p in _tmp_dirs(workdir)), proc, poll=0.002)
    else:
      reached = _wait_for(lambda: bool(_complete_steps(workdir) - before), proc, poll=0.002)
    proc.kill()
    _, stderr = proc.communicate()
    assert reached, f'the run ended before the kill moment {moment}'
    assert proc.returncode == -signal.SIGKILL
    assert _reported_step(workdir) < 24
    if moment == 'inside_a_step':
      assert f'at step {stopped}' in stderr  # where SIGTERM saved
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from' in done.stderr
  assert not _tmp_dirs(workdir)
  assert _train_losses(workdir) == ref_losses
  _assert_same_params(_final_params(workdir), ref_params)


def _config(workdir, **overrides) -> TrainConfig:
  # A constant rate: runs stopped early by a smaller --max_steps follow the same schedule.
  values = dict(workdir=str(workdir), max_steps=12, batch_size=16, eval_batch_size=16,
                eval_every_n=12, save_every_n=4, log_every_n=1, num_translations=0,
                bleu_examples=0, warmup_steps=0, lr_schedule='constant')
  values.update(overrides)
  return TrainConfig(**values)


def _losses(workdir) -> list[float]:
  return [l for _, l in _train_losses(workdir)]


def test_elastic_restore_onto_another_mesh_and_device_count(tmp_path):
  loop.train_and_evaluate(_config(tmp_path / 'ref', mesh='fsdp:8'))
  loop.train_and_evaluate(_config(tmp_path / 'run', mesh='fsdp:8', max_steps=8))
  resumed = loop.train_and_evaluate(_config(tmp_path / 'run', mesh='data:2,fsdp:2'),
                                    devices=jax.devices()[:4])
  assert resumed.step == 12
  leaf = resumed.state.params['layer_0']['mlp']['linear']
  assert len(leaf.sharding.device_set) == 4
  np.testing.assert_allclose(_losses(tmp_path / 'run'), _losses(tmp_path / 'ref'), rtol=1e-5)


def test_changed_batch_size_continues_with_the_next_example(tmp_path):
  from gemma_mt.data import pipeline
  examples = [pipeline.EncodedExample(np.array([2, 100 + i], np.int32), np.array([1], np.int32))
              for i in range(50)]

  def ids(ds):
    return [int(r[1]) - 100 for b in ds for r in b.input_tokens]

  kwargs = dict(max_seq_len=4, pad_id=0, seed=0, num_epochs=None)
  before = ids(pipeline.train_dataset(examples, global_batch_size=16, **kwargs)[:4])
  after = ids(pipeline.train_dataset(examples, global_batch_size=8, start_example=64,
                                     **kwargs)[:5])
  reference = ids(pipeline.train_dataset(examples, global_batch_size=8, **kwargs)[:13])
  assert before + after == reference  # 64 + 40 examples: nothing repeated or skipped
  # And through the loop: the resumed run logs the rule and goes on.
  loop.train_and_evaluate(_config(tmp_path, max_steps=4))
  result = loop.train_and_evaluate(_config(tmp_path, max_steps=8, batch_size=8))
  assert result.step == 8
  position = checkpoint.RunCheckpoints.for_reading(str(tmp_path / 'checkpoints'))
  assert position.saved_position(8).examples_consumed == 4 * 16 + 4 * 8


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  loop.train_and_evaluate(_config(tmp_path, max_steps=8))
  steps = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  assert steps == ['4', '8']
  for f in (tmp_path / 'checkpoints' / '8' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 0 and 'commit' not in f.name:
      f.write_bytes(b'garbage' * 3)
  with caplog.at_level('WARNING'):
    result = loop.train_and_evaluate(_config(tmp_path, max_steps=10))
  assert 'checkpoint 8' in caplog.text and 'is damaged' in caplog.text
  assert result.step == 10
  assert list((tmp_path / 'checkpoints').glob('8.unreadable-*'))  # kept aside, not deleted
  assert [s for s, _ in _train_losses(tmp_path)] == list(range(1, 11))
  # TensorBoard shows steps 5-8 once: the redone steps hide the first run's points.
  steps = [e.step for e in tensorboard_events(tmp_path).Tensors('train_loss')]
  assert sorted(steps) == list(range(1, 11)), steps


def test_a_restore_that_runs_out_of_memory_moves_nothing(tmp_path, monkeypatch):
  loop.train_and_evaluate(_config(tmp_path, max_steps=8))
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())

  def out_of_memory(*_, **__):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                     'allocate 1073741824 bytes.')

  monkeypatch.setattr(checkpoint.RunCheckpoints, 'restore', out_of_memory)
  with pytest.raises(checkpoint.CheckpointError, match='nothing was moved aside'):
    loop.train_and_evaluate(_config(tmp_path, max_steps=10))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before == ['4', '8']
  # Permission and I/O errors are not damage either; a missing file of the checkpoint is.
  step_dir = str(tmp_path / 'checkpoints' / '8')
  assert not checkpoint.is_damage(PermissionError(13, 'denied', step_dir + '/state'), step_dir)
  assert not checkpoint.is_damage(OSError(5, 'Input/output error'), step_dir)
  assert checkpoint.is_damage(FileNotFoundError(2, 'gone', step_dir + '/state/x'), step_dir)


def test_best_checkpoint_is_kept_beside_the_latest(tmp_path):
  loop.train_and_evaluate(_config(tmp_path, max_steps=16, eval_every_n=4, save_every_n=4,
                                  keep_checkpoints=1, learning_rate=0.5, grad_clip_norm=0.0))
  evals = {m['step']: m['eval_loss'] for m in map(
      json.loads, (tmp_path / 'metrics.jsonl').read_text().splitlines()) if 'eval_loss' in m}
  best = min(evals, key=evals.get)
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
  assert kept == sorted({best, 16})
  # Stopped at step 8 and resumed (keeping 2): the best checkpoint outlives the resume (its
  # evaluation is saved with it), and the resumed run saves only at a new best of the whole run.
  workdir = tmp_path / 'resumed'
  for steps in (8, 16):
    loop.train_and_evaluate(_config(workdir, max_steps=steps, eval_every_n=4, save_every_n=100,
                                    keep_checkpoints=2, learning_rate=0.5, grad_clip_norm=0.0))
  new_bests = {s for s in evals if all(evals[s] < evals[t] for t in evals if t < s)}
  saves = sorted(new_bests | {8, 16})  # and at the end of each leg
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir())
  assert kept == sorted(set(saves[-2:]) | {best}), (evals, kept)
  readers = checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints'))
  assert readers.pick_step('best', str(workdir)) == best and best != 16
  assert readers.pick_step(None, str(workdir)) == readers.pick_step('16', str(workdir)) == 16
  # A damaged metrics file stops the next run with one line naming it; readers do not read it.
  metrics_file = workdir / 'checkpoints' / str(best) / 'metrics' / 'metrics'
  metrics_file.write_text('{"eval_lo')
  with pytest.raises(checkpoint.CheckpointError, match=f'^{metrics_file} is damaged .*: restore it, or '
                     f'delete it \\(checkpoint {best} is then not ranked'):
    loop.train_and_evaluate(_config(workdir, max_steps=20, eval_every_n=4, keep_checkpoints=2))
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == kept
  assert readers.latest_step() == 16
  with pytest.raises(checkpoint.CheckpointError, match=f'^{metrics_file} is damaged'):
    readers.pick_step('best', str(workdir))
  # --best_metric=bleu keeps the checkpoint of the highest BLEU instead.
  workdir = tmp_path / 'bleu'
  loop.train_and_evaluate(_config(workdir, max_steps=16, eval_every_n=4, save_every_n=4,
                                  keep_checkpoints=1, learning_rate=0.5, grad_clip_norm=0.0,
                                  best_metric='bleu', bleu_examples=32, max_new_tokens=16))
  bleus = {m['step']: m['eval_bleu'] for m in map(
      json.loads, (workdir / 'metrics.jsonl').read_text().splitlines()) if 'eval_bleu' in m}
  assert sorted(bleus) == [4, 8, 12, 16]
  best = max(bleus, key=bleus.get)
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir())
  assert kept == sorted({best, 16})
  assert checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints')).pick_step(
      'best', str(workdir)) == best


def _eval_losses(workdir) -> dict[int, float]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return {m['step']: m['eval_loss'] for m in map(json.loads, lines) if 'eval_loss' in m}


def test_early_stopping_stops_at_its_patience_and_the_count_survives_a_resume(tmp_path, caplog):
  """--early_stopping_patience=3 stops the run, with a checkpoint, at the third evaluation in a
  row that does not beat the best. Stopped and resumed before it, the run stops at the same step
  (each checkpoint saves the count); the same command again trains no further; patience 0 goes
  on exactly as the run that never stopped."""
  settings = dict(eval_every_n=2, save_every_n=100, keep_checkpoints=1, learning_rate=0.5,
                  grad_clip_norm=0.0)
  loop.train_and_evaluate(_config(tmp_path / 'ref', max_steps=16, **settings))
  evals = _eval_losses(tmp_path / 'ref')
  best, since, stop = None, 0, None
  for step in sorted(evals):
    best, since = (step, 0) if best is None or evals[step] < evals[best] else (best, since + 1)
    if since == 3:
      stop = step
      break
  # This rate overshoots: the best comes early, and the first leg below ends after it.
  assert stop is not None and best < stop - 2 and stop < 16, evals
  workdir = tmp_path / 'run'
  patient = dict(settings, early_stopping_patience=3)
  first = loop.train_and_evaluate(_config(workdir, max_steps=stop - 2, **patient))
  assert not first.stopped_early and first.step == stop - 2
  result = loop.train_and_evaluate(_config(workdir, max_steps=16, **patient))
  assert result.stopped_early and result.step == stop
  assert (f'stopping early at step {stop}: 3 evaluations without a better eval_loss than '
          f'{evals[best]:.4f} (checkpoint {best}, --step=best); saved a checkpoint'
          ) in caplog.messages
  assert _eval_losses(workdir) == {s: v for s, v in evals.items() if s <= stop}
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == [best, stop]
  readers = checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints'))
  assert readers.pick_step('best', str(workdir)) == best
  again = loop.train_and_evaluate(_config(workdir, max_steps=16, **patient))
  assert again.stopped_early and again.step == stop
  assert (f'not training: this run stopped early at step {stop} (3 evaluations without a better '
          'eval_loss); pass a larger --early_stopping_patience (or 0) to go on') in caplog.messages
  assert _eval_losses(workdir) == {s: v for s, v in evals.items() if s <= stop}
  going_on = loop.train_and_evaluate(_config(workdir, max_steps=16, **settings))
  assert not going_on.stopped_early and going_on.step == 16
  assert _eval_losses(workdir) == evals
  assert _train_losses(workdir) == _train_losses(tmp_path / 'ref')


# Orbax's own refusal of other shapes leaves reads running that outlive its event loop.
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
def test_init_from_takes_parameters_only(tmp_path):
  first = loop.train_and_evaluate(_config(tmp_path / 'a', max_steps=6))
  second = loop.train_and_evaluate(_config(tmp_path / 'b', max_steps=1, init_from=str(
      tmp_path / 'a'), learning_rate=1e-9))
  assert second.step == 1
  a = first.state.params['embedder']['input_embedding']
  b = second.state.params['embedder']['input_embedding']
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  # Fresh optimizer, step and data: Adam has counted one step, not seven; the log starts at 1.
  counts = [int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(
      second.state.opt_state)[0] if 'count' in jax.tree_util.keystr(path)]
  assert counts and set(counts) == {1}, counts
  assert [s for s, _ in _train_losses(tmp_path / 'b')] == [1]
  assert checkpoint.RunCheckpoints.for_reading(str(tmp_path / 'b' / 'checkpoints')
                                               ).saved_position(1).examples_consumed == 16
  with pytest.raises(checkpoint.CheckpointError, match='^--init_from=.* holds no checkpoint'):
    loop.train_and_evaluate(_config(tmp_path / 'c', init_from=str(tmp_path / 'nothing')))
  with pytest.raises(checkpoint.CheckpointError, match=r'do not fit this model \(params/embedder/'
                     r'input_embedding is \(1024, 128\), the model has \(1024, 512\);'):
    loop.train_and_evaluate(_config(tmp_path / 'd', model='bench', init_from=str(tmp_path / 'a')))
  assert not (tmp_path / 'c').exists() and not (tmp_path / 'd').exists()
  # Read for translation, evaluation or export, the error names the flag the user gave there.
  from gemma_mt import models
  bench = models.abstract_params(models.get_model_spec('bench'), jax.numpy.float32)
  with pytest.raises(checkpoint.CheckpointError) as refused:
    checkpoint.restore_params(str(tmp_path / 'a' / 'checkpoints' / '6'), bench,
                              f'--workdir={tmp_path / "a"} at step 6')
  assert str(refused.value).startswith(
      f'--workdir={tmp_path / "a"} at step 6: its parameters do not fit this model (params/')


def test_export_loads_in_plain_orbax_and_gemma(reference, tmp_path):
  ref_dir, _, ref_params = reference
  out = tmp_path / 'export'
  # The best evaluation (of steps 12 and 24) is the latest's here.
  done = subprocess.run([sys.executable, '-m', 'gemma_mt.export', f'--workdir={ref_dir}',
                         f'--out={out}', '--step=best'], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  import orbax.checkpoint as ocp
  from gemma import gm
  params = ocp.PyTreeCheckpointer().restore(str(out / 'params'))
  _assert_same_params(params, ref_params)
  # Host arrays (no device sharding recorded: any device count loads them), and the gemma
  # library's loader reads the same parameters.
  assert all(type(x) is np.ndarray for x in jax.tree.leaves(params))
  _assert_same_params(gm.ckpts.load_params(str(out / 'params')), ref_params)
  config = json.loads((out / 'config.json').read_text())
  assert config['model'] == 'tiny' and (out / 'tokenizer.model').is_file()
  from gemma_mt import models
  model = gm.nn.Transformer(config=models.get_model_spec('tiny').transformer_config(),
                            dtype=jax.numpy.float32)
  logits = model.apply({'params': params}, jax.numpy.array([[2, 830, 337]])).logits
  assert logits.shape == (1, 3, 1024)
  again = subprocess.run([sys.executable, '-m', 'gemma_mt.export', f'--workdir={ref_dir}',
                          f'--out={out}'], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
  assert again.returncode == 2 and 'not empty' in again.stderr


def test_readers_leave_a_save_in_flight_alone_and_closing_leaves_no_thread(reference, tmp_path):
  """What reads a workdir (resume checks, translate, evaluate, export) never deletes the
  temporary directory of a save that a running job is writing; the job's own store removes
  such leftovers on opening and is done with them, and with its threads, when closed."""
  from gemma_mt import inference
  ref_dir, _, ref_params = reference
  shutil.copytree(ref_dir, tmp_path / 'run')
  directory = tmp_path / 'run' / 'checkpoints'
  complete = _complete_steps(tmp_path / 'run')
  # Many, so that removing them takes longer than opening and closing a store.
  unfinished = [directory / f'{30 + i}.orbax-checkpoint-tmp-{1796000000 + i}' for i in range(300)]
  for path in unfinished:
    (path / 'state').mkdir(parents=True)
  before = set(threading.enumerate())
  # The lock of a job training there, held as its process 0 holds it: readers take none.
  training = workdir_lock.WorkdirLock(str(tmp_path / 'run'))
  training.acquire()
  reader = checkpoint.RunCheckpoints.for_reading(str(directory))
  try:
    assert reader.latest_step() == 24 and reader.saved_config(24).max_steps == 24
    with pytest.raises(ValueError, match='opened for reading'):
      reader.save(30, {}, None, reader.saved_config(24), reader.saved_position(24), force=True)
  finally:
    reader.close()
  _assert_same_params(inference.from_workdir(str(tmp_path / 'run')).params, ref_params)
  training.release()
  for thread in set(threading.enumerate()) - before:
    thread.join(timeout=60)  # whatever a reader started has had its chance to delete
  assert all(path.is_dir() for path in unfinished)
  writer = checkpoint.RunCheckpoints(str(directory), keep=9, save_every_n=9)
  writer.close()
  assert not [path for path in unfinished if path.exists()]
  # Only the idle workers of the event loops Orbax closed may remain, and they are ending.
  for thread in set(threading.enumerate()) - before:
    thread.join(timeout=10)
  assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
  assert _complete_steps(tmp_path / 'run') == complete


@pytest.fixture
def tiny_disk(tmp_path):
  """A 24 MiB file system: room for two checkpoints of the tiny model, not three."""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=24M', 'tmpfs', str(mount_point)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f'cannot mount a small file system here: {done.stderr.strip()}')
  yield mount_point
  subprocess.run(['umount', str(mount_point)], check=True)


def test_full_disk_stops_with_one_line_and_keeps_earlier_checkpoints(tiny_disk):
  workdir = tiny_disk / 'run'
  done = subprocess.run(
      [sys.executable, '-m', 'gemma_mt.train', f'--workdir={workdir}', '--max_steps=20',
       '--save_every_n=2', '--keep_checkpoints=10', '--batch_size=8', '--eval_every_n=100',
       '--num_translations=0', '--bleu_examples=0'],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  # Orbax's background threads log the failure too; their lines may interleave with ours.
  # Under load a progress-bar redraw can share our line: take it from where it starts.
  errors = [l[l.index('error: '):] for l in done.stderr.splitlines() if 'error: ' in l]
  assert len(errors) == 1 and 'failed' in errors[0] and 'earlier checkpoints are intact' in errors[0]
  store = checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints'))
  steps = store.all_steps()
  assert steps and steps == list(range(2, 2 * len(steps) + 1, 2))
  params = _final_params(workdir)  # the latest complete checkpoint reads back
  assert jax.tree.leaves(params)


def test_save_every_minutes_saves_between_step_cadences(tmp_path):
  # --save_every_n is out of reach; a save at least every second must still happen. The first
  # step and the last are saved anyway (Orbax's time policy starts with a save): only saves
  # strictly between them show that time-based saving works.
  loop.train_and_evaluate(_config(tmp_path, max_steps=60, save_every_n=1000, eval_every_n=1000,
                                  save_every_minutes=1 / 60, keep_checkpoints=100,
                                  log_every_n=1))
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
  reports = {m['step']: m['step_time_sec'] for m in map(
      json.loads, (tmp_path / 'metrics.jsonl').read_text().splitlines()) if 'step_time_sec' in m}
  if sum(reports.values()) > 2.0:  # the run lasted long enough for a save every second
    assert [s for s in steps if 1 < s < 60], steps
  assert steps[-1] == 60

"""Commands start without TensorFlow (``tensorflow_startup.set_environment``), yet gemma's type
checks and a TFDS dataset work with the real one once something imports it."""

import json
import subprocess
import sys
import tarfile

from conftest import REPO, subprocess_env, tensorboard_events


def _python(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


_LOADED = ('[m for m in ("tensorflow", "keras", "sklearn") if sys.modules.get(m) is not None]')


def test_gemma_imports_without_tensorflow_and_checks_its_tensors_once_imported(tmp_path):
  done = _python(f"""
import sys
from gemma_mt import tensorflow_startup
tensorflow_startup.set_environment()
import gemma_mt.train.loop
from gemma import gm
from kauldron import kd, typing as kd_typing
from kauldron.train import setup_utils
from clu import metric_writers
import numpy as np
gm.nn.Gemma3_270M  # imports kauldron's trainer, and through it clu's TensorBoard writer
print('before', {_LOADED}, isinstance(np.zeros(2), kd_typing.TfFloat['2']),
      kd.train.TrainState.__name__, type(metric_writers.SummaryWriter).__name__)
from tensorboard.compat import tf as tensorboard_tf
print('tensorboard', tensorboard_tf.io.gfile.__name__)
print('on use', setup_utils.tf.config.__name__, {_LOADED}[:1])
import tensorflow as tf
writer = metric_writers.SummaryWriter({str(tmp_path)!r})
print('writer', type(writer).__module__, type(writer).__name__,
      type(metric_writers.SummaryWriter({str(tmp_path)!r})) is type(writer))
print('after', {_LOADED}[:1], isinstance(tf.zeros([2]), kd_typing.TfFloat['2']),
      isinstance(tf.zeros([3]), kd_typing.TfFloat['2']),
      isinstance(tf.zeros([2], tf.int32), kd_typing.TfFloat['2']),
      isinstance(np.zeros(2, np.float32), kd_typing.TfFloat['2']),
      isinstance(tf.zeros([2]), kd_typing.XArray['2']),
      isinstance(np.zeros(2), kd_typing.XArray['2']))
""")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines() == [
      'before [] False TrainState function',
      'tensorboard tensorboard.compat.tensorflow_stub.io.gfile',
      "on use tensorflow._api.v2.config ['tensorflow']",
      'writer clu.metric_writers.tf.summary_writer SummaryWriter True',
      "after ['tensorflow'] True False False False True True",
  ]


def test_tensorflow_imported_first_is_the_one_gemma_uses():
  done = _python("""
import tensorflow
from gemma_mt import tensorflow_startup
tensorflow_startup.set_environment()
from kauldron.typing import array_types
print(array_types.tf is tensorflow, isinstance(tensorflow.zeros([2]), array_types.TfFloat['2']))
""")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines() == ['True True']


def test_training_on_tfds_mtnt_imports_tensorflow_when_the_dataset_needs_it(tmp_path,
                                                                              mtnt_valid_tsv):
  """The training command on MTNT through TFDS, prepared offline from its archive: the dataset
  imports the real TensorFlow after gemma was imported without it."""
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'MTNT.1.1.tar.gz', 'w:gz') as tar:
    for split in ('train', 'valid', 'test'):
      tar.add(mtnt_valid_tsv, arcname=f'MTNT/{split}/{split}.en-fr.tsv')
  workdir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, '-m', 'gemma_mt.train', '--model=tiny', '--dataset=tfds:mtnt/en-fr',
       f'--tfds_data_dir={tmp_path / "tfds"}', f'--tfds_manual_dir={manual}',
       f'--workdir={workdir}', '--max_seq_len=64', '--batch_size=8', '--max_steps=2',
       '--eval_every_n=2', '--save_every_n=2', '--log_every_n=1', '--num_translations=1',
       '--bleu_examples=0'],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in metrics if 'train_loss' in m] == [1, 2]
  assert [m['step'] for m in metrics if 'eval_loss' in m] == [2]
  assert [e.step for e in tensorboard_events(workdir).Tensors('eval_loss')] == [2]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2']

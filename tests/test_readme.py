"""The examples in README.md run as written, in a scratch directory: its Python blocks, and its
shell commands for statistics, a two-process launch and an export (a training command gets
flags appended that shorten it; absl lets the last value of a flag win)."""

import os
import re
import subprocess
import sys

from conftest import REPO, subprocess_env

SHORTEN = (' --max_steps=4 --eval_every_n=4 --save_every_n=4 --num_translations=0'
           ' --bleu_examples=0')


def _blocks(language: str) -> list[str]:
  return re.findall(rf'```{language}\n(.*?)```', (REPO / 'README.md').read_text(), flags=re.DOTALL)


def _bash_block(containing: str) -> str:
  block = next(b for b in _blocks('bash') if containing in b)
  return '\n'.join(line.strip() for line in block.strip().splitlines())


def _scratch(tmp_path, mtnt_valid_tsv):
  """A directory that looks like the repository root to the README's commands."""
  for name in ('.venv', 'configs'):
    os.symlink(REPO / name, tmp_path / name)
  (tmp_path / 'MTNT' / 'valid').mkdir(parents=True)
  os.symlink(mtnt_valid_tsv, tmp_path / 'MTNT' / 'valid' / 'valid.en-fr.tsv')


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', '-c', 'set -e\n' + command], cwd=cwd, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_shell_examples_stats_launch_and_export(tmp_path, mtnt_valid_tsv):
  _scratch(tmp_path, mtnt_valid_tsv)
  stats = _bash(_bash_block('gemma_mt.stats'), tmp_path)
  assert stats.returncode == 0, stats.stderr[-3000:]
  assert 'MTNT/{split}/{split}.en-fr.tsv split valid' in stats.stdout
  assert '"split": "train"' in stats.stdout
  launch = _bash(_bash_block('gemma_mt.launch').replace('\\\n', ' ') + SHORTEN +
                 ' --workdir=runs/demo', tmp_path)
  assert launch.returncode == 0, launch.stderr[-3000:]
  assert '[process 1]' in launch.stderr and 'final eval_loss' in launch.stdout
  export = _bash(_bash_block('gemma_mt.export').splitlines()[0], tmp_path)
  assert export.returncode == 0, export.stderr[-3000:]
  load_block = next(b for b in _blocks('python') if 'PyTreeCheckpointer().restore' in b)
  done = subprocess.run([sys.executable, '-c', load_block], cwd=tmp_path, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '(1, 11, 1024)' in done.stdout


def test_library_examples(tmp_path):
  blocks = _blocks('python')
  train_block = next(b for b in blocks if 'train_and_evaluate(TrainConfig' in b)
  pieces_block = next(b for b in blocks if 'train_step = jax.jit' in b)
  for block in (train_block, pieces_block):
    done = subprocess.run([sys.executable, '-c', block], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

"""The examples in README.md run as written, in a scratch directory: its Python blocks, and its
shell commands for statistics and an export. (Its two-process launch command is the first leg
of tests/test_multiprocess.py's chain test.)"""

import os
import subprocess
import sys

from conftest import REPO, readme_bash_block, readme_blocks, subprocess_env

def _scratch(tmp_path, mtnt_valid_tsv):
  """A directory that looks like the repository root to the README's commands."""
  for name in ('.venv', 'configs'):
    os.symlink(REPO / name, tmp_path / name)
  (tmp_path / 'MTNT' / 'valid').mkdir(parents=True)
  os.symlink(mtnt_valid_tsv, tmp_path / 'MTNT' / 'valid' / 'valid.en-fr.tsv')


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', '-c', 'set -e\n' + command], cwd=cwd, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_readme_examples(tmp_path, mtnt_valid_tsv):
  """Statistics, the library's training example (``runs/mine``), the export command (its
  ``runs/demo`` is that run) and the Python block that loads the export."""
  _scratch(tmp_path, mtnt_valid_tsv)
  stats = _bash(readme_bash_block('gemma_mt.stats'), tmp_path)
  assert stats.returncode == 0, stats.stderr[-3000:]
  assert 'MTNT/{split}/{split}.en-fr.tsv split valid' in stats.stdout
  assert '"split": "train"' in stats.stdout
  blocks = readme_blocks('python')
  train_block = next(b for b in blocks if 'train_and_evaluate(TrainConfig' in b)
  pieces_block = next(b for b in blocks if 'train_step = jax.jit' in b)
  # Both in one interpreter (one start-up less); each imports what it uses.
  done = subprocess.run([sys.executable, '-c', train_block + '\n' + pieces_block], cwd=tmp_path,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  (tmp_path / 'runs' / 'demo').symlink_to(tmp_path / 'runs' / 'mine')
  export = _bash(readme_bash_block('gemma_mt.export --workdir=runs/demo').splitlines()[0], tmp_path)
  assert export.returncode == 0, export.stderr[-3000:]
  load_block = next(b for b in blocks if 'PyTreeCheckpointer().restore' in b)
  done = subprocess.run([sys.executable, '-c', load_block], cwd=tmp_path, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '(1, 11, 1024)' in done.stdout

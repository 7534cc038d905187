"""The Python examples in README.md run as written (in a scratch directory)."""

import re
import subprocess
import sys

from conftest import REPO, subprocess_env


def _python_blocks() -> list[str]:
  return re.findall(r'```python\n(.*?)```', (REPO / 'README.md').read_text(), flags=re.DOTALL)


def test_library_examples_and_export_loading(tmp_path):
  blocks = _python_blocks()
  train_block = next(b for b in blocks if 'train_and_evaluate(TrainConfig' in b)
  pieces_block = next(b for b in blocks if 'train_step = jax.jit' in b)
  load_block = next(b for b in blocks if 'PyTreeCheckpointer().restore' in b)
  env = subprocess_env()
  for block in (train_block, pieces_block):
    done = subprocess.run([sys.executable, '-c', block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
  export = subprocess.run([sys.executable, '-m', 'gemma_mt.export', '--workdir=runs/mine',
                           '--out=exports/demo'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
  assert export.returncode == 0, export.stderr[-3000:]
  done = subprocess.run([sys.executable, '-c', load_block], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '(1, 11, 1024)' in done.stdout

"""Benchmark: the CPU a gemma_mt process spends starting up, before it trains.

    .venv/bin/python bench/startup.py [--quick] [--repeats=5]

Each row imports the training modules (``gemma_mt.train.loop``: jax, gemma and, through gemma,
TensorFlow) in a fresh Python process, as every ``python -m gemma_mt.train`` does, and reports
the median user + system CPU and wall time over ``--repeats`` runs. The rows alternate run by run
so that both see the same machine. "keras loaded" is TensorFlow's default; "keras skipped" is
what the commands set (``gemma_mt.tensorflow_startup``). Their ratio is the row's CPU over the
default's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CODE = ('import sys, gemma_mt.train.loop\n'
        'print(",".join(m for m in ("keras", "sklearn") if m in sys.modules) or "-")')
ROWS = {
    'keras loaded (TensorFlow default)': {'TF_USE_LEGACY_KERAS': None},
    'keras skipped (gemma_mt commands)': {'TF_USE_LEGACY_KERAS': '1'},
}


def _run(overrides: dict[str, str | None]) -> tuple[float, float, str]:
  """(CPU seconds, wall seconds, loaded modules) of one fresh process importing CODE."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  for key, value in overrides.items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  before, started = os.times(), time.monotonic()
  done = subprocess.run([sys.executable, '-c', CODE], env=env, capture_output=True, text=True,
                        check=True)
  wall, after = time.monotonic() - started, os.times()
  cpu = (after.children_user + after.children_system
         - before.children_user - before.children_system)
  return cpu, wall, done.stdout.strip().splitlines()[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='one run per row')
  parser.add_argument('--repeats', type=int, default=5, help='runs per row (median reported)')
  args = parser.parse_args()
  if args.repeats < 1:
    parser.exit(2, 'error: --repeats must be at least 1\n')
  repeats = 1 if args.quick else args.repeats
  results: dict[str, list[tuple[float, float, str]]] = {name: [] for name in ROWS}
  for _ in range(repeats):
    for name, overrides in ROWS.items():
      results[name].append(_run(overrides))
  print(f'`import gemma_mt.train.loop` in a fresh process, median of {repeats} run(s) per row')
  print()
  print('| start-up | CPU (s) | wall (s) | CPU over the default | also imported |')
  print('|---|---|---|---|---|')
  baseline = None
  for name, runs in results.items():
    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    baseline = baseline or cpu
    print(f'| {name} | {cpu:.2f} | {wall:.2f} | {cpu / baseline:.2f} | {runs[-1][2]} |')


if __name__ == '__main__':
  main()

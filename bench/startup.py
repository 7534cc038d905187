"""Benchmark: the CPU a gemma_mt process spends starting up, before it trains.

    .venv/bin/python bench/startup.py [--quick] [--repeats=5]

Each row imports modules in a fresh Python process and reports the median user + system CPU and
wall time over ``--repeats`` runs; the rows alternate run by run so that all see the same
machine. ``gemma_mt.train.loop`` is what every ``python -m gemma_mt.train`` imports (jax, gemma
and, through gemma's ``kauldron.typing``, TensorFlow with all of Keras and scikit-learn under
it); the second row imports it after ``tensorflow_startup.set_environment()``, as every gemma_mt
command does, which imports gemma without TensorFlow. The ratio is each row's CPU over the first
row's; the last column names which of TensorFlow, Keras and scikit-learn the process loaded.

The last rows start a fresh run's random parameters (after the command's imports): flax's eager
``model.init``, which dispatches every draw and compiles the model's forward pass only to drop
its result, against ``models.init_params``, one program compiled at
``models.INIT_COMPILER_OPTIONS``; ``tiny``, and without ``--quick`` Gemma 3 270M's shape too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# A module counts once imported: set_environment leaves a None entry for scikit-learn.
REPORT = ('print(",".join(m for m in ("tensorflow", "keras", "sklearn")'
          ' if sys.modules.get(m) is not None) or "-")')
AS_A_COMMAND = ('import sys\nfrom gemma_mt import tensorflow_startup\n'
                'tensorflow_startup.set_environment()\n')
ROWS = {  # name: code
    'import gemma_mt.train.loop': 'import sys, gemma_mt.train.loop',
    'import gemma_mt.train.loop as a command does (set_environment first)': (
        AS_A_COMMAND + 'import gemma_mt.train.loop'),
    'import tensorflow': 'import sys, tensorflow',
    'import jax': 'import sys, jax',
}
INIT = (AS_A_COMMAND + 'import jax, jax.numpy as jnp\nfrom gemma_mt import models\n'
        'model = models.get_model_spec({name!r}).transformer(jnp.float32)\n')
INIT_ROWS = {  # name: code, with {name} the model's
    'random {name} parameters: flax model.init, eager': INIT + (
        'jax.block_until_ready(model.init(jax.random.key(0),\n'
        '                                  jnp.ones((1, models.registry.INIT_TOKENS), jnp.int32)))'),
    'random {name} parameters: models.init_params': INIT + (
        'jax.block_until_ready(models.init_params(model, 0))'),
}


def _run(code: str) -> tuple[float, float, str]:
  """(CPU seconds, wall seconds, TensorFlow, Keras and scikit-learn if loaded) of one fresh
  process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  before, started = os.times(), time.monotonic()
  done = subprocess.run([sys.executable, '-c', f'{code}\n{REPORT}'], env=env,
                        capture_output=True, text=True, check=True)
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
  rows = dict(ROWS)
  for model in ('tiny',) if args.quick else ('tiny', 'gemma3-270m'):
    rows.update({name.format(name=model): code.format(name=model)
                 for name, code in INIT_ROWS.items()})
  results: dict[str, list[tuple[float, float, str]]] = {name: [] for name in rows}
  for _ in range(repeats):
    for name, code in rows.items():
      results[name].append(_run(code))
  print(f'Imports in a fresh process, median of {repeats} run(s) per row')
  print()
  print('| start-up | CPU (s) | wall (s) | CPU over the first row | loaded |')
  print('|---|---|---|---|---|')
  baseline = None
  for name, runs in results.items():
    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    baseline = baseline or cpu
    print(f'| {name} | {cpu:.2f} | {wall:.2f} | {cpu / baseline:.2f} | {runs[-1][2]} |')


if __name__ == '__main__':
  main()

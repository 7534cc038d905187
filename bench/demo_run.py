"""Benchmark: the embedded default run, as a user starts it. Prints one table.

    .venv/bin/python bench/demo_run.py [--num_translations=20]

Measures wall time of ``python -m gemma_mt.train --flagfile=configs/demo.flags`` (start-up,
compilation, training, evaluation, translation), the first and last evaluation loss, and how many
held-out sentences are translated exactly, and the validation BLEU and chrF++ the run logs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_translations', type=int, default=20)
  parser.add_argument('--quick', action='store_true',
                      help='40 steps, BLEU on 20 pairs: checks that the benchmark runs')
  args = parser.parse_args()
  shorten = []
  if args.quick:
    args.num_translations = 2
    shorten = ['--max_steps=40', '--eval_every_n=20', '--bleu_every_n=40', '--bleu_examples=20',
               '--warmup_steps=10']
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / 'demo'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, '-m', 'gemma_mt.train', '--flagfile=configs/demo.flags',
         f'--workdir={workdir}', f'--num_translations={args.num_translations}', *shorten],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [(m['step'], m['eval_loss'], m['eval_accuracy']) for m in metrics if 'eval_loss' in m]
  scores = [m for m in metrics if 'eval_bleu' in m]
  trains = [m for m in metrics if 'train_loss' in m]
  exact = len(re.findall(r'^  =  ', done.stdout, flags=re.MULTILINE))
  wait = sum(m['data_wait_fraction'] for m in trains) / len(trains)
  rows = [
      ('wall time, whole run (s)', f'{wall:.1f}'),
      ('steps', str(trains[-1]['step'])),
      (f'first eval loss (step {evals[0][0]})', f'{evals[0][1]:.4f}'),
      (f'last eval loss (step {evals[-1][0]})', f'{evals[-1][1]:.4f}'),
      ('last / first eval loss', f'{evals[-1][1] / evals[0][1]:.3f}'),
      ('last eval token accuracy', f'{evals[-1][2]:.4f}'),
      ('exact translations', f'{exact}/{args.num_translations}'),
      *((f'validation BLEU (step {m["step"]})', f'{m["eval_bleu"]:.2f}') for m in scores),
      (f'validation chrF++ (step {scores[-1]["step"]})', f'{scores[-1]["eval_chrf"]:.2f}'),
      ('mean data wait / step time', f'{wait:.4f}'),
      ('target tokens/s (last report)', f'{trains[-1]["target_tokens_per_sec"]:.0f}'),
  ]
  width = max(len(name) for name, _ in rows)
  print(f'| {"measure":<{width}} | value |')
  print(f'|{"-" * (width + 2)}|-------|')
  for name, value in rows:
    print(f'| {name:<{width}} | {value} |')


if __name__ == '__main__':
  main()

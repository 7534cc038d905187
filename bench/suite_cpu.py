"""Benchmark: where the test suite's CPU goes, per module and per test.

    .venv/bin/python bench/suite_cpu.py [--top=25] [pytest arguments, default: tests]

The suite is bound by CPU on the 2-core machines (see BUILD.md), so its wall time says little
about which test to shorten: a test's wall time grows with whatever runs beside it. This runs
pytest (with the project's own options: three xdist workers) and loads this file into every
worker as a plugin that records, around each test's setup, call and teardown, the CPU time of
the test process (``os.times()`` user + system) and of the child processes it waited for (CLI
runs, multi-process jobs, the transformers reference). A session fixture's cost goes to the
first test that uses it. Then JAX's tracing, lowering and XLA compilation in the test processes
(JAX's monitoring events), and the programs XLA compiled in the run, by name, from the new entries
of the tests' persistent compilation cache: how many, and the compile seconds JAX wrote into each,
in the test processes and the CLIs they start alike (start from an empty cache, ``rm -rf
.pytest_cache``, to count all a fresh machine compiles).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT_ENV = 'GEMMA_MT_SUITE_CPU_DIR'
# tests/conftest.py's persistent compilation cache: one new entry per program compiled in the run.
COMPILATION_CACHE = REPO / '.pytest_cache' / 'jax-compilation-cache'


# JAX's monitoring events, summed per test process: seconds tracing to jaxprs, lowering to
# StableHLO and in the backend (an XLA compilation, or a read of the persistent cache: the hits
# and their read time are counted apart).
_JAX_DURATIONS = {'/jax/core/compile/jaxpr_trace_duration': 'trace_s',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower_s',
                  '/jax/core/compile/backend_compile_duration': 'backend_s',
                  '/jax/compilation_cache/cache_retrieval_time_sec': 'cache_read_s'}
_JAX_EVENTS = {'/jax/compilation_cache/cache_hits': 'cache_hits'}
_JAX_TOTALS = pytest.StashKey[collections.Counter]()


def pytest_configure(config: pytest.Config) -> None:
  """In each test process: JAX monitoring listeners that sum the events above."""
  if OUT_ENV not in os.environ:
    return
  from jax import monitoring  # pylint: disable=import-outside-toplevel

  totals: collections.Counter = collections.Counter()
  config.stash[_JAX_TOTALS] = totals

  def on_duration(event: str, duration_secs: float, **_) -> None:
    if event in _JAX_DURATIONS:
      totals[_JAX_DURATIONS[event]] += duration_secs
      if event == '/jax/core/compile/backend_compile_duration':
        totals['backend_calls'] += 1

  def on_event(event: str, **_) -> None:
    if event in _JAX_EVENTS:
      totals[_JAX_EVENTS[event]] += 1

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
  """The plugin (loaded into every worker by ``pytest -p suite_cpu``): one JSON line per test
  into the folder named by $GEMMA_MT_SUITE_CPU_DIR."""
  del nextitem
  totals = item.config.stash.get(_JAX_TOTALS, collections.Counter())
  before = collections.Counter(totals)
  start, started = os.times(), time.monotonic()
  yield
  end = os.times()
  worker = os.environ.get('PYTEST_XDIST_WORKER', 'main')
  jax_delta = {key: totals[key] - before[key] for key in (
      *_JAX_DURATIONS.values(), *_JAX_EVENTS.values(), 'backend_calls')}
  record = dict(test=item.nodeid.split('@')[0],  # without the xdist_group suffix
                own=end.user + end.system - start.user - start.system,
                children=(end.children_user + end.children_system - start.children_user
                          - start.children_system),
                wall=time.monotonic() - started, **jax_delta)
  with open(pathlib.Path(os.environ[OUT_ENV]) / f'{worker}.jsonl', 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def _table(records: list[dict], top: int, wall: float, cpu: float) -> str:
  modules: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
  for r in records:
    row = modules[r['test'].split('::')[0]]
    row[0] += 1
    row[1] += r['own']
    row[2] += r['children']
    row[3] += r['wall']
  total = sum(r['own'] + r['children'] for r in records)
  lines = [f'{len(records)} tests in {wall:.0f} s of wall time; CPU of pytest and its '
           f'workers (user + system): {cpu:.0f} s; of the tests (own + children): {total:.0f} s',
           '', '| module | tests | CPU own (s) | CPU children (s) | CPU share | wall, summed (s) |',
           '|---|---|---|---|---|---|']
  for name, (count, own, children, summed) in sorted(
      modules.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
    lines.append(f'| {name} | {count} | {max(own, 0):.1f} | {max(children, 0):.1f} | '
                 f'{(own + children) / max(total, 1e-9):.1%} | {summed:.1f} |')
  lines += ['', f'| the {top} tests with the most CPU | CPU own (s) | CPU children (s) | '
                f'wall (s) |', '|---|---|---|---|']
  for r in sorted(records, key=lambda r: -(r['own'] + r['children']))[:top]:
    lines.append(f"| {r['test']} | {max(r['own'], 0):.1f} | {max(r['children'], 0):.1f} | "
                 f"{r['wall']:.1f} |")
  return '\n'.join(lines)


def _jax_table(records: list[dict], top: int) -> str:
  """JAX's own time in the test processes (not in the processes they start), by module and for
  the tests that compile the most."""
  def compiled(r: dict) -> float:  # the backend's time less its persistent-cache reads
    return r.get('backend_s', 0.0) - r.get('cache_read_s', 0.0)

  def compilations(r: dict) -> int:  # backend calls that were not persistent-cache hits
    return r.get('backend_calls', 0) - r.get('cache_hits', 0)

  modules: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for r in records:
    row = modules[r['test'].split('::')[0]]
    row['compiled_s'] += compiled(r)
    row['compiles'] += compilations(r)
    for key in ('cache_hits', 'trace_s', 'lower_s'):
      row[key] += r.get(key, 0)
  header = ('XLA compilations | XLA compiling (s) | persistent-cache hits | tracing (s) | '
            'lowering (s) |')
  lines = ['JAX in the test processes (wall seconds of its monitoring events; the processes the '
           'tests start are not counted)', '', f'| module | {header}',
           '|---|---|---|---|---|---|']
  for name, row in sorted(modules.items(), key=lambda kv: -kv[1]['compiled_s']):
    lines.append(f"| {name} | {row['compiles']} | {row['compiled_s']:.1f} | {row['cache_hits']} | "
                 f"{row['trace_s']:.1f} | {row['lower_s']:.1f} |")
  lines += ['', f'| the {top} tests that compile the longest | {header}',
            '|---|---|---|---|---|---|']
  for r in sorted(records, key=lambda r: -compiled(r))[:top]:
    lines.append(f"| {r['test']} | {compilations(r)} | "
                 f"{compiled(r):.1f} | {r.get('cache_hits', 0)} | {r.get('trace_s', 0.0):.1f} | "
                 f"{r.get('lower_s', 0.0):.1f} |")
  return '\n'.join(lines)


def _cache_entries() -> set[str]:
  return set(os.listdir(COMPILATION_CACHE)) if COMPILATION_CACHE.is_dir() else set()


def _compile_seconds(entry: str) -> int:
  """The compile time JAX recorded in a cache entry: whole seconds, wall, in front of the
  serialized executable (``compilation_cache.combine_executable_and_time``)."""
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel

  data = compilation_cache.decompress_executable((COMPILATION_CACHE / entry).read_bytes())
  return int.from_bytes(data[:4], byteorder='big')


def _compiled_table(before: set[str], after: set[str], top: int) -> str:
  """The programs XLA compiled in the run, by name: the cache's new entries (``NAME-HASH-cache``,
  one per distinct program; the same program in two tests or processes is compiled once), with
  the compile seconds JAX wrote into each (every process writes there but the non-first
  processes of a multi-process job, so the CLIs the tests start are counted too)."""
  programs, seconds, longest = collections.Counter(), collections.Counter(), collections.Counter()
  new = [e for e in after - before if e.endswith('-cache')]
  for entry in new:
    name, compiled_s = entry.rsplit('-', 2)[0], _compile_seconds(entry)
    programs[name] += 1
    seconds[name] += compiled_s
    longest[name] = max(longest[name], compiled_s)
  lines = [f'{len(new)} programs compiled (new entries of the persistent compilation cache; '
           f'{len(before)} were there before the run), {len(programs)} names; '
           f'{sum(seconds.values())} s of compilation recorded in them (wall; JAX truncates each '
           "program's to whole seconds, so this is a lower bound)", '',
           f'| the {top} program names that took the longest to compile | programs | '
           'compile (s) | longest (s) |', '|---|---|---|---|']
  lines += [f'| {name} | {programs[name]} | {total} | {longest[name]} |'
            for name, total in seconds.most_common(top)]
  lines += ['', f'| the {top} program names compiled most often | programs |', '|---|---|']
  lines += [f'| {name} | {count} |' for name, count in programs.most_common(top)]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--top', type=int, default=25, help='tests listed one by one')
  parser.add_argument('--quick', action='store_true',
                      help='two small modules instead of the whole suite: seconds')
  args, pytest_args = parser.parse_known_args()
  if args.quick and not pytest_args:
    pytest_args = ['tests/test_config.py', 'tests/test_records.py']
  with tempfile.TemporaryDirectory(prefix='suite-cpu-') as out:
    env = dict(os.environ)
    env[OUT_ENV] = out
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO / 'bench'), str(REPO), *filter(None, [env.get('PYTHONPATH')])])
    cached = _cache_entries()
    start, started = os.times(), time.monotonic()
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'suite_cpu',
                           *(pytest_args or ['tests'])], cwd=REPO, env=env, check=False)
    end, wall = os.times(), time.monotonic() - started
    records = [json.loads(line) for path in sorted(pathlib.Path(out).glob('*.jsonl'))
               for line in path.read_text(encoding='utf-8').splitlines()]
  if not records:
    print(f'error: pytest ran no test (exit status {done.returncode})', file=sys.stderr)
    sys.exit(2)
  cpu = end.children_user + end.children_system - start.children_user - start.children_system
  print(_table(records, args.top, wall, cpu))
  print()
  print(_jax_table(records, min(args.top, 15)))
  print()
  print(_compiled_table(cached, _cache_entries(), min(args.top, 15)))
  if done.returncode:
    print(f'(pytest exit status {done.returncode}: some tests failed)')


if __name__ == '__main__':
  main()

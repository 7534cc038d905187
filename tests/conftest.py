"""Shared fixtures. Tests that need several devices get 8 simulated CPU devices."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from gemma_mt import tensorflow_startup

# As every command does: the test processes import gemma without TensorFlow, Keras and
# scikit-learn (about 5 s of CPU per xdist worker); a test that needs TensorFlow imports it.
tensorflow_startup.set_environment()

REPO = pathlib.Path(__file__).resolve().parent.parent
# Compiled steps are shared between tests and the processes they start (the same tiny model
# compiles dozens of times otherwise); executables are identical, so results are too.
COMPILATION_CACHE = REPO / '.pytest_cache' / 'jax-compilation-cache'

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir', str(COMPILATION_CACHE))
# Every compilation, not only those over a second: the tiny model's are many and short.
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
SHARED_MTNT = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'

# Fixtures (session scope) that run a training job, or load the real 270M (``gemma3``: about
# 10 s of CPU), for several tests. Their tests go to one xdist worker, so the job runs once;
# session scope, because a worker runs other modules' tests in between, and a module-scoped
# fixture would be torn down and run again each time.
SHARED_RUNS = ('reference', 'trained', 'lora_run', 'cli_reference', 'uninterrupted', 'gemma3')
# The modules of the longest tests and groups, scheduled first: started last, one of them would
# run alone on one core at the end of the suite.
LONGEST_FIRST = ('test_real_models', 'test_multiprocess', 'test_checkpoint', 'test_lora',
                 'test_cli', 'test_readme', 'test_translate', 'test_sharding')


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  for item in items:
    for name in SHARED_RUNS:
      if name in getattr(item, 'fixturenames', ()):
        item.add_marker(pytest.mark.xdist_group(f'{item.module.__name__}.{name}'))
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))


def pytest_configure(config: pytest.Config) -> None:
  # pytest 9.2 keeps a node's id where pytest-xdist 3.8 does not write the group into it: the
  # groups are lost without a word, and each group's job runs once per worker.
  if config.getvalue('dist') == 'loadgroup' and pytest.version_tuple[:2] >= (9, 2):
    raise pytest.UsageError(f'pytest {pytest.__version__} breaks --dist loadgroup: install the '
                            "test extra (pip install -e '.[test]')")


@pytest.fixture(scope='session')
def demo_tokenizer():
  from gemma_mt import models
  from gemma_mt.data.tokenizer import GemmaTokenizer

  return GemmaTokenizer(models.DEMO_TOKENIZER)


@pytest.fixture(scope='session')
def mtnt_valid_tsv() -> pathlib.Path:
  if not SHARED_MTNT.is_file():
    pytest.skip(f'shared MTNT data not found at {SHARED_MTNT}')
  return SHARED_MTNT


def subprocess_env() -> dict[str, str]:
  """The environment for running the CLIs as a user would, with the repo importable."""
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['JAX_COMPILATION_CACHE_DIR'] = str(COMPILATION_CACHE)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def train_reporting_imports(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
  """``python -m gemma_mt.train ARGS``, then a last stdout line ``HEAVY [...]``: the heavy
  libraries it imported (a None entry in ``sys.modules`` blocks an import, not counted)."""
  code = (
      'import runpy, sys\n'
      f'sys.argv = ["gemma_mt.train", *{list(args)!r}]\n'
      'try:\n'
      '  runpy.run_module("gemma_mt.train", run_name="__main__")\n'
      'except SystemExit as e:\n'
      '  status = e.code\n'
      'print("HEAVY", sorted(m for m in ("jax", "tensorflow", "gemma", "grain", "keras", "sklearn")\n'
      '                      if sys.modules.get(m) is not None))\n'
      'sys.exit(status)\n'
  )
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def tensorboard_events(workdir):
  """The run's TensorBoard events as TensorBoard reads them (every point kept; restart markers
  applied): ``.Tensors(tag)`` lists the points of one tag."""
  from tensorboard.backend.event_processing import plugin_event_accumulator as accumulator
  events = accumulator.EventAccumulator(str(pathlib.Path(workdir) / 'tensorboard'),
                                        size_guidance={accumulator.TENSORS: 0})
  events.Reload()
  return events


def readme_blocks(language: str) -> list[str]:
  """The ```language fenced blocks of README.md."""
  return re.findall(rf'```{language}\n(.*?)```', (REPO / 'README.md').read_text(), flags=re.DOTALL)


def readme_bash_block(containing: str) -> str:
  """The first bash block of README.md that contains ``containing``, lines stripped."""
  block = next(b for b in readme_blocks('bash') if containing in b)
  return '\n'.join(line.strip() for line in block.strip().splitlines())

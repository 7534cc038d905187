"""The benchmark scripts' own checks (their numbers are never asserted; CI runs each with
--quick, and bench/gpu_suite.sh with --cpu)."""

import subprocess
import sys

from conftest import REPO, subprocess_env


def _bench_module(name: str):
  """bench/NAME.py imported as a module (bench/ is no package)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(name, REPO / 'bench' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_gpu_suite_without_a_gpu_is_one_line_exit_2():
  for args, env, message in (
      ([], {'PYTHON': sys.executable}, "error: no GPU seen by"),
      (['--gpu'], {}, 'error: unknown argument --gpu'),
      ([], {'PYTHON': '/nonexistent/python'}, 'error: /nonexistent/python cannot import jax')):
    done = subprocess.run(['bash', 'bench/gpu_suite.sh', *args], cwd=REPO,
                          env={**subprocess_env(), **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, (args, done.stderr)
    assert done.stderr.startswith(message) and done.stderr.count('\n') == 1, done.stderr
    assert done.stdout == ''


def test_suite_cpu_reads_the_compile_seconds_jax_writes_into_its_cache():
  """bench/suite_cpu.py reads JAX's persistent-cache entries (a private format): a program
  compiled here is found under its name with a plausible compile time."""
  import jax
  import jax.numpy as jnp

  suite_cpu = _bench_module('suite_cpu')
  for old in suite_cpu.COMPILATION_CACHE.glob('jit_suite_cpu_probe-*'):
    old.unlink()  # an earlier run's entry would be a cache hit, not a compilation
  before = suite_cpu._cache_entries()  # pylint: disable=protected-access

  def suite_cpu_probe(x):  # a name, and a shape, no other test compiles
    return jnp.cumsum(jnp.sin(x) * 3.0)

  jax.jit(suite_cpu_probe)(jnp.ones((7, 1013)))
  new = [e for e in suite_cpu._cache_entries() - before  # pylint: disable=protected-access
         if e.startswith('jit_suite_cpu_probe-')]
  assert len(new) == 1, new
  assert 0 <= suite_cpu._compile_seconds(new[0]) < 60  # pylint: disable=protected-access
  table = suite_cpu._compiled_table(before, before | set(new), 5)  # pylint: disable=protected-access
  assert table.startswith('1 programs compiled') and '| jit_suite_cpu_probe | 1 |' in table


def test_tensorflow_stand_ins_serve_gemmas_imports_and_nothing_else():
  """bench/no_tensorflow (what gpu_suite.sh puts on the path where TensorFlow is missing): a
  Gemma 3 model is built and gemma's padding (etils' TensorFlow check) runs through the stand-ins,
  which shadow the real packages here; using TensorFlow through them fails."""
  script = '''
import numpy as np
import tensorflow, tensorflow_datasets
assert tensorflow.__file__.endswith('no_tensorflow/tensorflow/__init__.py'), tensorflow.__file__
assert 'no_tensorflow' in tensorflow_datasets.__file__
from gemma import gm
from gemma_mt import models
import kauldron.train, clu.metric_writers  # the imports that name TensorFlow's and TFDS's types
assert models.get_model_spec('gemma3-270m').transformer_config().num_layers == 18
import tensorflow.experimental.numpy as tnp  # etils imports it once tensorflow is loaded
assert not isinstance(np.zeros(2), (tnp.ndarray, tensorflow.Tensor))
from gemma.gm.data import _functional  # what gm.text.Sampler pads its prompts with
assert _functional.pad(np.ones(2, np.int32), max_length=4).tolist() == [1, 1, 0, 0]
try:
  tensorflow.constant(1.0).numpy()
except TypeError:
  print('stand-in only')
'''
  env = {**subprocess_env(), 'PYTHONPATH': f'{REPO / "bench" / "no_tensorflow"}:{REPO}'}
  done = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == 'stand-in only'


def test_gpu_benchmarks_refuse_bad_flags_in_one_line_exit_2():
  for script, flag, message in (
      ('decode.py', '--model=gemma9', "error: --model: unknown model 'gemma9'"),
      ('decode.py', '--mtnt=/nonexistent.tsv', 'error: --mtnt=/nonexistent.tsv is not a file'),
      ('chunked_loss.py', '--model=gemma9', "error: --model: unknown model 'gemma9'"),
      ('step_throughput.py', '--gpu', 'error: --gpu: jax sees no GPU (backend cpu)'),
      ('step_profile.py', '/nonexistent.json.gz', 'error: /nonexistent.json.gz: not a readable')):
    done = subprocess.run([sys.executable, f'bench/{script}', flag], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (script, flag, done.stderr)
    assert done.stderr.startswith(message) and done.stderr.count('\n') == 1, done.stderr


def test_step_profile_sums_a_traced_steps_ops_by_kind_and_model_code():
  """bench/step_profile.py on a real trace of a jitted function on this CPU: its matrix
  product is found (through the HLO, inside whatever fusion XLA made) and named after the code
  that made it; GPU kernels named after their fusion map back to it."""
  step_profile = _bench_module('step_profile')
  trace, hlo = step_profile.small_trace()
  kinds, sources, top, totals = step_profile.summarize(trace, 2, hlo)
  assert totals['module'] == 'jit_layer' and totals['op_ms'] > 0 and len(top) == 2
  kind_ms = {kind: ms for kind, ms, _, _ in kinds}
  assert kind_ms.get('matmul', 0) > 0, kinds
  assert abs(sum(share for _, _, share, _ in kinds) - 1) < 1e-6
  matmul_sources = [source for source, _, _, matmul in sources if matmul > 0]
  assert any('projection/dot_general' in source for source in matmul_sources), sources
  assert all(source.startswith('forward: ') for source, *_ in sources), sources
  # A GPU kernel is named after its fusion with '_' for '.'; a library kernel keeps no name.
  fusions = {'loop_add_fusion.274': {'opcode': 'fusion', 'op_name': 'jit(f)/add', 'matmul': False}}
  assert step_profile.instruction_of('loop_add_fusion_274', 'command_buffer_1',
                                     fusions) == 'loop_add_fusion.274'
  assert step_profile.instruction_of('nvjet_sm90_tst_256x128', 'command_buffer_1',
                                     fusions) == 'command_buffer_1'
  assert step_profile.kind_of('nvjet_sm90_tst_256x128', 'command_buffer_1', fusions) == 'matmul'

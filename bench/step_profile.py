"""Where a step's device time goes: a table from a JAX profiler trace (perfetto JSON).

    .venv/bin/python bench/step_profile.py DIR/step.perfetto_trace.json.gz \
        --hlo=DIR/step_hlo.txt.gz --steps=2
    .venv/bin/python bench/step_profile.py --quick   # traces a small function here

`step_throughput.py --profile_dir=DIR` writes such a trace of its first row's steps and the
compiled step's HLO beside it. The ops of the traced XLA module with the most device time are
summed per step by kind (matrix products: a dot, a convolution or a GEMM library call, alone or
inside the fusion that the HLO says the op runs; reductions; copies; other fusions) and by the
model code they came from (the HLO's ``op_name``, forward or backward, layer numbers folded),
against the step's wall time: what the rest of the step costs beside its matrix products, the gap
to the peak.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
from typing import Iterable, Iterator

# Matched against "kernel name / hlo op", in this order; the first match is the kind.
KINDS = (
    ('matmul', re.compile(r'gemm|xmma|nvjet|cutlass|wgmma|cublas|matmul|(^|[\s/._])dot', re.I)),
    ('attention kernel', re.compile(r'cudnn|flash|fmha', re.I)),
    ('reduction', re.compile(r'reduce|reduction', re.I)),
    ('copy / transpose', re.compile(r'copy|transpose|memcpy|memset|dynamic.update.slice', re.I)),
    ('elementwise fusion', re.compile(r'fusion', re.I)),
)


_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+) = (?P<rest>.*)$')
_OPCODE = re.compile(r'(?:^|\s)(?P<op>[a-z][a-z0-9\-]*)\(')
_CALLS = re.compile(r'calls=%?(?P<comp>[^\s,}]+)')
_TARGET = re.compile(r'custom_call_target="(?P<target>[^"]+)"')
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]+)"')
_MATMUL_TARGET = re.compile(r'gemm|matmul|cublas|dot', re.I)


def parse_hlo(text: str) -> dict[str, dict[str, object]]:
  """Instruction name -> {opcode, op_name (the JAX source op), matmul (a dot, a convolution or
  a GEMM call, or a fusion around one)} for every instruction of an HLO module's text."""
  computations: dict[str, list[dict[str, object]]] = {}
  current: list[dict[str, object]] = []
  for line in text.splitlines():
    if line.startswith(('%', 'ENTRY')) and line.rstrip().endswith('{'):
      current = computations.setdefault(line.split()[1 if line.startswith('ENTRY') else 0]
                                        .lstrip('%'), [])
      continue
    match = _INSTRUCTION.match(line)
    if not match or not line.startswith(' '):
      continue
    rest = match['rest']
    opcode = _OPCODE.search(rest)
    calls, target, op_name = _CALLS.search(rest), _TARGET.search(rest), _OP_NAME.search(rest)
    current.append({'name': match['name'], 'opcode': opcode['op'] if opcode else '',
                    'calls': calls['comp'] if calls else '',
                    'target': target['target'] if target else '',
                    'op_name': op_name['op_name'] if op_name else ''})
  memo: dict[str, bool] = {}

  def has_matmul(comp: str) -> bool:
    if comp not in memo:
      memo[comp] = False  # a cycle cannot occur in HLO; this only guards the recursion
      memo[comp] = any(is_matmul(i) for i in computations.get(comp, ()))
    return memo[comp]

  def is_matmul(instruction: dict[str, object]) -> bool:
    return (instruction['opcode'] in ('dot', 'convolution')
            or bool(instruction['target'] and _MATMUL_TARGET.search(str(instruction['target'])))
            or bool(instruction['calls'] and has_matmul(str(instruction['calls']))))

  return {str(i['name']): {'opcode': i['opcode'], 'op_name': i['op_name'],
                           'matmul': is_matmul(i)}
          for instructions in computations.values() for i in instructions}


def kind_of(kernel: str, hlo_op: str, hlo: dict[str, dict[str, object]] | None = None) -> str:
  """The kind of an op: from the HLO where given (matmul or not), else from the names alone."""
  if hlo and hlo.get(hlo_op, {}).get('matmul'):
    return 'matmul'
  label = f'{kernel} / {hlo_op}'
  kinds = KINDS[1:] if hlo and hlo_op in hlo else KINDS
  return next((kind for kind, pattern in kinds if pattern.search(label)), 'other')


def instruction_of(kernel: str, hlo_op: str, hlo: dict[str, dict[str, object]] | None) -> str:
  """The HLO instruction an op event ran. On a GPU, XLA's command buffers (CUDA graphs) name
  the buffer as ``hlo_op``, and the kernel is named after its fusion with ``_`` for ``.``
  (``loop_add_fusion_274`` for ``loop_add_fusion.274``); library kernels (cuBLAS's) keep the
  buffer's name, not in the HLO."""
  if not hlo or hlo_op in hlo:
    return hlo_op
  for name in (kernel, re.sub(r'_(\d+)$', r'.\1', kernel)):
    if name in hlo:
      return name
  return hlo_op


def source_of(hlo_op: str, hlo: dict[str, dict[str, object]] | None) -> str:
  """The model code an op came from: its ``op_name`` without the jit/jvp wrappers, with
  ``backward:`` for the transposed (gradient) half and layer numbers folded to N."""
  if not hlo:
    return '(no HLO given)'
  if hlo_op not in hlo:
    return '(a library kernel in a command buffer: no HLO name)'
  op_name = str(hlo[hlo_op]['op_name'])
  if not op_name:
    return '(no op_name in the HLO)'
  backward = 'transpose(' in op_name
  parts = [p for p in op_name.split('/')
           if not re.match(r'(jit|jvp|transpose|remat|checkpoint|pjit|vmap)\(', p)]
  path = re.sub(r'layer_\d+', 'layer_N', '/'.join(parts[-4:]))
  return ('backward: ' if backward else 'forward: ') + path


def device_ops(trace: dict) -> list[dict]:
  """The trace's XLA op events (those naming an ``hlo_op``): on the accelerator's processes
  (``/device:…``) where the trace has any, else on the host (a CPU run)."""
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  names = {e['pid']: e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  ops = [e for e in events
         if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {}) and 'dur' in e]
  on_device = [e for e in ops if names.get(e['pid'], '').startswith('/device:')]
  return on_device or ops


def summarize(trace: dict, steps: int, hlo: dict[str, dict[str, object]] | None = None
              ) -> tuple[list[tuple], list[tuple], list[tuple], dict[str, float]]:
  """(kind rows, source rows, top op rows, totals) of the module with the most op time.

  Kind rows: (kind, ms per step, share of op time, ops per step); source rows: (source, ms per
  step, share, matmul share of it); top rows: (hlo op, or the kernel where it has no HLO name;
  source, kind, ms per step, share);
  totals: op and wall milliseconds per step (wall: first op start to last op end, over
  ``steps``). ``hlo``: `parse_hlo` of the module, for kinds and sources."""
  ops = device_ops(trace)
  if not ops:
    raise ValueError('the trace holds no XLA op events (was the step run inside the trace?)')
  by_module = collections.Counter()
  for e in ops:
    by_module[e['args'].get('hlo_module', '')] += e['dur']
  module = by_module.most_common(1)[0][0]
  ops = [e for e in ops if e['args'].get('hlo_module', '') == module]
  total = sum(e['dur'] for e in ops)
  wall = max(e['ts'] + e['dur'] for e in ops) - min(e['ts'] for e in ops)
  kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  sources: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
  per_op: dict[tuple[str, str], float] = collections.Counter()
  for e in ops:
    op = instruction_of(e['name'], e['args']['hlo_op'], hlo)
    kind = kind_of(e['name'], op, hlo)
    kinds[kind][0] += e['dur']
    kinds[kind][1] += 1
    source = sources[source_of(op, hlo)]
    source[0] += e['dur']
    source[1] += e['dur'] if kind == 'matmul' else 0.0
    per_op[(op, e['name'])] += e['dur']
  kind_rows = sorted(((kind, us / 1e3 / steps, us / total, count / steps)
                      for kind, (us, count) in kinds.items()), key=lambda r: -r[1])
  source_rows = sorted(((source, us / 1e3 / steps, us / total, matmul_us / us)
                        for source, (us, matmul_us) in sources.items()),
                       key=lambda r: -r[1])[:15]
  top_rows = [(op if hlo and op in hlo else kernel, source_of(op, hlo),
               kind_of(kernel, op, hlo), us / 1e3 / steps, us / total)
              for (op, kernel), us in per_op.most_common(12)]
  return kind_rows, source_rows, top_rows, {'module': module, 'op_ms': total / 1e3 / steps,
                                            'wall_ms': wall / 1e3 / steps}


def print_summary(trace: dict, steps: int, title: str,
                  hlo: dict[str, dict[str, object]] | None = None) -> None:
  kind_rows, source_rows, top_rows, totals = summarize(trace, steps, hlo)
  print(f'## {title}')
  print()
  print(f'Module {totals["module"]}: ops {totals["op_ms"]:.1f} ms a step, wall (first op to '
        f'last) {totals["wall_ms"]:.1f} ms a step, over {steps} steps.')
  print()
  print('| kind | ms per step | share of op time | ops per step |')
  print('|---|---|---|---|')
  for kind, ms, share, count in kind_rows:
    print(f'| {kind} | {ms:.1f} | {share:.2f} | {count:.0f} |')
  print()
  print('| source (the model code) | ms per step | share of op time | matmul share of it |')
  print('|---|---|---|---|')
  for source, ms, share, matmul in source_rows:
    print(f'| {source} | {ms:.1f} | {share:.2f} | {matmul:.2f} |')
  print()
  print('| hlo op (or kernel) | source | kind | ms per step | share |')
  print('|---|---|---|---|---|')
  for op, source, kind, ms, share in top_rows:
    print(f'| {op} | {source} | {kind} | {ms:.2f} | {share:.3f} |')


def _read_text(path: str) -> str:
  """A text file's contents, gunzipped where the name ends in .gz."""
  with (gzip.open if path.endswith('.gz') else open)(path, 'rt') as f:
    return f.read()


def load(path: str) -> dict:
  """A perfetto trace (JSON, gzipped where the name ends in .gz)."""
  return json.loads(_read_text(path))


def load_hlo(path: str) -> dict[str, dict[str, object]]:
  """`parse_hlo` of an HLO text file (gzipped where the name ends in .gz)."""
  return parse_hlo(_read_text(path))


@contextlib.contextmanager
def perfetto_trace(destination: str) -> Iterator[None]:
  """Traces the block with `jax.profiler.trace` and copies its perfetto trace (JSON, gzipped)
  to ``destination``: the profiler nests its files in dated folders; copied, the trace is one
  file to fetch or `load`."""
  import jax  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      yield
    found = glob.glob(os.path.join(tmp, '**', 'perfetto_trace.json.gz'), recursive=True)
    shutil.copy(found[0], destination)


def small_trace() -> tuple[dict, dict[str, dict[str, object]]]:
  """(trace, `parse_hlo` of its module) of two calls of a small jitted function on this
  machine: a matrix product under ``named_scope('projection')`` and a tanh after it."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def layer(x, w):
    with jax.named_scope('projection'):
      y = x @ w
    return y, jnp.sum(jnp.tanh(y) * 2.0, axis=0)  # y an output: its own op, not fused away

  x, w = jnp.full((512, 1024), 0.01), jnp.full((1024, 768), 0.02)
  compiled = jax.jit(layer).lower(x, w).compile()
  jax.block_until_ready(compiled(x, w))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'trace.json.gz')
    with perfetto_trace(path):
      for _ in range(2):
        jax.block_until_ready(compiled(x, w))
    return load(path), parse_hlo(compiled.as_text())


def main(argv: Iterable[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('trace', nargs='?', default='',
                      help='a perfetto_trace.json(.gz) written by jax.profiler')
  parser.add_argument('--hlo', default='', help="the step's HLO text (step_hlo.txt.gz): "
                      'kinds and sources from it')
  parser.add_argument('--steps', type=int, default=2, help='steps the trace holds')
  parser.add_argument('--quick', action='store_true',
                      help='trace a small function here and read that instead (seconds)')
  args = parser.parse_args(argv)
  if args.quick:  # the reader exercised end to end, in seconds
    trace, hlo = small_trace()
    print_summary(trace, 2, 'Device time of one call: a 512 × 1024 × 768 product and a tanh '
                  '(--quick)', hlo)
    return
  if not args.trace:
    parser.exit(2, 'error: give a trace (the step.perfetto_trace.json.gz that '
                'step_throughput.py --profile_dir wrote), or --quick\n')
  try:
    trace = load(args.trace)
  except (OSError, ValueError) as e:
    parser.exit(2, f'error: {args.trace}: not a readable trace ({e}); pass the '
                'perfetto_trace.json.gz that step_throughput.py --profile_dir wrote\n')
  try:
    hlo = load_hlo(args.hlo) if args.hlo else None
  except OSError as e:
    parser.exit(2, f'error: --hlo={args.hlo}: not readable ({e}); pass the step_hlo.txt.gz '
                'that step_throughput.py --profile_dir wrote, or leave --hlo out\n')
  print_summary(trace, args.steps, f'Device time of one step: {args.trace}', hlo)


if __name__ == '__main__':
  main()

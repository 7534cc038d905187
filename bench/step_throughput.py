"""Benchmark: training-step throughput and MFU, one device vs a mesh of 8 (CPU), or on a GPU.

    .venv/bin/python bench/step_throughput.py [--model=bench --seq_len=128 --batch_size=64]
    python bench/step_throughput.py --gpu      # GPU tables: Gemma 2B and Gemma 3 1B shapes, bf16

On CPU each row runs in its own process (the number of CPU devices is fixed when JAX starts):
the float32 matmul rate measured in that process is the peak that MFU is taken against. On a GPU
the peak is the bfloat16 matmul rate measured there, and the published peak of the chip is shown
too; each model runs at the largest batch of 32/16/8 whose compiled step fits (the memory plan
of ``--dry_run``), and the step timed is the one that plan compiled: the run's own, as
``gemma_mt.train`` builds it (AdamW at a constant rate, gradient clipping). On CPU the step is
the library's jitted, sharded `train_step` with plain AdamW (LoRA rows: the run's own). Random
weights and tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 'gemma-2b-architecture' is the registry's gemma-2b (the tutorial's model) with random weights.


def measure(*, model: str, devices: int, mesh: str, batch_size: int, seq_len: int, steps: int,
            dtype: str, lora_rank: int = 0, base_quantization: str = 'none',
            matmul_size: int = 0, fitted: tuple[object, float] | None = None,
            profile_dir: str = '') -> dict[str, float | str]:
  """One row. ``fitted``: (compiled run, seconds it took) from `largest_fitting_batch`, whose
  step is timed instead of compiling another. ``profile_dir``: after timing, trace two more
  steps there (`trace_steps`)."""
  import jax  # pylint: disable=import-outside-toplevel

  if devices:  # CPU rows: simulate this many devices (0: the accelerators as they are)
    jax.config.update('jax_num_cpu_devices', devices)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, REPO)
  from gemma_mt import models  # pylint: disable=import-outside-toplevel
  from gemma_mt.data.records import TrainingInput  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import perf, sharding, step  # pylint: disable=import-outside-toplevel
  from gemma_mt.train.mesh_spec import MeshSpec  # pylint: disable=import-outside-toplevel

  param_dtype = jnp.dtype(dtype)
  mesh = fitted[0].mesh if fitted else sharding.make_mesh(MeshSpec.parse(mesh))
  devices = mesh.size
  # Peak: matmul in the step's dtype on all devices at once (each device its own pair), on
  # random data as the model's are: on an H200 a bf16 product of constants runs 13% faster.
  n = matmul_size or (2048 if jax.default_backend() == 'cpu' else 8192)
  matmul_start = time.perf_counter()
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(key_a, (devices * n, n), param_dtype),
                     sharding.batch_sharding(mesh))
  b = jax.random.normal(key_b, (n, n), param_dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  reps, start = 10, time.perf_counter()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  peak_flops = 2 * devices * n**3 * reps / (time.perf_counter() - start)
  matmul_s = time.perf_counter() - matmul_start

  spec = models.get_model_spec('gemma-2b' if model == 'gemma-2b-architecture' else model)
  shape = spec.transformer_config()
  transformer = spec.transformer(param_dtype)
  optimizer = optax.adamw(1e-4)

  def init():
    params = models.init_params(transformer, 0)
    return step.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  frozen, num_frozen = {}, 0
  if lora_rank or fitted:  # the library's own run (LoRA: adapters on a frozen, random base)
    run, frozen, state, compile_s, state_s = _library_run(
        spec, mesh, lora_rank, base_quantization, dtype, batch_size, seq_len, fitted)
    abstract = run.abstract_state
    if lora_rank:
      num_frozen = models.count_params(run.base_layout.abstract_base)
  else:
    abstract = jax.eval_shape(init)
    shardings = sharding.state_shardings(mesh, abstract, optimizer)
    start = time.perf_counter()
    state = jax.block_until_ready(jax.jit(init, out_shardings=shardings)())
    state_s = time.perf_counter() - start
    frozen_shardings = {}
  rng = np.random.RandomState(0)
  tokens = rng.randint(4, shape.num_embed, size=(batch_size, seq_len)).astype(np.int32)
  tokens[:, 0] = 2
  mask = np.ones_like(tokens, dtype=bool)
  mask[:, : seq_len // 4] = False
  batch = sharding.global_batch(TrainingInput(tokens, mask), mesh)
  if lora_rank or fitted:  # the run's own step, compiled (once) for its memory plan
    compiled = run.train_fn
  else:
    train = jax.jit(functools.partial(step.train_step, model=transformer, optimizer=optimizer,
                                      pad_id=0),
                    in_shardings=(shardings, sharding.batch_sharding(mesh), frozen_shardings),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    start = time.perf_counter()
    compiled = train.lower(state, batch, frozen).compile()
    compile_s = time.perf_counter() - start
  total_flops = perf.model_flops_per_step(
      num_params=models.count_params(abstract.params), num_layers=shape.num_layers,
      num_heads=shape.num_heads, head_dim=shape.head_dim, batch_size=batch_size, seq_len=seq_len,
      num_frozen_params=num_frozen)
  xla_flops = (perf.compiled_flops(compiled) or float('nan')) * devices
  steps_start = time.perf_counter()
  for _ in range(2):
    state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  steps_s, profile_start = time.perf_counter() - steps_start, time.perf_counter()
  if profile_dir:
    try:
      state, metrics = trace_steps(compiled, state, batch, frozen, profile_dir)
    except Exception as e:  # pylint: disable=broad-except  # the row stands without its profile
      print(f'profile: not written ({type(e).__name__}: {e})', file=sys.stderr)
  profile_s = time.perf_counter() - profile_start
  published = perf.peak_tflops(jax.devices()[0].device_kind)
  return {
      'device_kind': jax.devices()[0].device_kind,
      'devices': devices,
      'mesh': ','.join(f'{k}:{v}' for k, v in mesh.shape.items() if v > 1) or 'data:1',
      'params_m': models.count_params(abstract.params) / 1e6,
      'compile_s': compile_s,
      # Where the row's seconds went, beside compile_s: the peak's matmul, making the weights
      # and optimizer state, the warm-up and timed steps, the traced steps (trace and HLO
      # written).
      'matmul_s': matmul_s,
      'state_s': state_s,
      'steps_s': steps_s,
      'profile_s': profile_s,
      'step_time_s': step_time,
      'tokens_per_s': batch_size * seq_len / step_time,
      'model_tflops_per_s': total_flops / step_time / 1e12,
      'xla_cost_analysis_tflops_per_s': xla_flops / step_time / 1e12,
      'matmul_tflops_per_s': peak_flops / 1e12,
      'mfu': total_flops / step_time / peak_flops,
      'mfu_vs_published_peak': (total_flops / step_time / 1e12 / (published * devices)
                                if published else float('nan')),
      'loss': float(metrics['train_loss']),
  }


PROFILED_STEPS = 2


def trace_steps(compiled, state, batch, frozen, profile_dir: str):
  """Runs `PROFILED_STEPS` steps under the profiler and leaves in ``profile_dir`` their trace
  (``step.perfetto_trace.json.gz``, for `step_profile.py`) and the compiled step's HLO
  (``step_hlo.txt.gz``, where a fusion's contents are). Returns (state, metrics)."""
  import gzip  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  step_profile = _step_profile()
  os.makedirs(profile_dir, exist_ok=True)
  with step_profile.perfetto_trace(os.path.join(profile_dir, 'step.perfetto_trace.json.gz')):
    for _ in range(PROFILED_STEPS):
      state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready(metrics)
  with gzip.open(os.path.join(profile_dir, 'step_hlo.txt.gz'), 'wt') as f:
    f.write(compiled.as_text())
  return state, metrics


def _step_profile():
  """bench/step_profile.py, the trace's reader, imported from beside this file."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import step_profile  # pylint: disable=import-outside-toplevel

  return step_profile


def _print_profile(profile_dir: str, title: str) -> None:
  """`step_profile`'s tables of the trace `trace_steps` left in ``profile_dir``; a trace that
  cannot be read (no profiler on the machine) is one line, and the rows go on."""
  step_profile = _step_profile()
  try:
    trace = step_profile.load(os.path.join(profile_dir, 'step.perfetto_trace.json.gz'))
    hlo = step_profile.load_hlo(os.path.join(profile_dir, 'step_hlo.txt.gz'))
    print()
    step_profile.print_summary(trace, PROFILED_STEPS, title, hlo)
    print()
  except (OSError, ValueError) as e:
    print(f'profile: no tables ({e})')


def _library_run(spec, mesh, rank: int, quantization: str, dtype: str, batch_size: int,
                 seq_len: int, fitted: tuple[object, float] | None):
  """(compiled run, frozen base, fresh state, seconds to compile, seconds to make the weights
  and state) of the library's run of
  ``spec`` on ``mesh``: full fine-tuning in ``dtype``, or (``rank`` > 0) float32 LoRA adapters
  on a base in ``dtype`` (and ``quantization``); compute in ``dtype``; AdamW at a constant 1e-4
  with the default gradient clipping, as `gemma_mt.train` runs it. ``fitted`` reuses a run
  compiled already. Weights (adapters too) are `_random_like`'s; a quantized base, the
  library's own."""
  import jax  # pylint: disable=import-outside-toplevel

  from gemma_mt.train import frozen_base, loop  # pylint: disable=import-outside-toplevel

  if fitted is None:
    config = _run_config(spec.name, batch_size, seq_len, dtype, rank, quantization,
                         mesh=','.join(f'{axis}:{size}' for axis, size in mesh.shape.items()))
    start = time.perf_counter()
    run = loop.compile_run(config, _run_model(spec.name), 10, devices=list(mesh.devices.flat))
    fitted = run, time.perf_counter() - start
  run, compile_s = fitted
  start = time.perf_counter()
  if rank and quantization != 'none':  # the library quantizes its random base
    frozen = frozen_base.load(run.config, run.run_model, run.base_layout)[0]
  elif rank:
    frozen = _random_like(run.base_layout.abstract_base,
                          jax.tree.map(lambda x: x.sharding, run.base_layout.abstract_base))
  else:
    frozen = {}
  params = _random_like(run.abstract_state.params, run.state_shardings.params)
  state_of = loop._state_of  # pylint: disable=protected-access
  state = jax.jit(functools.partial(state_of, run.optimizer),
                  out_shardings=run.state_shardings)(params)
  jax.block_until_ready((frozen, state))
  return run, frozen, state, compile_s, time.perf_counter() - start


def _random_like(abstract, shardings):
  """Normal(0, 0.02) arrays of ``abstract``'s shapes and dtypes, placed by ``shardings``: one
  draw as large as the largest leaf, whose first elements each leaf takes. The model's own
  initialization (``models.init_params``) draws each leaf apart, and XLA compiles one
  random-number program a leaf: on CPU 14.3 s for Gemma 3 1B's 288 leaves and 7.9 s for Gemma
  2B's, against 0.3 and 0.2 s for one draw. A step's time does not depend on the weights' values
  (nor on leaves sharing them); no array exceeds the largest leaf, so no index passes 2**31."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  leaves, treedef = jax.tree.flatten(abstract)
  largest = max(x.size for x in leaves)

  def fill(key):
    flat = 0.02 * jax.random.normal(key, (largest,), jnp.float32)
    return treedef.unflatten([flat[:x.size].reshape(x.shape).astype(x.dtype) for x in leaves])

  return jax.jit(fill, out_shardings=shardings)(jax.random.key(0))


def _run_config(model: str, batch_size: int, seq_len: int, dtype: str, rank: int,
                quantization: str, mesh: str = ''):
  """The TrainConfig of a benchmark row (10 steps; the rate does not change the step's cost)."""
  from gemma_mt.train import config as config_lib  # pylint: disable=import-outside-toplevel

  lora = dict(lora_rank=rank, lora_alpha=2.0 * rank, base_dtype=dtype, param_dtype='float32',
              base_quantization=quantization) if rank else dict(param_dtype=dtype)
  return config_lib.TrainConfig(
      model=model, batch_size=batch_size, max_seq_len=seq_len, compute_dtype=dtype,
      max_steps=10, learning_rate=1e-4, lr_schedule='constant', warmup_steps=0, mesh=mesh,
      **lora)


def _run_model(name: str):
  from gemma_mt.models import sources  # pylint: disable=import-outside-toplevel

  return sources.resolve_run_model(name, need_weights=False)


def largest_fitting_batch(model: str, batches: tuple[int, ...], *, seq_len: int, dtype: str,
                          lora_rank: int = 0, base_quantization: str = 'none'
                          ) -> tuple[int, tuple[object, float]]:
  """The first of ``batches`` whose compiled step (XLA's memory analysis) fits the device, and
  (its compiled run, seconds to compile it); the last of ``batches`` if none fits."""
  import jax  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, REPO)
  from gemma_mt.train import loop  # pylint: disable=import-outside-toplevel

  name = 'gemma-2b' if model == 'gemma-2b-architecture' else model
  for batch_size in batches:
    config = _run_config(name, batch_size, seq_len, dtype, lora_rank, base_quantization)
    start = time.perf_counter()
    run = loop.compile_run(config, _run_model(name), 10, devices=jax.devices()[:1])
    if run.memory_plan.fits() or batch_size == batches[-1]:
      return batch_size, (run, time.perf_counter() - start)
  raise ValueError('no batch sizes given')


def _print_rows(rows: list[dict], title: str) -> None:
  base = rows[0]['tokens_per_s']
  print(title)
  print('| devices | mesh | step (s) | tokens/s | vs first row | model TFLOP/s | '
        'matmul TFLOP/s | MFU (measured peak) | MFU (published peak) |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["devices"]} | {r["mesh"]} | {r["step_time_s"]:.3f} | {r["tokens_per_s"]:.0f} | '
          f'{r["tokens_per_s"] / base:.2f} | {r["model_tflops_per_s"]:.3f} | '
          f'{r["matmul_tflops_per_s"]:.3f} | {r["mfu"]:.2f} | {r["mfu_vs_published_peak"]:.2f} |')


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='bench')
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--gpu', action='store_true', help='the GPU table, in this process')
  parser.add_argument('--devices', type=int, default=0, help='internal: measure one CPU row')
  parser.add_argument('--mesh', default='')
  parser.add_argument('--matmul_size', type=int, default=0,
                      help='internal: n of the n×n matmul that measures the peak (0: 2048 on '
                      'CPU, 8192 on a GPU)')
  parser.add_argument('--quick', action='store_true',
                      help='the tiny model at sequence 32, batch 16, 2 steps, the peak from a 512² '
                      'matmul, rows data:1 and fsdp:8 only: seconds')
  parser.add_argument('--lora_rank', type=int, default=0,
                      help='LoRA adapters of this rank on a frozen base (the rows of --gpu: 16)')
  parser.add_argument('--base_quantization', default='none', help='none, int8 or int4')
  parser.add_argument('--profile_dir', default='',
                      help='trace two more steps of the first row into this folder and print '
                      'where their device time goes (bench/step_profile.py)')
  args = parser.parse_args()
  if args.quick:  # a smaller matmul too: at 2048 it takes 10 s on 8 CPU devices
    args.model, args.seq_len, args.batch_size, args.steps = 'tiny', 32, 16, 2
    args.matmul_size = 512
  if args.gpu:
    import jax  # pylint: disable=import-outside-toplevel

    if jax.default_backend() != 'gpu':
      parser.exit(2, f'error: --gpu: jax sees no GPU (backend {jax.default_backend()}): run it on '
                  'a GPU machine, or leave --gpu out for the CPU table\n')
    for model, label, lora_rank, quantization in (
        ('gemma-2b-architecture', 'Gemma 2B architecture', 0, 'none'),
        ('gemma3-1b', 'Gemma 3 1B architecture', 0, 'none'),
        ('gemma-2b-architecture', 'Gemma 2B architecture, LoRA rank 16', 16, 'none')):
      row_start = time.perf_counter()
      batch_size, fitted = largest_fitting_batch(
          model, (32, 16, 8), seq_len=512, dtype='bfloat16', lora_rank=lora_rank,
          base_quantization=quantization)
      profile_dir = args.profile_dir if model == 'gemma-2b-architecture' and not lora_rank else ''
      row = measure(model=model, devices=0, mesh='', batch_size=batch_size, seq_len=512,
                    steps=5, dtype='bfloat16', lora_rank=lora_rank,
                    base_quantization=quantization, fitted=fitted, profile_dir=profile_dir)
      del fitted
      row['row_s'] = time.perf_counter() - row_start
      print(json.dumps(row))
      _print_rows([row], f'{row["device_kind"]}: {label} ({row["params_m"]:.0f}M trained '
                  f'parameters), sequence 512, batch {batch_size} (the largest of 32/16/8 that '
                  f'fits), bfloat16, AdamW; compile {row["compile_s"]:.0f} s of the row\'s '
                  f'{row["row_s"]:.0f} s')
      if profile_dir:
        _print_profile(profile_dir, f'{row["device_kind"]}: {label}, batch {batch_size} × 512: '
                       'where a step\'s device time goes')
    return
  if args.devices:
    print(json.dumps(measure(model=args.model, devices=args.devices, mesh=args.mesh,
                             batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                             dtype=args.dtype, lora_rank=args.lora_rank,
                             base_quantization=args.base_quantization,
                             matmul_size=args.matmul_size, profile_dir=args.profile_dir)))
    return
  rows = []
  layouts = ((1, 'data:1'), (8, 'data:8'), (8, 'fsdp:8'))
  if args.quick:
    # CI's run, so that the script does not rot: data:8 is the code of fsdp:8 on another mesh,
    # and each row costs ~15 s of CPU (start-up and compilation).
    layouts = ((1, 'data:1'), (8, 'fsdp:8'))
  for devices, mesh in layouts:
    out = subprocess.run(
        [sys.executable, __file__, f'--devices={devices}', f'--mesh={mesh}',
         f'--model={args.model}', f'--seq_len={args.seq_len}', f'--dtype={args.dtype}',
         f'--batch_size={args.batch_size}', f'--steps={args.steps}',
         f'--lora_rank={args.lora_rank}', f'--base_quantization={args.base_quantization}',
         f'--matmul_size={args.matmul_size}',
         f'--profile_dir={args.profile_dir if devices == 1 else ""}'],
        capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  lora = (f', LoRA rank {args.lora_rank} ({args.base_quantization} base)'
          if args.lora_rank else '')
  _print_rows(rows, f'model {args.model} ({rows[0]["params_m"]:.1f}M trained parameters'
              f'{lora}), sequence {args.seq_len}, batch {args.batch_size}, {args.dtype}, AdamW')
  if args.profile_dir:
    _print_profile(args.profile_dir, f'model {args.model}, 1 device: where a step\'s device '
                   'time goes')


if __name__ == '__main__':
  main()

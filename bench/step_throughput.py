"""Benchmark: training-step throughput and MFU on this machine, one device vs a mesh of 8.

    .venv/bin/python bench/step_throughput.py [--model=bench --seq_len=128 --batch_size=64]

Each row runs in its own process (the number of CPU devices is fixed when JAX starts): the
float32 matmul rate measured in that process is the peak that MFU is taken against, and the step
is the library's own jitted, sharded `train_step` (AdamW) on random tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args: argparse.Namespace) -> dict[str, float]:
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update('jax_num_cpu_devices', args.devices)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, REPO)
  from gemma_mt import models  # pylint: disable=import-outside-toplevel
  from gemma_mt.data.records import TrainingInput  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import perf, sharding, step  # pylint: disable=import-outside-toplevel
  from gemma_mt.train.mesh_spec import MeshSpec  # pylint: disable=import-outside-toplevel

  # Peak: float32 matmul on all devices at once (each device multiplies its own pair).
  n = 2048
  mesh = sharding.make_mesh(MeshSpec.parse(args.mesh))
  a = jax.device_put(jnp.ones((args.devices * n, n), jnp.float32), sharding.batch_sharding(mesh))
  b = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  reps, start = 10, time.perf_counter()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  peak_flops = 2 * args.devices * n**3 * reps / (time.perf_counter() - start)

  spec = models.get_model_spec(args.model)
  model = spec.transformer(jnp.float32)
  optimizer = optax.adamw(1e-4)

  def init():
    params = models.init_params(model, 0, 8)
    return step.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  abstract = jax.eval_shape(init)
  shardings = sharding.state_shardings(mesh, abstract)
  state = jax.jit(init, out_shardings=shardings)()
  rng = np.random.RandomState(0)
  tokens = rng.randint(4, spec.num_embed, size=(args.batch_size, args.seq_len)).astype(np.int32)
  tokens[:, 0] = 2
  mask = np.ones_like(tokens, dtype=bool)
  mask[:, : args.seq_len // 4] = False
  batch = sharding.global_batch(TrainingInput(tokens, mask), mesh)
  train = jax.jit(functools.partial(step.train_step, model=model, optimizer=optimizer, pad_id=0),
                  in_shardings=(shardings, sharding.batch_sharding(mesh)),
                  out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  compiled = train.lower(state, batch).compile()
  flops_per_device = perf.compiled_flops(compiled)
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / args.steps
  total_flops = flops_per_device * args.devices
  return {
      'devices': args.devices,
      'mesh': args.mesh or 'data:1',
      'params_m': models.count_params(abstract.params) / 1e6,
      'step_time_s': step_time,
      'tokens_per_s': args.batch_size * args.seq_len / step_time,
      'model_gflops_per_s': total_flops / step_time / 1e9,
      'matmul_gflops_per_s': peak_flops / 1e9,
      'mfu': total_flops / step_time / peak_flops,
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='bench')
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--devices', type=int, default=0, help='internal: measure one row')
  parser.add_argument('--mesh', default='')
  args = parser.parse_args()
  if args.devices:
    print(json.dumps(measure(args)))
    return
  rows = []
  for devices, mesh in ((1, 'data:1'), (8, 'data:8'), (8, 'fsdp:8')):
    out = subprocess.run(
        [sys.executable, __file__, f'--devices={devices}', f'--mesh={mesh}',
         f'--model={args.model}', f'--seq_len={args.seq_len}',
         f'--batch_size={args.batch_size}', f'--steps={args.steps}'],
        capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = rows[0]['tokens_per_s']
  print(f'model {args.model} ({rows[0]["params_m"]:.1f}M parameters), sequence {args.seq_len}, '
        f'batch {args.batch_size}, float32, AdamW')
  print('| devices | mesh | step (s) | tokens/s | vs 1 device | model GFLOP/s | '
        'f32 matmul GFLOP/s | MFU |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["devices"]} | {r["mesh"]} | {r["step_time_s"]:.3f} | {r["tokens_per_s"]:.0f} | '
          f'{r["tokens_per_s"] / base:.2f} | {r["model_gflops_per_s"]:.1f} | '
          f'{r["matmul_gflops_per_s"]:.1f} | {r["mfu"]:.2f} |')


if __name__ == '__main__':
  main()

"""Benchmark: loading a released model through each --ckpt source against the disk's read rate,
and the memory plan's prediction against the memory one training step used.

    .venv/bin/python bench/real_model.py [--ckpt=gguf:gemma3-270m --batch_size=4 --seq_len=64]
    .venv/bin/python bench/real_model.py --quick      # seconds: the tiny model, no GGUF

Loads: the GGUF file (parse, dequantize, place on the device), then the same parameters saved by
this script as a Hugging Face directory (float32 safetensors) and in the gemma library's Orbax
layout, each loaded back through ``gemma_mt.models.sources``. Before each load and each plain
sequential read of the same files, the files are evicted from the page cache
(``posix_fadvise(DONTNEED)``): both read from the disk.

Memory: each row runs in a fresh process (``--measure_step``): the plan of the compiled step is
printed before anything is allocated, then parameters, optimizer state and two steps are run and
the growth of the process's resident memory (sampled every millisecond, from after compiling to
its peak) is what the step used (on CPU, device memory is host memory).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow


def _files(paths: list[pathlib.Path]) -> list[pathlib.Path]:
  return [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob('*'))) if f.is_file()]


def evict(paths: list[pathlib.Path]) -> None:
  """Drops the files' pages from the page cache, so the next read comes from the disk."""
  for file in _files(paths):
    fd = os.open(file, os.O_RDONLY)
    try:
      os.fsync(fd)  # dirty pages (a file just written) are not dropped
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def read_rate(paths: list[pathlib.Path]) -> tuple[int, float]:
  """(bytes, bytes per second) of reading every file under ``paths`` sequentially, from the
  disk (the files are evicted from the page cache first)."""
  files = _files(paths)
  evict(paths)
  total, start = 0, time.perf_counter()
  for file in files:
    with open(file, 'rb') as f:
      while chunk := f.read(1 << 24):
        total += len(chunk)
  return total, total / (time.perf_counter() - start)


def bench_loads(ckpt: str) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gemma import gm
  from gemma_mt import models
  from gemma_mt.models import hf, sources
  from gemma_mt.train import sharding
  from gemma_mt.train.mesh_spec import MeshSpec

  mesh = sharding.make_mesh(MeshSpec(), jax.devices()[:1])
  rows = []
  start = time.perf_counter()
  resolved = sources.resolve(ckpt)
  resolve_time = time.perf_counter() - start
  spec = resolved.spec
  abstract = models.abstract_params(spec, jnp.float32)
  abstract = sharding.with_shardings(abstract, sharding.param_shardings(
      mesh, abstract, sharding.rules_for(spec.transformer_config())))

  def timed_load(source: sources.ResolvedSource) -> tuple[float, object]:
    evict([pathlib.Path(source.path)])  # as a fresh job finds them: on disk
    start = time.perf_counter()
    params = source.load_params(abstract)
    jax.block_until_ready(params)
    return time.perf_counter() - start, params

  load_time, params = timed_load(resolved)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  size, rate = read_rate([pathlib.Path(resolved.path)])
  rows.append(dict(source=str(resolved.source.kind), file_bytes=size, resolve_s=resolve_time,
                   load_s=load_time, read_s=size / rate, param_bytes=param_bytes))
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    hf_dir = tmp / 'hf'
    hf_dir.mkdir()
    (hf_dir / 'config.json').write_text(json.dumps(hf.hf_config(spec, 'float32')))
    (hf_dir / 'tokenizer.model').write_bytes(pathlib.Path(resolved.tokenizer_path).read_bytes())
    hf.write_safetensors(str(hf_dir), hf.hf_tensors(params, spec.transformer_config()),
                         np.float32)
    gm.ckpts.save_params(params, tmp / 'orbax' / 'ckpt', wait_until_finished=True)
    (tmp / 'orbax' / 'tokenizer.model').write_bytes(hf_dir.joinpath('tokenizer.model').read_bytes())
    for kind, path in (('hf', hf_dir), ('orbax', tmp / 'orbax' / 'ckpt')):
      start = time.perf_counter()
      source = sources.resolve(str(path), model=spec.name)
      resolve_time = time.perf_counter() - start
      load_time, _ = timed_load(source)
      size, rate = read_rate([path])
      rows.append(dict(source=kind, file_bytes=size, resolve_s=resolve_time, load_s=load_time,
                       read_s=size / rate, param_bytes=param_bytes))
  return rows


def measure_step(args: argparse.Namespace) -> None:
  """One row of the memory table, in this fresh process; prints a JSON object."""
  import jax
  from gemma_mt.models import sources
  from gemma_mt.train import loop
  from gemma_mt.train.config import TrainConfig

  config = TrainConfig(model=args.model, ckpt=args.ckpt, batch_size=args.batch_size,
                       max_seq_len=args.seq_len, max_steps=10, mesh='data:1',
                       compute_dtype=args.compute_dtype, remat=args.remat)
  run_model = sources.resolve_run_model(config.model_name, config.ckpt, need_weights=False)
  run = loop.compile_run(config, run_model, 10, devices=jax.devices()[:1])
  # Resident memory now (after compiling) against its peak while the state is made and stepped,
  # sampled every millisecond: on CPU the devices' buffers are this process's memory.
  baseline = _rss()
  peak = [baseline]
  done = threading.Event()

  def sample() -> None:
    while not done.is_set():
      peak[0] = max(peak[0], _rss())
      time.sleep(0.001)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  state = jax.jit(lambda: loop._state_of(run.optimizer, _zeros(run)),  # pylint: disable=protected-access
                  out_shardings=run.state_shardings)()
  import numpy as np
  from gemma_mt.data.records import TrainingInput
  tokens = np.ones((args.batch_size, args.seq_len), np.int32) * 5
  batch = TrainingInput(input_tokens=tokens, target_mask=np.ones_like(tokens, bool))
  for _ in range(2):
    state, metrics = run.train_fn(state, batch, {})  # {}: no frozen base (not a LoRA run)
  jax.block_until_ready(metrics)
  done.set()
  sampler.join()
  used = peak[0] - baseline
  print(json.dumps(dict(model=run.config.model, batch=args.batch_size, seq=args.seq_len,
                        compute_dtype=args.compute_dtype, remat=args.remat,
                        predicted=run.memory_plan.total, used=used)))


def _rss() -> int:
  """Resident bytes of this process (Linux)."""
  with open('/proc/self/statm', encoding='ascii') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _zeros(run):
  """Parameters of the run's shapes, made without the temporaries of a random initialisation."""
  import jax
  import jax.numpy as jnp
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), run.abstract_state.params)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--ckpt', default='gguf:gemma3-270m')
  parser.add_argument('--model', default='')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--seq_len', type=int, default=64)
  parser.add_argument('--compute_dtype', default='float32')
  parser.add_argument('--remat', default='none')
  parser.add_argument('--quick', action='store_true', help='the tiny model; seconds')
  parser.add_argument('--measure_step', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure_step:
    import jax
    jax.config.update('jax_num_cpu_devices', 1)
    measure_step(args)
    return
  model_args = ['--model=tiny', '--ckpt='] if args.quick else [f'--ckpt={args.ckpt}']
  if not args.quick:
    import jax
    jax.config.update('jax_num_cpu_devices', 1)
    print(f'## Loading {args.ckpt} (float32 on one CPU device)\n')
    print('| source | bytes on disk | resolve (s) | load (s) | plain read (s) | load / read |')
    print('|---|---|---|---|---|---|')
    for row in bench_loads(args.ckpt):
      print(f'| {row["source"]} | {row["file_bytes"] / 2**20:.0f} MiB | {row["resolve_s"]:.1f} | '
            f'{row["load_s"]:.1f} | {row["read_s"]:.2f} | {row["load_s"] / row["read_s"]:.1f} |')
    print()
  print(f'## Memory plan against one step (batch {args.batch_size} × {args.seq_len})\n')
  print('| compute | remat | predicted (GiB) | used (GiB) | used / predicted |')
  print('|---|---|---|---|---|')
  for compute_dtype, remat in (('float32', 'none'), ('float32', 'block'), ('bfloat16', 'none')):
    done = subprocess.run(
        [sys.executable, __file__, '--measure_step', *model_args,
         f'--batch_size={args.batch_size}', f'--seq_len={args.seq_len}',
         f'--compute_dtype={compute_dtype}', f'--remat={remat}'],
        capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f'| {compute_dtype} | {remat} | {row["predicted"] / 2**30:.3f} | '
          f'{row["used"] / 2**30:.3f} | {row["used"] / row["predicted"]:.2f} |')


if __name__ == '__main__':
  main()

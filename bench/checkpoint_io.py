"""Benchmark: how long a save blocks training, total save and restore time, against the disk.

    .venv/bin/python bench/checkpoint_io.py [--model=bench --repeats=3]

The state is the model's parameters and AdamW state (float32) in the library's own
`RunCheckpoints` (asynchronous Orbax saves, with the Grain iterator position and config). Disk
speed is measured in the same run by writing (with fsync) and reading a file of the same size.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from gemma_mt import models  # pylint: disable=wrong-import-position
from gemma_mt.data import pipeline  # pylint: disable=wrong-import-position
from gemma_mt.train import checkpoint, step  # pylint: disable=wrong-import-position
from gemma_mt.train.config import TrainConfig  # pylint: disable=wrong-import-position


def disk_speed(directory: str, num_bytes: int) -> tuple[float, float]:
  """(write, read) bytes per second of one file of ``num_bytes`` (write includes fsync)."""
  path = os.path.join(directory, 'probe.bin')
  block = np.random.default_rng(0).bytes(1 << 24)
  start = time.perf_counter()
  with open(path, 'wb') as f:
    for _ in range(max(num_bytes // len(block), 1)):
      f.write(block)
    f.flush()
    os.fsync(f.fileno())
  write = os.path.getsize(path) / (time.perf_counter() - start)
  start = time.perf_counter()
  with open(path, 'rb') as f:
    while f.read(1 << 24):
      pass
  read = os.path.getsize(path) / (time.perf_counter() - start)
  os.remove(path)
  return write, read


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='bench')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--quick', action='store_true', help='the tiny model, once: seconds')
  args = parser.parse_args()
  if args.quick:
    args.model, args.repeats = 'tiny', 1
  model = models.get_model_spec(args.model).transformer(jnp.float32)
  optimizer = optax.adamw(1e-4)
  params = models.init_params(model, 0)
  state = step.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  num_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  examples = [pipeline.EncodedExample(np.array([2, 5], np.int32), np.array([1], np.int32))] * 64
  iterator = pipeline.make_iterator(pipeline.train_dataset(
      examples, max_seq_len=4, pad_id=0, global_batch_size=8, seed=0, num_epochs=None))
  config = TrainConfig(workdir='bench', model=args.model)
  position = checkpoint.DataPosition(0, 8, 1)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  parent = os.environ.get('BENCH_DIR', REPO / 'runs')
  os.makedirs(parent, exist_ok=True)  # a fresh clone has no runs/ yet
  root = tempfile.mkdtemp(dir=parent)
  try:
    write_bps, read_bps = disk_speed(root, num_bytes)
    store = checkpoint.RunCheckpoints(os.path.join(root, 'checkpoints'), keep=2,
                                      save_every_n=1)
    blocked, total, restore = [], [], []
    for i in range(1, args.repeats + 1):
      start = time.perf_counter()
      store.save(i, state, iterator, config, position, force=True)
      blocked.append(time.perf_counter() - start)
      store.wait_until_finished()
      total.append(time.perf_counter() - start)
      start = time.perf_counter()
      restored = store.restore(i, abstract, None)
      jax.block_until_ready(restored)
      restore.append(time.perf_counter() - start)
    store.close()
  finally:
    shutil.rmtree(root, ignore_errors=True)
  mb = num_bytes / 2**20
  b, t, r = np.median(blocked), np.median(total), np.median(restore)
  print(f'state: {args.model} parameters + AdamW state, {mb:.0f} MiB; median of {args.repeats}')
  print('| measure | value |')
  print('|---|---|')
  print(f'| disk write (fsync) | {write_bps / 2**20:.0f} MiB/s → {num_bytes / write_bps:.2f} s for the state |')
  print(f'| disk read | {read_bps / 2**20:.0f} MiB/s → {num_bytes / read_bps:.2f} s for the state |')
  print(f'| training blocked per save | {b:.3f} s |')
  print(f'| total save time | {t:.3f} s ({mb / t:.0f} MiB/s) |')
  print(f'| blocked / total save | {b / t:.3f} |')
  print(f'| restore time | {r:.3f} s ({mb / r:.0f} MiB/s) |')


if __name__ == '__main__':
  main()

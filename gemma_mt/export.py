"""``python -m gemma_mt.export --workdir=W --out=DIR``: a run's parameters alone, for serving.

DIR/params is a plain Orbax pytree of the model's parameters (the nesting that
``gm.nn.Transformer`` takes), DIR/config.json the run's config and DIR/tokenizer.model its
tokenizer. Load it without gemma_mt::

    params = orbax.checkpoint.PyTreeCheckpointer().restore(f'{DIR}/params')
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from gemma_mt import errors


def export_params(workdir: str, out: str, step: int | None = None) -> str:
  """Writes the parameters of ``workdir``'s checkpoint ``step`` (default: latest) to ``out``.

  Returns the path of the parameters. Raises UserError naming the folder when it cannot.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from gemma_mt import models  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import checkpoint  # pylint: disable=import-outside-toplevel

  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise errors.UserError(f'--workdir={workdir} has no checkpoints/: pass a run directory')
  store = checkpoint.RunCheckpoints(directory, keep=1 << 30, save_every_n=1 << 30)
  try:
    steps = store.all_steps()
    if not steps:
      raise errors.UserError(f'--workdir={workdir} has no complete checkpoint')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise errors.UserError(f'--step={step} is not a checkpoint of {workdir}: '
                             f'{", ".join(map(str, steps))}')
    config = store.saved_config(step)
  finally:
    store.close()
  spec = models.get_model_spec(config.model)
  model = spec.transformer(jax.numpy.dtype(config.param_dtype))
  abstract = jax.eval_shape(lambda: models.init_params(model, 0, 8))
  params: Any = checkpoint.restore_params(os.path.join(directory, str(step)), abstract)
  if os.path.exists(out) and os.listdir(out):
    raise errors.UserError(f'--out={out} exists and is not empty: choose a new folder')
  os.makedirs(out, exist_ok=True)
  target = os.path.join(os.path.abspath(out), 'params')
  ocp.PyTreeCheckpointer().save(target, params)
  with open(os.path.join(out, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json())
  shutil.copyfile(spec.tokenizer_path, os.path.join(out, 'tokenizer.model'))
  return target


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gemma_mt.export',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='the run directory')
  parser.add_argument('--out', required=True, help='a new folder for the parameters')
  parser.add_argument('--step', type=int, default=None, help='default: the latest checkpoint')
  args = parser.parse_args(argv)
  try:
    path = export_params(args.workdir, args.out, args.step)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())

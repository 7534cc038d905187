"""``python -m gemma_mt.train``: flags → TrainConfig → train_and_evaluate."""

from __future__ import annotations

import logging
import sys

from gemma_mt import tensorflow_startup

# Before anything imports gemma or TensorFlow.
tensorflow_startup.set_environment()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging as absl_logging

from gemma_mt import errors
from gemma_mt.train import flags as train_flags


def main(argv: list[str]) -> None:
  config = train_flags.config_from_flags()
  options = train_flags.distributed_options_from_flags()
  dry_run = train_flags.dry_run_from_flags()
  with errors.exit_on_user_error():
    config.validate()
    options.validate()
    if not dry_run:
      config.check_paths()
    # Heavy imports (jax, gemma, tensorflow) only once the flags are known to be good.
    from gemma_mt.train import distributed  # pylint: disable=import-outside-toplevel
    from gemma_mt.train import loop  # pylint: disable=import-outside-toplevel

    distributed.initialize(options)
    if dry_run:
      run, lines = loop.plan_memory(config)
      print('\n'.join(lines))
      if not run.memory_plan.fits():
        print(f'does not fit: {run.memory_plan.advice(run.config, run.mesh)}')
        sys.exit(1)
      return
    result = loop.train_and_evaluate(config)
  import jax  # pylint: disable=import-outside-toplevel

  if result.preempted or jax.process_index() != 0:
    return
  if result.eval_loss is not None:
    print(f'final eval_loss {result.eval_loss:.4f} at step {result.step}')
  if result.quality is not None:
    print(f'validation {result.quality.summary()}')
  if result.translations:
    print('translations of held-out sentences:')
    loop.print_translations(result)


def run() -> None:
  # Keep the libraries' INFO lines (Orbax logs every file it writes) out of the terminal;
  # gemma_mt's own INFO lines stay.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('gemma_mt').setLevel(logging.INFO)
  train_flags.define_flags()
  # --help lists the main module's flags: the training flags are defined in train/flags.py.
  flags.adopt_module_key_flags(train_flags)
  app.run(main, flags_parser=errors.parse_flags)


if __name__ == '__main__':
  run()

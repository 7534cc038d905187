"""``python -m gemma_mt.models --list``: the model names, their architecture and weight sources."""

from __future__ import annotations

from gemma_mt import tensorflow_startup

# Before anything imports gemma or TensorFlow.
tensorflow_startup.set_environment()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from gemma_mt import errors
from gemma_mt.models import registry

HEADER = ('name', 'family', 'parameters', 'vocabulary', 'context', '--ckpt sources')


def model_table() -> list[tuple[str, ...]]:
  """One row per model: ``HEADER``'s columns."""
  rows = []
  for spec in registry.MODELS.values():
    count = registry.count_params(registry.abstract_params(spec, 'float32'))
    sources = registry.SOURCES_OF_FAMILY[spec.family]
    rows.append((spec.name, spec.family, f'{count:,}', f'{spec.architecture.num_embed:,}',
                 f'{spec.context_length:,}',
                 'none (random init, bundled tokenizer)' if spec.is_random_init else
                 ', '.join(sources) + (f' (kaggle:{spec.kaggle_handle}/VERSION)'
                                       if spec.kaggle_handle else '')))
  return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
  widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEADER, *rows]]
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  with errors.exit_on_user_error():
    if not flags.FLAGS.list:
      raise errors.UserError('pass --list to list the models')
  print(format_table(model_table()))


if __name__ == '__main__':
  flags.DEFINE_boolean('list', False, 'List every --model name: family, parameters, vocabulary, '
                       'context length and which --ckpt sources hold its weights.')
  app.run(main, flags_parser=errors.parse_flags)

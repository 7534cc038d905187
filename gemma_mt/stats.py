"""``python -m gemma_mt.stats``: what a split holds once tokenized by a model's tokenizer.

    python -m gemma_mt.stats --dataset=tsv:MTNT/{split}/{split}.en-fr.tsv --split=valid \
        --max_seq_len=256 [--json] [--model=M | --ckpt=SOURCE | --tokenizer=FILE]
"""

from __future__ import annotations

import json

from absl import app
from absl import flags

from gemma_mt import errors
from gemma_mt import tensorflow_startup
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.models import sources as model_sources


def define_flags() -> None:
  flags.DEFINE_string('dataset', 'demo', 'As --dataset of gemma_mt.train.')
  flags.DEFINE_string('split', 'train', 'The split to read.')
  flags.DEFINE_integer('max_seq_len', 48, 'Tokens per row (prompt + target).')
  flags.DEFINE_string('model', '', 'Whose tokenizer to use (default: tiny, or the model --ckpt '
                      'holds).')
  flags.DEFINE_string('ckpt', '', 'As --ckpt of gemma_mt.train: its tokenizer.')
  flags.DEFINE_string('tokenizer', '', 'A sentencepiece tokenizer.model.')
  flags.DEFINE_enum('prompt_template', 'plain', records.PROMPT_TEMPLATES, 'As for training.')
  flags.DEFINE_enum('too_long', 'drop', records.TOO_LONG_POLICIES, 'As for training.')
  flags.DEFINE_integer('batch_size', 32, 'Rows per packed batch (for the packing fill rate).')
  flags.DEFINE_enum('tsv_quoting', 'csv', sources.TSV_QUOTING, 'As for training.')
  flags.DEFINE_string('tfds_data_dir', '', 'As for training.')
  flags.DEFINE_string('tfds_manual_dir', '', 'As for training.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')


def main(argv: list[str]) -> None:
  # Grain and jax only once the flags are known to be good.
  from gemma_mt.data import stats  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  with errors.exit_on_user_error():
    if f.max_seq_len <= 0 or f.batch_size <= 0:
      raise errors.UserError('--max_seq_len and --batch_size must be positive')
    run_model = model_sources.resolve_run_model(model_sources.model_name(f.model, f.ckpt), f.ckpt,
                                                f.tokenizer, need_weights=False)
    if not run_model.tokenizer_path:
      raise errors.UserError(f'--model={f.model} brings no tokenizer: pass --ckpt or --tokenizer')
    spec = sources.DatasetSpec.parse(f.dataset, tsv_quoting=f.tsv_quoting,
                                     tfds_data_dir=f.tfds_data_dir or None,
                                     tfds_manual_dir=f.tfds_manual_dir or None)
    numbers = stats.split_stats(
        spec, f.split, GemmaTokenizer(run_model.tokenizer_path), max_seq_len=f.max_seq_len,
        prompt_format=records.PromptFormat.from_template(f.prompt_template),
        too_long=f.too_long, batch_size=f.batch_size)
  print(json.dumps(numbers) if f.json else stats.format_table(numbers))


def run() -> None:
  tensorflow_startup.set_environment()  # a TFDS dataset imports TensorFlow
  define_flags()
  app.run(main, flags_parser=errors.parse_flags)


if __name__ == '__main__':
  run()

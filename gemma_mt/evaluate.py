"""``python -m gemma_mt.evaluate``: translate a split and score it (corpus BLEU and chrF++).

    python -m gemma_mt.evaluate --workdir=runs/demo --dataset=demo --split=valid [--limit=N]
    python -m gemma_mt.evaluate --ckpt=gguf:gemma3-270m \
        --dataset=tsv:MTNT/{split}/{split}.en-fr.tsv --split=valid --json

Prints the scores with sacrebleu's signatures (``--json``: one object) and writes
source / reference / hypothesis as a TSV file (``--output``).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from gemma_mt import errors
from gemma_mt import tensorflow_startup
from gemma_mt import translate
from gemma_mt.data import sources


def default_output(workdir: str, split: str, step: int | None) -> str:
  if workdir:
    return os.path.join(workdir, 'translations', f'{split}-step{step}.tsv')
  return f'translations-{split}.tsv'


def _tsv_field(text: str) -> str:
  return text.replace('\t', ' ').replace('\n', ' ')


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  with errors.exit_on_user_error():
    if f.limit < 0:
      raise errors.UserError('--limit must be 0 (every pair) or positive')
    spec = sources.DatasetSpec.parse(f.dataset, tsv_quoting=f.tsv_quoting,
                                     tfds_data_dir=f.tfds_data_dir or None,
                                     tfds_manual_dir=f.tfds_manual_dir or None)
    pairs, _ = sources.read_pairs(spec, f.split)
    pairs = pairs[: f.limit] if f.limit else pairs
    loaded = translate.model_from_flags()
    translator = translate.translator_from_flags(loaded)
  import tqdm  # pylint: disable=import-outside-toplevel
  from gemma_mt import quality  # pylint: disable=import-outside-toplevel

  with tqdm.tqdm(total=len(pairs), unit='pair', file=sys.stderr, dynamic_ncols=True) as bar:
    result = translator.translate([s for s, _ in pairs], on_batch=bar.update)
  scores = quality.corpus_scores(result.outputs, [t for _, t in pairs])
  output = f.output or default_output(f.workdir, f.split, loaded.step)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w', encoding='utf-8') as out:
    out.write('source\treference\thypothesis\n')
    for (source, reference), hypothesis in zip(pairs, result.outputs):
      out.write(f'{_tsv_field(source)}\t{_tsv_field(reference)}\t{_tsv_field(hypothesis)}\n')
  if f.json:
    print(json.dumps({'bleu': scores.bleu, 'chrf': scores.chrf,
                      'num_examples': scores.num_examples,
                      'signature': {'bleu': scores.bleu_signature, 'chrf': scores.chrf_signature},
                      'truncated': result.truncated, 'model': loaded.description,
                      'translations': output}))
  else:
    print(f'{loaded.description}, {f.dataset} split {f.split}')
    print(f'BLEU   {scores.bleu:.2f}  {scores.bleu_signature}')
    print(f'chrF++ {scores.chrf:.2f}  {scores.chrf_signature}')
    print(f'{scores.num_examples} pairs; translations in {output}')


def run() -> None:
  tensorflow_startup.set_environment()  # before main imports gemma
  translate.define_model_flags()
  flags.adopt_module_key_flags(translate)  # --help lists them too
  flags.DEFINE_string('dataset', 'demo', 'As --dataset of gemma_mt.train.')
  flags.DEFINE_string('split', 'valid', 'The split to translate and score.')
  flags.DEFINE_integer('limit', 0, 'Score the first N pairs only (0: all).')
  flags.DEFINE_bool('json', False, 'Print one JSON object (bleu, chrf, num_examples, signature).')
  flags.DEFINE_string('output', '', 'The source/reference/hypothesis TSV (default: '
                      'WORKDIR/translations/SPLIT-stepN.tsv, or ./translations-SPLIT.tsv).')
  flags.DEFINE_enum('tsv_quoting', 'csv', sources.TSV_QUOTING, 'As for training.')
  flags.DEFINE_string('tfds_data_dir', '', 'As for training.')
  flags.DEFINE_string('tfds_manual_dir', '', 'As for training.')
  app.run(main, flags_parser=errors.parse_flags)


if __name__ == '__main__':
  run()

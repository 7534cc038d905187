"""Benchmark: translation quality of the real Gemma 3 270M on MTNT English→French, zero-shot and
fine-tuned, measured in one run.

    .venv/bin/python bench/mtnt_quality.py             # about 30 minutes on the 2-core CPU
    .venv/bin/python bench/mtnt_quality.py --quick     # seconds: the tiny model on the demo corpus

Data: the MTNT validation split available offline (``../shared/data/mtnt/valid.en-fr.tsv``, read
one pair per line: 852 pairs). Its last ``--test_size`` pairs (100: lines 753–852) are the test
slice; the other pairs are the training data. ``--train``/``--test`` name other MTNT files (each
then used whole).

Rows: the pretrained model as it is, once per prompt (an answer ends at its first line break:
a pretrained model does not stop by itself), then the same model fine-tuned by
``gemma_mt.train`` (full parameters, AdamW, packed rows of ``--max_seq_len``) for ``--steps``
steps on the training pairs, decoded greedily and with beam search. Scores are sacrebleu's
corpus BLEU and chrF++ on the test slice; wall times are each row's own.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow
MTNT_VALID = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'

# Zero-shot prompts tried on the pretrained model: (name, prefix, suffix).
ZERO_SHOT_PROMPTS = (
    ('plain (training prompt)', 'Translate this into French:\n', '\n'),
    ('English:/French:', 'English: ', '\nFrench:'),
    ('gemma_chat', '<start_of_turn>user\nTranslate this into French:\n',
     '<end_of_turn>\n<start_of_turn>model\n'),
)


def read_split(args: argparse.Namespace) -> tuple[list, list]:
  """(train pairs, test pairs)."""
  from gemma_mt.data import sources

  if args.quick:
    demo = sources.DatasetSpec.parse('demo')
    return sources.read_pairs(demo, 'train')[0][:400], sources.read_pairs(demo, 'valid')[0][:24]

  def read(path: str) -> list:
    lines = pathlib.Path(path).read_text(encoding='utf-8').splitlines()
    return sources.parse_mtnt_tsv(lines, quoting='none')[0]

  if args.train or args.test:
    if not (args.train and args.test):
      sys.exit('error: --train and --test go together (or neither: the fixed MTNT slice)')
    return read(args.train), read(args.test)
  if not MTNT_VALID.is_file():
    sys.exit(f'error: {MTNT_VALID} not found: pass --train and --test MTNT .tsv files')
  pairs = read(str(MTNT_VALID))
  return pairs[: -args.test_size], pairs[-args.test_size:]


def write_tsv(path: pathlib.Path, pairs: list) -> None:
  path.write_text(''.join(f'{i}\t{s}\t{t}\n' for i, (s, t) in enumerate(pairs)), encoding='utf-8')


def score(translator, test: list) -> tuple[object, list[str], float]:
  from gemma_mt import quality

  start = time.perf_counter()
  outputs = translator([s for s, _ in test])
  return (quality.corpus_scores(outputs, [t for _, t in test]), outputs,
          time.perf_counter() - start)


def pretrained(args: argparse.Namespace) -> tuple:
  """(model, params, tokenizer) of the model before fine-tuning."""
  if args.quick:
    from gemma_mt import models
    from gemma_mt.data.tokenizer import GemmaTokenizer
    import jax.numpy as jnp

    spec = models.get_model_spec('tiny')
    model = spec.transformer(jnp.float32)
    return model, models.init_params(model, 0), GemmaTokenizer(spec.tokenizer_path)
  from gemma_mt import inference

  loaded = inference.from_source(args.ckpt)
  return loaded.model, loaded.params, loaded.tokenizer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model on the demo corpus')
  parser.add_argument('--ckpt', default='gguf:gemma3-270m', help='the pretrained model')
  parser.add_argument('--train', default='', help='an MTNT .tsv file to fine-tune on')
  parser.add_argument('--test', default='', help='an MTNT .tsv file to score')
  parser.add_argument('--test_size', type=int, default=100,
                      help='the last N pairs of the offline MTNT file are the test slice')
  parser.add_argument('--steps', type=int, default=110, help='fine-tuning steps')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--max_seq_len', type=int, default=128)
  parser.add_argument('--learning_rate', type=float, default=1e-4)
  parser.add_argument('--max_new_tokens', type=int, default=96)
  parser.add_argument('--beam_size', type=int, default=4)
  parser.add_argument('--examples', type=int, default=12, help='example translations shown')
  parser.add_argument('--workdir', default='', help='the fine-tuning run (default: temporary)')
  args = parser.parse_args()
  if args.quick:
    args.steps, args.max_seq_len, args.max_new_tokens, args.examples = 30, 48, 24, 3

  import jax
  from gemma_mt import inference
  from gemma_mt.data import records
  from gemma_mt.decoding import Translator
  from gemma_mt.train import loop
  from gemma_mt.train.config import TrainConfig

  started = time.perf_counter()
  train, test = read_split(args)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix='mtnt_quality_'))
  write_tsv(scratch / 'train.tsv', train)
  write_tsv(scratch / 'valid.tsv', test)
  rows, outputs = [], {}

  def add_row(model: str, prompt: str, steps: int, decoding: str, scores, wall: float) -> None:
    rows.append((model, prompt, steps, decoding, scores.bleu, scores.chrf, scores.num_examples,
                 wall))

  decode = dict(max_new_tokens=args.max_new_tokens, batch_size=20)
  model_name = 'tiny (random init)' if args.quick else args.ckpt
  model, params, tokenizer = pretrained(args)
  # A pretrained model goes on writing after its answer: an answer is its first line.
  newline = ('\n',) if tokenizer.piece_id('\n') is not None else ()
  for name, prefix, suffix in ZERO_SHOT_PROMPTS:
    translator = Translator(model, params, tokenizer, records.PromptFormat(prefix, suffix),
                            stop_pieces=newline, **decode)
    scores, outputs[name], wall = score(translator, test)
    add_row(model_name, name, 0, 'greedy', scores, wall)
  del model, params, translator  # freed before training

  workdir = args.workdir or str(scratch / 'run')
  config = TrainConfig(
      workdir=workdir, ckpt='' if args.quick else args.ckpt, model='tiny' if args.quick else '',
      dataset=f'tsv:{scratch}/{{split}}.tsv', tsv_quoting='none', packing=True,
      max_seq_len=args.max_seq_len, batch_size=args.batch_size, eval_batch_size=16,
      learning_rate=args.learning_rate if not args.quick else 3e-3, lr_schedule='cosine',
      warmup_steps=min(10, args.steps // 4), max_steps=args.steps, eval_every_n=args.steps,
      save_every_n=args.steps, log_every_n=10, bleu_examples=0, num_translations=0)
  start = time.perf_counter()
  result = loop.train_and_evaluate(config, devices=jax.devices()[:1])
  train_time = time.perf_counter() - start
  trained = inference.from_workdir(workdir)
  for beam_size in (1, args.beam_size):
    translator = Translator(trained.model, trained.params, trained.tokenizer,
                            trained.prompt_format, beam_size=beam_size, **decode)
    decoding = 'greedy' if beam_size == 1 else f'beam {beam_size}'
    scores, outputs[f'fine-tuned, {decoding}'], wall = score(translator, test)
    add_row(f'{model_name} fine-tuned', 'plain (training prompt)', result.step, decoding, scores,
            wall)

  print(f'## MTNT en→fr: {len(train)} training pairs, {len(test)} test pairs '
        f'({"demo corpus, --quick" if args.quick else "the last of the offline MTNT split"})\n')
  print('| model | prompt | steps | decoding | BLEU | chrF++ | test pairs | decode (s) |')
  print('|---|---|---|---|---|---|---|---|')
  for model, prompt, steps, decoding, bleu, chrf, n, wall in rows:
    print(f'| {model} | {prompt} | {steps} | {decoding} | {bleu:.2f} | {chrf:.2f} | {n} | '
          f'{wall:.1f} |')
  print(f'\nFine-tuning: {result.step} steps of {args.batch_size} packed rows × '
        f'{args.max_seq_len} tokens, AdamW {config.learning_rate:g} cosine, '
        f'{train_time:.0f} s (final eval loss {result.eval_loss:.4f}); whole run '
        f'{time.perf_counter() - started:.0f} s.')
  print(f'Signatures: {scores.bleu_signature}; {scores.chrf_signature}\n')
  columns = [name for name in outputs]
  print('| source | reference | ' + ' | '.join(columns) + ' |')
  print('|---|---|' + '---|' * len(columns))
  cell = lambda text: text.replace('|', '\\|').replace('\n', ' ')
  for i, (source, reference) in enumerate(test[: args.examples]):
    print(f'| {cell(source)} | {cell(reference)} | '
          + ' | '.join(cell(outputs[c][i]) for c in columns) + ' |')


if __name__ == '__main__':
  main()

"""``python -m gemma_mt.translate``: English lines in, one French line out per line, in order.

    python -m gemma_mt.translate --workdir=runs/demo [--step=N|best] [--input=FILE] [--output=FILE]
    python -m gemma_mt.translate --ckpt=gguf:gemma3-270m < english.txt

Input is standard input unless ``--input``; output standard output unless ``--output``; a progress
bar goes to standard error. An empty line gives an empty line; a line longer than the context
is translated from its truncated start (one warning counts them).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from absl import app
from absl import flags

from gemma_mt import errors
from gemma_mt import tensorflow_startup
from gemma_mt.data import records

if TYPE_CHECKING:  # the heavy modules load only once the flags are known to be good
  from gemma_mt import decoding, inference  # pylint: disable=g-import-not-at-top


def define_model_flags() -> None:
  """Where the model comes from (shared with ``gemma_mt.evaluate``)."""
  flags.DEFINE_string('workdir', '', 'A training run: translate with its checkpoint.')
  flags.DEFINE_string('step', None, 'The checkpoint step, or best: the best evaluation by the '
                      'run\'s --best_metric (default: the latest).')
  flags.DEFINE_string('ckpt', '', 'Or a released model as it is (as --ckpt of gemma_mt.train).')
  flags.DEFINE_string('model', '', 'With --ckpt: the model name, if the source does not say.')
  flags.DEFINE_string('tokenizer', '', 'With --ckpt: a tokenizer.model, if not beside it.')
  flags.DEFINE_string('prompt_template', '', 'With --ckpt: plain or gemma_chat (default: '
                      'gemma_chat for instruction-tuned models, plain otherwise).')
  flags.DEFINE_integer('batch_size', 32, 'Sentences decoded together.', lower_bound=1)
  flags.DEFINE_integer('max_new_tokens', 128, 'The most tokens generated per sentence.',
                       lower_bound=1)
  flags.DEFINE_enum('sampling', 'greedy', ('greedy', 'random', 'top_k', 'top_p'),
                    'Decoding: greedy, or sampling at --temperature (top_k: --top_k, top_p: '
                    '--top_p) seeded by --seed.')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
  flags.DEFINE_integer('top_k', 40, 'With --sampling=top_k.')
  flags.DEFINE_float('top_p', 0.9, 'With --sampling=top_p.')
  flags.DEFINE_integer('seed', 0, 'Seed of the sampling methods.')
  flags.DEFINE_integer('beam_size', 1, 'Above 1: beam search with this many beams (with '
                       '--sampling=greedy).', lower_bound=1)
  flags.DEFINE_float('length_penalty', 0.6, 'Beam search ranks hypotheses by log-probability / '
                     '((5 + length) / 6) ** this (GNMT; 0: no length normalisation).',
                     lower_bound=0.0)


def model_from_flags() -> inference.InferenceModel:
  """The InferenceModel that ``--workdir``/``--step`` or ``--ckpt`` name (after checking the
  decoding flags, so that a mistake there costs no model load)."""
  from gemma_mt import inference  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  if f.beam_size > 1 and f.sampling != 'greedy':
    raise errors.UserError(f'--beam_size={f.beam_size} with --sampling={f.sampling}: beam '
                           'search is deterministic; sample with --beam_size=1')
  if bool(f.workdir) == bool(f.ckpt):
    raise errors.UserError('pass either --workdir (a training run) or --ckpt (a released model)')
  if f.workdir:
    return inference.from_workdir(f.workdir, f.step)
  if f.prompt_template and f.prompt_template not in records.PROMPT_TEMPLATES:
    raise errors.UserError(f'--prompt_template={f.prompt_template!r}: use one of '
                           f'{", ".join(records.PROMPT_TEMPLATES)}')
  return inference.from_source(f.ckpt, f.model, f.tokenizer, f.prompt_template)


def translator_from_flags(loaded: inference.InferenceModel) -> decoding.Translator:
  from gemma_mt import decoding  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  return decoding.Translator(
      loaded.model, loaded.params, loaded.tokenizer, loaded.prompt_format,
      max_new_tokens=f.max_new_tokens, batch_size=f.batch_size, sampling=f.sampling,
      temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
      beam_size=f.beam_size, length_penalty=f.length_penalty)


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  with errors.exit_on_user_error():
    if f.input != '-' and not os.path.isfile(f.input):
      raise errors.UserError(f'--input={f.input} does not exist: pass a text file, one '
                             'sentence per line (or - for standard input)')
    loaded = model_from_flags()
    translator = translator_from_flags(loaded)
  import tqdm  # pylint: disable=import-outside-toplevel

  with (sys.stdin if f.input == '-' else open(f.input, encoding='utf-8')) as source:
    lines = [line.rstrip('\n').rstrip('\r') for line in source]
  with tqdm.tqdm(total=len(lines), unit='line', file=sys.stderr, dynamic_ncols=True) as bar:
    result = translator.translate(lines, on_batch=bar.update)
  if result.truncated:
    print(f'warning: {result.truncated} of {len(lines)} lines were longer than the context and '
          'were translated from their truncated start', file=sys.stderr)
  text = ''.join(out.replace('\n', ' ') + '\n' for out in result.outputs)
  if f.output == '-':
    sys.stdout.write(text)
  else:
    with open(f.output, 'w', encoding='utf-8') as out:
      out.write(text)


def run() -> None:
  tensorflow_startup.set_environment()  # before main imports gemma
  define_model_flags()
  flags.DEFINE_string('input', '-', 'English text, one sentence per line (-: standard input).')
  flags.DEFINE_string('output', '-', 'Where the French lines go (-: standard output).')
  app.run(main, flags_parser=errors.parse_flags)


if __name__ == '__main__':
  run()

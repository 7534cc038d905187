"""Benchmark: decoding throughput of ``gemma_mt.decoding.Translator`` (what ``gemma_mt.translate``
runs) against gemma's own ``gm.text.Sampler`` called one sentence at a time.

    .venv/bin/python bench/decode.py            # the real Gemma 3 270M (GGUF), 32 MTNT sentences
    .venv/bin/python bench/decode.py --quick    # seconds: the tiny model, random weights
    python bench/decode.py --model=gemma3-1b --tokenizer=T   # a shape with random weights (GPU)

Every row translates the same English sentences (the first ``--sentences`` of the offline MTNT
file, ``--mtnt``; the demo corpus's with ``--quick`` or where that file is absent) with the same
prompt (``English: … / French:``; an answer ends at its first line break, as in
``bench/mtnt_quality.py``'s zero-shot rows) and ``--max_new_tokens``; the Sampler's KV cache
holds the longest prompt bucket and the new tokens, the Translator sizes each batch's to its
padded prompts and the new tokens (as ``gemma_mt.translate`` does). Each row runs twice and
the second run is timed, so compilation is not counted. Generated tokens are the outputs'
tokens plus their end token.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow
MTNT_VALID = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'
PREFIX, SUFFIX = 'English: ', '\nFrench:'


def sentences(args: argparse.Namespace) -> tuple[list[str], str]:
  """The first ``--sentences`` English sentences, and where they come from."""
  from gemma_mt.data import sources

  mtnt = pathlib.Path(args.mtnt)
  if args.quick or not mtnt.is_file():
    pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
    origin = 'the demo corpus'
  else:
    origin = f'MTNT ({mtnt.name})'
    lines = mtnt.read_text(encoding='utf-8').splitlines()
    pairs = sources.parse_mtnt_tsv(lines, quoting='none')[0]
  return [source for source, _ in pairs[: args.sentences]], origin


def timed(translate, texts: list[str]) -> tuple[list[str], float]:
  translate(texts)  # compiles
  start = time.perf_counter()
  outputs = translate(texts)
  return outputs, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model, random weights')
  parser.add_argument('--ckpt', default='gguf:gemma3-270m')
  parser.add_argument('--model', default='', help='instead of --ckpt: this shape, random weights')
  parser.add_argument('--tokenizer', default='', help='with --model: its tokenizer.model '
                      '(default: Gemma 3\'s, rebuilt from the GGUF package)')
  parser.add_argument('--mtnt', default=str(MTNT_VALID),
                      help='MTNT file whose English sentences are translated (the demo corpus\' '
                      'where it is absent)')
  parser.add_argument('--sentences', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--beam_size', type=int, default=4)
  parser.add_argument('--max_new_tokens', type=int, default=48)
  parser.add_argument('--batched_only', action='store_true',
                      help="the Translator's batched rows only, beside the Sampler: its batch-1 "
                      'rows cost what the Sampler does (the CPU table) and compile once per '
                      'prompt length, which a GPU suite cannot spare')
  args = parser.parse_args()
  if args.quick:
    args.sentences, args.batch_size, args.max_new_tokens = 8, 8, 12
  from gemma_mt import models  # no jax yet: the checks below cost no start-up

  if args.model:
    try:
      models.get_model_spec(args.model)
    except KeyError as e:
      parser.exit(2, f'error: --model: {e.args[0]}\n')
  if args.mtnt != str(MTNT_VALID) and not pathlib.Path(args.mtnt).is_file():
    parser.exit(2, f'error: --mtnt={args.mtnt} is not a file: give an MTNT .tsv file '
                f'(id, English, French)\n')

  import jax
  import jax.numpy as jnp
  from gemma import gm
  from gemma_mt import inference
  from gemma_mt.data.records import PromptFormat
  from gemma_mt.data.tokenizer import GemmaTokenizer
  from gemma_mt.decoding import PROMPT_BUCKETS, Translator, gemma_text_tokenizer

  if args.quick or args.model:
    spec = models.get_model_spec(args.model or 'tiny')
    dtype = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
    model = spec.transformer(dtype)
    if spec.tokenizer_path:
      tokenizer_path = spec.tokenizer_path
    else:
      from gemma_mt.models import sources as model_sources
      tokenizer_path = args.tokenizer or model_sources.resolve('gguf:gemma3-270m').tokenizer_path
    params, tokenizer = models.init_params(model, 0), GemmaTokenizer(tokenizer_path)
    name = f'{spec.name} (random init, {jnp.dtype(dtype).name})'
  else:
    loaded = inference.from_source(args.ckpt)
    model, params, tokenizer, name = loaded.model, loaded.params, loaded.tokenizer, args.ckpt
  texts, origin = sentences(args)
  prompt_format = PromptFormat(PREFIX, SUFFIX)
  stop = ('\n',) if tokenizer.piece_id('\n') is not None else ()
  common = dict(max_new_tokens=args.max_new_tokens, stop_pieces=stop)

  # gemma's Sampler as its documentation calls it, one prompt at a time, with the Translator's
  # prompt padding and its largest cache (gemma's default, 4096 positions, would cost far more).
  sampler = gm.text.Sampler(
      model=model, params=params, tokenizer=gemma_text_tokenizer(tokenizer),
      cache_length=PROMPT_BUCKETS[-1] + args.max_new_tokens,
      max_out_length=args.max_new_tokens, pad_length=PROMPT_BUCKETS, stop_tokens=stop or None)

  def one_at_a_time(batch: list[str]) -> list[str]:
    return [sampler.sample(prompt_format.render(t), max_new_tokens=args.max_new_tokens)
            .split('\n')[0].strip() for t in batch]

  rows = [('gm.text.Sampler, one sentence at a time', 1, 'greedy', one_at_a_time)]
  shapes = ((1, 1), (args.batch_size, 1), (1, args.beam_size), (args.batch_size, args.beam_size))
  for batch_size, beam_size in shapes[1::2] if args.batched_only else shapes:
    translator = Translator(model, params, tokenizer, prompt_format, batch_size=batch_size,
                            beam_size=beam_size, **common)
    rows.append(('Translator', batch_size, 'greedy' if beam_size == 1 else f'beam {beam_size}',
                 translator))

  print(f'## Decoding throughput: {name}, {len(texts)} sentences of {origin}, up to '
        f'{args.max_new_tokens} '
        f'new tokens, {jax.devices()[0].platform.upper()} ({jax.device_count()} device)\n')
  print('| decoder | batch | decoding | sentences/s | generated tokens/s | wall (s) | '
        'sentences/s ÷ Sampler one at a time |')
  print('|---|---|---|---|---|---|---|', flush=True)
  base = None
  for label, batch_size, decoding, translate in rows:  # each row printed once measured
    outputs, seconds = timed(translate, texts)
    tokens = sum(len(tokenizer.encode(o)) + 1 for o in outputs)
    per_s = len(texts) / seconds
    base = base or per_s
    print(f'| {label} | {batch_size} | {decoding} | {per_s:.2f} | {tokens / seconds:.1f} | '
          f'{seconds:.1f} | {per_s / base:.2f} |', flush=True)

if __name__ == '__main__':
  main()

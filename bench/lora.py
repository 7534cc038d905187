"""Benchmark: full fine-tuning against LoRA (rank 8 and 16) and LoRA on an int8 / int4 base, on
the real Gemma 3 270M and MTNT English→French, measured in one run.

    .venv/bin/python bench/lora.py             # about 15 minutes on the 2-core CPU
    .venv/bin/python bench/lora.py --quick     # seconds: the tiny model on the demo corpus

Each row is one ``gemma_mt.train`` run (``train_and_evaluate``) from the same weights
(``--ckpt=gguf:gemma3-270m``, float32 parameters; a LoRA run's frozen base in bfloat16, or in
int8/int4 with bfloat16 compute) on the same pairs in the same order: ``--steps`` AdamW steps of
``--batch`` × ``--max_seq_len`` (constant learning rate: ``--lr_full`` for full fine-tuning,
``--lr_lora`` for adapters, the usual tenfold) on the first pairs of the offline MTNT file
(``../shared/data/mtnt/valid.en-fr.tsv``), evaluated on its last 100 pairs at the end. Memory is the run's own plan per device (XLA's account of the compiled
step plus the state's shards, ``--dry_run``'s numbers); the step time is the median of the
steps after the first report window (compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gemma_mt import tensorflow_startup  # pylint: disable=wrong-import-position

tensorflow_startup.set_environment()  # before anything imports gemma or TensorFlow
MTNT_VALID = REPO.parent / 'shared' / 'data' / 'mtnt' / 'valid.en-fr.tsv'

# (row name, TrainConfig overrides)
ROWS = (
    ('full fine-tuning (float32)', {}),
    ('LoRA r8, bf16 base', dict(lora_rank=8, lora_alpha=16, base_dtype='bfloat16')),
    ('LoRA r16, bf16 base', dict(lora_rank=16, lora_alpha=32, base_dtype='bfloat16')),
    ('LoRA r16, int8 base', dict(lora_rank=16, lora_alpha=32, base_dtype='bfloat16',
                                 base_quantization='int8', compute_dtype='bfloat16')),
    ('LoRA r16, int4 base', dict(lora_rank=16, lora_alpha=32, base_dtype='bfloat16',
                                 base_quantization='int4', compute_dtype='bfloat16')),
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model, seconds')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--lr_full', type=float, default=5e-5)
  parser.add_argument('--lr_lora', type=float, default=5e-4)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--max_seq_len', type=int, default=64)
  args = parser.parse_args()

  import jax
  from gemma_mt import TrainConfig, train_and_evaluate
  from gemma_mt.data import sources

  work = pathlib.Path(tempfile.mkdtemp(prefix='bench-lora-'))
  if args.quick:
    common = dict(dataset='demo', max_steps=4, batch_size=8, log_every_n=2, eval_every_n=4,
                  max_seq_len=48)
    what = 'tiny (random base), demo corpus'
  else:
    if not MTNT_VALID.is_file():
      sys.exit(f'error: {MTNT_VALID} not found (the shared MTNT file this benchmark trains on)')
    lines = MTNT_VALID.read_text(encoding='utf-8').splitlines()
    pairs = sources.parse_mtnt_tsv(lines, quoting='none')[0]
    for split, part in (('train', pairs[:-100]), ('valid', pairs[-100:])):
      (work / f'{split}.jsonl').write_text(''.join(
          json.dumps({'src': s, 'dst': t}, ensure_ascii=False) + '\n' for s, t in part),
          encoding='utf-8')
    common = dict(ckpt='gguf:gemma3-270m', dataset=f'jsonl:{work}/{{split}}.jsonl',
                  max_steps=args.steps, batch_size=args.batch, max_seq_len=args.max_seq_len,
                  log_every_n=5, eval_every_n=args.steps, lr_schedule='constant',
                  warmup_steps=0)
    what = f'Gemma 3 270M (gguf:gemma3-270m), MTNT: {len(pairs) - 100} train / 100 eval pairs'
  common.update(num_translations=0, bleu_examples=0, save_every_n=10**6, eval_batch_size=20)
  print(f'{what}; {common["max_steps"]} steps of {common["batch_size"]} × '
        f'{common["max_seq_len"]} tokens, learning rate {args.lr_full:g} (full) / '
        f'{args.lr_lora:g} (LoRA); {jax.device_count()} {jax.devices()[0].platform} device(s)\n')
  header = ('| run | trained parameters | memory plan per device (GiB) | of which frozen base | '
            'step time (s) | eval loss |')
  print(header)
  print('|' + '---|' * 6)
  full_time = None
  for name, overrides in ROWS:
    workdir = work / name.split(',')[0].replace(' ', '_') / name.replace(' ', '').replace(',', '_')
    rate = args.lr_lora if overrides.get('lora_rank') else args.lr_full
    config = TrainConfig(workdir=str(workdir), learning_rate=rate, **{**common, **overrides})
    result = train_and_evaluate(config)
    reports = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    times = [r['step_time_sec'] for r in reports if 'step_time_sec' in r][1:] or [
        r['step_time_sec'] for r in reports if 'step_time_sec' in r]
    median = statistics.median(times)
    full_time = full_time or median
    plan = result.memory_plan
    print(f'| {name} | {_count(result.state.params):,} | {plan.total / 2**30:.2f} | '
          f'{plan.frozen / 2**30:.2f} | {median:.2f} ({median / full_time:.2f}×) | '
          f'{result.eval_loss:.4f} |', flush=True)


def _count(tree) -> int:
  import jax
  return sum(x.size for x in jax.tree.leaves(tree))


if __name__ == '__main__':
  main()

import json
import subprocess
import sys

from conftest import REPO, subprocess_env


def _stats(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'gemma_mt.stats', *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)


def test_mtnt_stats_json_adds_up(mtnt_valid_tsv):
  done = _stats(f'--dataset=tsv:{mtnt_valid_tsv}', '--split=valid', '--max_seq_len=256', '--json')
  assert done.returncode == 0, done.stderr
  stats = json.loads(done.stdout)
  assert stats['examples'] == 812 and stats['dropped_malformed'] == 1
  assert stats['examples'] - stats['dropped_malformed'] == 811
  assert stats['kept'] + stats['dropped_too_long'] + stats['dropped_empty'] + \
      stats['dropped_malformed'] == stats['examples']
  assert stats['dropped_too_long'] > 0
  assert 0 < stats['padding_fraction'] < 1 and stats['packed_fill_rate'] > stats['padding_fraction']
  assert stats['prompt_tokens_percentiles']['p50'] <= stats['prompt_tokens_percentiles']['p99']


def test_demo_stats_table_and_padding_fraction(demo_tokenizer):
  from gemma_mt.data import pipeline, records, sources
  done = _stats('--split=valid', '--max_seq_len=48')
  assert done.returncode == 0, done.stderr
  assert 'padding_fraction' in done.stdout and 'packed_fill_rate' in done.stdout
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  kept, _ = pipeline.encode_examples(pairs, demo_tokenizer, records.PromptFormat(), 48)
  tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in kept)
  stats = json.loads(_stats('--split=valid', '--max_seq_len=48', '--json').stdout)
  assert abs(stats['padding_fraction'] - (1 - tokens / (48 * len(kept)))) < 1e-12


def test_bad_input_is_one_line():
  done = _stats('--dataset=tsv:/nonexistent.tsv')
  assert done.returncode == 2 and done.stderr.startswith('error: dataset file /nonexistent.tsv')
  done = _stats('--max_seq_len=0')
  assert done.returncode == 2 and 'must be positive' in done.stderr

import functools

import jax
import jax.numpy as jnp
import pytest

from gemma_mt import models
from gemma_mt.data.records import PromptFormat
from gemma_mt.decoding import Translator, gemma_text_tokenizer


def test_gemma_sampler_tokenizer_has_the_same_ids(demo_tokenizer):
  tokenizer = gemma_text_tokenizer(demo_tokenizer)
  assert tokenizer.special_tokens.EOS == demo_tokenizer.eos_id
  assert tokenizer.special_tokens.BOS == demo_tokenizer.bos_id
  assert tokenizer.special_tokens.END_OF_TURN == demo_tokenizer.piece_id('<end_of_turn>')
  assert tokenizer.encode('Le chat.') == demo_tokenizer.encode('Le chat.').tolist()


def test_translations_stop_at_eos(demo_tokenizer):
  spec = models.get_model_spec('tiny')
  model = spec.transformer(jnp.float32)
  params = models.init_params(model, 0)
  # Make EOS the most likely next token everywhere: decoding must stop at once.
  embedding = params['embedder']['input_embedding']
  params['embedder']['input_embedding'] = embedding.at[demo_tokenizer.eos_id].set(
      embedding.mean(0) * 0 + 50.0)
  translator = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=8)
  assert translator(['The cat.', 'I see two dogs.']) == ['', '']
  # A model pushed to one word instead never stops: exactly the budget of 8 tokens, decoded.
  word = demo_tokenizer.piece_id('▁chat')
  params = models.init_params(model, 0)
  params['embedder']['input_embedding'] = embedding.at[word].set(embedding.mean(0) * 0 + 50.0)
  chatty = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=8)
  out = chatty(['The cat.', 'I see two dogs.'])
  assert out == [' '.join(['chat'] * 8)] * 2, out


def _pushed_to(model, piece_id):
  """Parameters whose every next token is ``piece_id``."""
  params = models.init_params(model, 0)
  embedding = params['embedder']['input_embedding']
  params['embedder']['input_embedding'] = embedding.at[piece_id].set(embedding.mean(0) * 0 + 50.0)
  return params


def test_decoding_stops_at_end_of_turn_too(demo_tokenizer):
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  end_of_turn = demo_tokenizer.piece_id('<end_of_turn>')
  translator = Translator(model, _pushed_to(model, end_of_turn), demo_tokenizer,
                          PromptFormat.from_template('gemma_chat'), max_new_tokens=8)
  assert translator(['The cat.', 'I see two dogs.']) == ['', '']


# The tests of one trained model share a worker, so that it is trained once (conftest.SHARED_RUNS).
@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A short demo run: a model whose translations differ from sentence to sentence (after 100
  steps; after 50, one output for every source)."""
  from gemma_mt.train import loop
  from gemma_mt.train.config import TrainConfig
  workdir = tmp_path_factory.mktemp('trained')
  result = loop.train_and_evaluate(TrainConfig(
      workdir=str(workdir), max_steps=100, eval_every_n=100, save_every_n=100, log_every_n=50,
      num_translations=0, bleu_examples=0))
  return workdir, result


def test_batched_greedy_equals_one_by_one_and_keeps_order(demo_tokenizer, trained, monkeypatch):
  from gemma_mt.data import sources
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  params = trained[1].state.params
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  # Lengths that differ in one batch, an empty line, and a source longer than the prompt room.
  sources_ = [s for s, _ in pairs[:9]] + ['', 'The cat. ' * 60]
  batched = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=12,
                       batch_size=4, max_prompt_tokens=64)
  result = batched.translate(sources_)
  one_by_one = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=12,
                          batch_size=1, max_prompt_tokens=64)
  assert result.outputs == [one_by_one([s])[0] for s in sources_]
  assert result.outputs[9] == '' and result.truncated == 1
  assert len(set(result.outputs[:9])) > 1  # not one output for all: order is kept, not luck
  # Each batch's KV cache holds its prompts' padded length and the new tokens, no more: two
  # batches of short prompts (bucket 32), one with the cut source (64). The outputs are those of
  # a cache sized for the longest prompt, as gemma's Sampler is given one.
  assert sorted(batched._samplers_by_cache_length) == [32 + 12, 64 + 12]
  monkeypatch.setattr(Translator, '_sampler_for', lambda self, prompts: self._sampler)
  full_cache = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=12,
                          batch_size=4, max_prompt_tokens=64)
  assert full_cache._sampler.cache_length == 64 + 12
  assert full_cache(sources_) == result.outputs


def _reference_beam_search(forward, length, prompt_ids, k, alpha, max_new_tokens, end_ids):
  """Beam search as written in a textbook: every hypothesis re-run from its first token (no
  cache), K unfinished and K finished kept, ranked by log-prob / ((5 + length) / 6) ** alpha.
  ``forward(tokens [1, length], last)``: the next token's log-probabilities after ``last``."""
  import numpy as np

  penalty = lambda n: ((5.0 + n) / 6.0) ** alpha
  alive, finished = [(0.0, [])], []
  for step in range(max_new_tokens):
    candidates = []
    for score, seq in alive:
      ids = prompt_ids + seq
      log_probs = np.asarray(forward(jnp.asarray([ids + [0] * (length - len(ids))]),
                                     len(ids) - 1))
      candidates += [(score + log_probs[t], seq + [int(t)]) for t in np.argsort(-log_probs)[:2 * k]]
    candidates = sorted(candidates, key=lambda c: -c[0])[:2 * k]
    finished = sorted(finished + [(s / penalty(step + 1), seq) for s, seq in candidates
                                  if seq[-1] in end_ids], key=lambda c: -c[0])[:k]
    alive = [c for c in candidates if c[1][-1] not in end_ids][:k]
    if len(finished) == k and finished[-1][0] >= alive[0][0] / penalty(max_new_tokens):
      break
  best = finished[0][1] if finished else alive[0][1]
  return [t for t in best if t not in end_ids]


def _demo_sources(count: int) -> list[str]:
  from gemma_mt.data import sources
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  return [source for source, _ in pairs[:count]]


def test_beam_search_finds_what_a_cacheless_beam_search_finds(demo_tokenizer, trained):
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  params = trained[1].state.params
  sources_ = _demo_sources(5)
  end_ids = {demo_tokenizer.eos_id, demo_tokenizer.piece_id('<end_of_turn>')}
  gm_tokenizer = gemma_text_tokenizer(demo_tokenizer)
  prompt_ids = [gm_tokenizer.encode(PromptFormat().render(s), add_bos=True) for s in sources_]
  # Causal attention: a row padded on the right gives the same logits up to its last token, so
  # every hypothesis of every prompt runs at one padded length, one compiled program.
  length = max(map(len, prompt_ids)) + 10
  forward = jax.jit(lambda p, tokens, last: jax.nn.log_softmax(
      model.apply({'params': p}, tokens=tokens).logits[0, last].astype(jnp.float32)))
  greedy = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=10,
                      batch_size=2)(sources_)
  for k, alpha in ((3, 0.6), (2, 0.0)):
    beams = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=10,
                       batch_size=2, beam_size=k, length_penalty=alpha)(sources_)
    expected = [demo_tokenizer.decode(_reference_beam_search(
        functools.partial(forward, params), length, ids, k, alpha, 10, end_ids)).strip()
                for ids in prompt_ids]
    assert beams == expected, (k, alpha)
  assert beams != greedy  # the beams found other translations than greedy decoding
  # One beam without length normalisation is greedy decoding, row for row.
  from gemma import gm
  from gemma_mt import beam_search
  prompts = [PromptFormat().render(s) for s in sources_]
  common = dict(model=model, params=params, tokenizer=gm_tokenizer, cache_length=96,
                max_out_length=10, pad_length=(64,))
  assert (beam_search.BeamSampler(beam_size=1, length_penalty=0.0, **common).sample(prompts)
          == gm.text.Sampler(**common).sample(prompts))


def test_beam_search_stops_at_eos_and_at_the_budget(demo_tokenizer):
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  stops = Translator(model, _pushed_to(model, demo_tokenizer.eos_id), demo_tokenizer,
                     PromptFormat(), max_new_tokens=8, beam_size=3)
  assert stops(['The cat.', 'I see two dogs.']) == ['', '']
  chatty = Translator(model, _pushed_to(model, demo_tokenizer.piece_id('▁chat')),
                      demo_tokenizer, PromptFormat(), max_new_tokens=8, beam_size=3)
  assert chatty(['The cat.', 'I see two dogs.']) == [' '.join(['chat'] * 8)] * 2


def test_decoding_on_the_training_mesh_gives_the_single_device_outputs(demo_tokenizer, trained):
  from gemma_mt.train import sharding
  from gemma_mt.train.mesh_spec import MeshSpec
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  params = trained[1].state.params
  sources_ = _demo_sources(11)
  mesh = sharding.make_mesh(MeshSpec(data=2, fsdp=2, tensor=2))
  sharded = jax.device_put(params, sharding.param_shardings(mesh, params))
  expected = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=10,
                        batch_size=3)(sources_)
  for beam_size in (1, 2):
    on_mesh = Translator(model, sharded, demo_tokenizer, PromptFormat(), max_new_tokens=10,
                         batch_size=3, mesh=mesh, beam_size=beam_size, length_penalty=0.0)
    assert on_mesh._batch_rows == 4  # 3 rounded up to the 4 batch shards (data × fsdp)
    outputs = on_mesh(sources_)
    if beam_size == 1:
      assert outputs == expected
    else:
      assert outputs == Translator(model, params, demo_tokenizer, PromptFormat(),
                                   max_new_tokens=10, beam_size=2, length_penalty=0.0)(sources_)


def test_sampling_is_seeded(demo_tokenizer):
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  params = models.init_params(model, 0)

  def sample(seed):
    return Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=10,
                      sampling='top_p', temperature=1.5, seed=seed)(['The cat.', 'The dog.'])

  assert sample(3) == sample(3)
  assert sample(3) != sample(4)


def _cli(module: str, *args: str, stdin: str | None = None):
  import subprocess
  import sys
  from conftest import REPO, subprocess_env
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=subprocess_env(),
                        input=stdin, capture_output=True, text=True, timeout=300)


def test_translate_cli_keeps_lines_in_order_with_empty_and_over_long_ones(
    demo_tokenizer, trained, tmp_path):
  workdir, result = trained
  lines = ['The student bought the pretty oranges.', '', 'I will not find the flowers.',
           'The cat. ' * 200, 'He will find eleven tired dogs.']
  (tmp_path / 'en.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
  done = _cli('gemma_mt.translate', f'--workdir={workdir}', f'--input={tmp_path / "en.txt"}',
              f'--output={tmp_path / "fr.txt"}', '--max_new_tokens=48', '--batch_size=2')
  assert done.returncode == 0, done.stderr[-3000:]
  out = (tmp_path / 'fr.txt').read_text(encoding='utf-8').split('\n')
  assert len(out) == len(lines) + 1 and out[-1] == ''  # one line per input line
  assert out[1] == '' and all(out[i] for i in (0, 2, 3, 4))
  assert 'warning: 1 of 5 lines were longer than the context' in done.stderr
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  library = Translator(model, result.state.params, demo_tokenizer, PromptFormat(),
                       max_new_tokens=48)
  assert out[:5] == library(lines)
  # Standard input to standard output works the same.
  # (Its one checkpoint, step 100, was saved with an evaluation: it is the best too.)
  piped = _cli('gemma_mt.translate', f'--workdir={workdir}', '--max_new_tokens=48',
               '--step=best', stdin='I will not find the flowers.\n')
  assert piped.returncode == 0 and piped.stdout == out[2] + '\n'


def test_translate_cli_bad_workdir_and_step_are_one_line_exit_2(trained, tmp_path):
  import re
  from gemma_mt import inference
  workdir, _ = trained
  done = _cli('gemma_mt.translate', f'--workdir={tmp_path}', stdin='The cat.\n')
  assert done.returncode == 2
  no_checkpoint = (f'--workdir={tmp_path} holds no checkpoint: train first, or pass a released '
                   'model with --ckpt')
  assert done.stderr.strip().splitlines()[-1] == f'error: {no_checkpoint}'
  # The same where a run made checkpoints/ but stopped before its first save.
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(inference.InferenceError, match=f'^{re.escape(no_checkpoint)}$'):
    inference.from_workdir(str(tmp_path))
  done = _cli('gemma_mt.translate', f'--workdir={workdir}', '--step=7', stdin='The cat.\n')
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
      f'error: --step=7: {workdir} has checkpoints at steps 100')
  done = _cli('gemma_mt.translate', f'--workdir={workdir}', '--step=last', stdin='The cat.\n')
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == 'error: --step=last: pass a step number or best'


def test_evaluate_cli_json_and_tsv(trained, tmp_path):
  import json
  from gemma_mt import quality
  workdir, _ = trained
  done = _cli('gemma_mt.evaluate', f'--workdir={workdir}', '--dataset=demo', '--split=valid',
              '--limit=40', '--json', f'--output={tmp_path / "valid.tsv"}')
  assert done.returncode == 0, done.stderr[-3000:]
  scores = json.loads(done.stdout)
  assert {'bleu', 'chrf', 'num_examples', 'signature'} <= set(scores)
  assert scores['num_examples'] == 40 and 0 < scores['bleu'] < 100
  rows = [l.split('\t') for l in (tmp_path / 'valid.tsv').read_text().splitlines()]
  assert rows[0] == ['source', 'reference', 'hypothesis'] and len(rows) == 41
  again = quality.corpus_scores([r[2] for r in rows[1:]], [r[1] for r in rows[1:]])
  assert again.bleu == pytest.approx(scores['bleu']) and again.chrf == pytest.approx(scores['chrf'])
  assert scores['signature']['bleu'] == again.bleu_signature

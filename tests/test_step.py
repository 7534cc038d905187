import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gemma_mt import models
from gemma_mt.data.records import TrainingInput
from gemma_mt.train import step as step_lib


@pytest.fixture(scope='module')
def tiny():
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  return model, models.init_params(model, 0)


def _jitted(fn, **static):
  """``fn`` compiled as training compiles it, its non-array arguments fixed (run eagerly, every
  operation of the model would compile on its own)."""
  return jax.jit(functools.partial(fn, **static))


def _batch(seed: int = 0, rows: int = 4, length: int = 16) -> TrainingInput:
  rng = np.random.RandomState(seed)
  tokens = rng.randint(4, 1000, size=(rows, length)).astype(np.int32)
  tokens[:, 0] = 2
  mask = np.zeros((rows, length), bool)
  for r in range(rows):
    end = length - r  # row r has r padding tokens
    tokens[r, end:] = 0
    mask[r, 6:end] = True
  return TrainingInput(tokens, mask)


def test_attention_inputs_from_padding():
  tokens = jnp.array([[2, 5, 6, 0, 0]])
  positions, mask = step_lib.attention_inputs(TrainingInput(tokens, tokens > 2), pad_id=0)
  np.testing.assert_array_equal(positions[0, :3], [0, 1, 2])
  assert mask.shape == (1, 5, 5)
  np.testing.assert_array_equal(mask[0, 2], [True, True, True, False, False])
  assert not mask[0, 1, 2]  # causal
  assert not mask[0, 4, 3]  # padding keys are never attended


def test_loss_is_the_mean_over_every_target_token_of_the_batch(tiny):
  model, params = tiny
  batch = _batch()
  model_logits = _jitted(step_lib.model_logits, model=model, pad_id=0)
  logits = np.asarray(model_logits(params=params, batch=batch), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  total, count = 0.0, 0
  for r in range(batch.input_tokens.shape[0]):
    for t in range(1, batch.input_tokens.shape[1]):
      if batch.target_mask[r, t]:
        total -= log_probs[r, t - 1, batch.input_tokens[r, t]]
        count += 1
  loss, sums = _jitted(step_lib.mean_loss, model=model, pad_id=0)(params, batch)
  assert float(sums.num_tokens) == count
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_accuracy_counts_target_tokens_whose_logit_is_the_largest():
  """``num_correct``: the target tokens that the logits before them rank first (what an argmax
  picks), masked ones and the last position's never counted."""
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(3, 10, 40)).astype(np.float32)
  tokens = rng.randint(4, 40, size=(3, 10)).astype(np.int32)
  mask = rng.rand(3, 10) < 0.6
  made_first = rng.rand(3, 10) < 0.5  # half the positions: the next token ranked first
  for r in range(3):
    for t in range(1, 10):
      if made_first[r, t]:
        logits[r, t - 1, tokens[r, t]] = logits[r, t - 1].max() + 1.0
  logits[:, -1, :] = 0.0
  logits[:, -1, 0] = 5.0  # the last position ranks token 0 first: it predicts nothing
  expected = sum(bool(mask[r, t]) and logits[r, t - 1].argmax() == tokens[r, t]
                 for r in range(3) for t in range(1, 10))
  assert expected > 3
  sums = step_lib.loss_sums(jnp.asarray(logits), TrainingInput(tokens, mask))
  assert float(sums.num_correct) == expected
  assert float(sums.num_tokens) == mask[:, 1:].sum()


def test_every_row_counts_and_padding_rows_weigh_nothing(tiny):
  model, params = tiny
  batch = _batch()
  mean_loss = _jitted(step_lib.mean_loss, model=model, pad_id=0)
  loss, _ = mean_loss(params, batch)
  changed = batch.input_tokens.copy()
  changed[3, 8] = (changed[3, 8] + 7) % 1000 + 4  # a target token of the last row
  other, _ = mean_loss(params, batch._replace(input_tokens=changed))
  assert float(other) != float(loss)
  padded = TrainingInput(np.concatenate([batch.input_tokens, np.zeros((2, 16), np.int32)]),
                         np.concatenate([batch.target_mask, np.zeros((2, 16), bool)]))
  eval_step = _jitted(step_lib.eval_step, model=model, pad_id=0)
  sums, ref = eval_step(params, padded), eval_step(params, batch)
  np.testing.assert_allclose(float(sums.loss_sum), float(ref.loss_sum), rtol=1e-6)
  assert float(sums.num_tokens) == float(ref.num_tokens)


def test_train_step_learns_and_reports(tiny):
  model, params = tiny
  optimizer = optax.adamw(1e-2)
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  fn = jax.jit(functools.partial(step_lib.train_step, model=model, optimizer=optimizer,
                                 pad_id=0, learning_rate_fn=optax.constant_schedule(1e-2)))
  batch = _batch()
  losses = []
  for _ in range(5):
    state, metrics = fn(state, batch)
    losses.append(float(metrics['train_loss']))
  assert losses[-1] < losses[0] / 2
  assert int(state.step) == 5
  assert set(metrics) == {'train_loss', 'train_accuracy', 'num_target_tokens', 'grad_norm',
                          'learning_rate', 'num_examples'}
  assert int(metrics['num_examples']) == batch.input_tokens.shape[0]  # one example per row


def test_packed_loss_equals_unpacked_loss(tiny, demo_tokenizer):
  from gemma_mt.data import pipeline, records, sources
  model, params = tiny
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  examples, _ = pipeline.encode_examples(pairs[:24], demo_tokenizer, records.PromptFormat(), 48)
  padded = list(pipeline.eval_dataset(examples, max_seq_len=48, pad_id=0,
                                      global_batch_size=24))[0]
  packed_ds = pipeline.packed_train_dataset(examples, max_seq_len=128, pad_id=0,
                                            global_batch_size=2, seed=0, num_epochs=1)
  it = pipeline.make_iterator(packed_ds)
  packed = next(it)
  assert int(packed.segment_ids.max()) > 1
  # The packed rows hold a subset of the examples: compare against exactly those, unpacked.
  in_packed = set()
  for row in range(packed.input_tokens.shape[0]):
    for seg in range(1, int(packed.segment_ids[row].max()) + 1):
      in_packed.add(tuple(packed.input_tokens[row][packed.segment_ids[row] == seg]))
  keep = [i for i, e in enumerate(examples)
          if tuple(np.concatenate([e.prompt_ids, e.target_ids])) in in_packed]
  assert len(keep) == len(in_packed) >= 6
  unpacked = TrainingInput(padded.input_tokens[keep], padded.target_mask[keep])
  mean_loss = _jitted(step_lib.mean_loss, model=model, pad_id=0)
  loss_packed, sums_packed = mean_loss(params, packed)
  loss_unpacked, sums_unpacked = mean_loss(params, unpacked)
  assert float(sums_packed.num_tokens) == float(sums_unpacked.num_tokens)
  np.testing.assert_allclose(float(loss_packed), float(loss_unpacked), rtol=1e-5)


def _softcapped_tiny(vocab: int = 1024, softcap: float | None = 30.0):
  """The tiny model with Gemma 2's final logit soft-capping (and another vocabulary size)."""
  import dataclasses
  from gemma import gm
  config = dataclasses.replace(models.get_model_spec('tiny').transformer_config(),
                               final_logit_softcap=softcap, num_embed=vocab)
  return gm.nn.Transformer(config=config, dtype=jnp.float32)


def test_chunked_loss_has_the_same_value_and_gradients(demo_tokenizer):
  """Padded rows without soft-capping, packed rows with soft-capping; chunks of 5 positions leave
  a padded last chunk."""
  from gemma_mt.data import pipeline, records, sources
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  examples, _ = pipeline.encode_examples(pairs[:24], demo_tokenizer, records.PromptFormat(), 32)
  packed = next(pipeline.make_iterator(pipeline.packed_train_dataset(
      examples, max_seq_len=32, pad_id=0, global_batch_size=4, seed=0, num_epochs=1)))
  # A small cap, so that soft-capping changes these small logits (30 would barely touch them).
  for softcap, batch in ((None, _batch()), (2.0, packed)):
    model = _softcapped_tiny(softcap=softcap)
    params = models.init_params(model, 0)
    full = _jitted(step_lib.summed_gradients, model=model, pad_id=0)(params, batch)
    chunked = _jitted(step_lib.summed_gradients, model=model, pad_id=0, loss_chunk=5)(params, batch)
    np.testing.assert_allclose(np.array(chunked[1]), np.array(full[1]), rtol=1e-5)
    # Summed float32 gradients, added up in another order: equal to 1e-4 of each
    # parameter's largest gradient (a few of 131,072 embedding entries differ by 1.5e-6 here).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=max(1e-6, 1e-4 * float(np.abs(b).max()))), chunked[0], full[0])
    np.testing.assert_allclose(
        np.array(_jitted(step_lib.eval_step, model=model, pad_id=0, loss_chunk=7)(params, batch)),
        np.array(_jitted(step_lib.eval_step, model=model, pad_id=0)(params, batch)), rtol=1e-5)


def test_chunked_loss_never_holds_the_full_logits():
  """A 262,144-piece vocabulary: the compiled step's temporaries are less than the full float32
  logits with chunks of 8 positions, more than twice that without."""
  model = _softcapped_tiny(vocab=262_144)
  abstract_params = jax.eval_shape(lambda: models.init_params(model, 0))
  batch = jax.eval_shape(lambda: _batch(rows=8, length=64))
  logits_bytes = 8 * 64 * 262_144 * 4

  def temporaries(loss_chunk: int) -> int:
    grad = jax.jit(functools.partial(step_lib.summed_gradients, model=model, pad_id=0,
                                     loss_chunk=loss_chunk))
    return grad.lower(abstract_params, batch).compile().memory_analysis().temp_size_in_bytes

  assert temporaries(8) < logits_bytes < temporaries(0) / 2


def test_evaluation_counts_every_batch_and_weighs_tokens(tiny, demo_tokenizer):
  """``loop.evaluate`` over 7 batches of 8 (the last one filled with rows that weigh nothing),
  its sums read batches after they are dispatched: the loss and accuracy of one batch of all 50
  examples."""
  from gemma_mt.data import pipeline, records, sources
  from gemma_mt.train import loop, sharding
  from gemma_mt.train.mesh_spec import MeshSpec

  model, params = tiny
  pairs, _ = sources.read_pairs(sources.DatasetSpec.parse('demo'), 'valid')
  examples, _ = pipeline.encode_examples(pairs[:50], demo_tokenizer, records.PromptFormat(),
                                         max_seq_len=48)
  assert len(examples) == 50
  mesh = sharding.make_mesh(MeshSpec.parse('data:1'), jax.devices()[:1])
  eval_fn = _jitted(step_lib.eval_step, model=model, pad_id=demo_tokenizer.pad_id)

  def evaluate(batch_size: int) -> dict[str, float]:
    return loop.evaluate(eval_fn, params, pipeline.eval_dataset(
        examples, max_seq_len=48, pad_id=demo_tokenizer.pad_id, global_batch_size=batch_size),
        mesh)

  batched, whole = evaluate(8), evaluate(56)
  assert batched['eval_loss'] == pytest.approx(whole['eval_loss'], rel=1e-6)
  assert batched['eval_accuracy'] == pytest.approx(whole['eval_accuracy'], rel=1e-6)

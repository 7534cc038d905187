"""Pure functions of one step: attention inputs, the weighted loss, train_step and eval_step.

Each works for any flax model that takes ``(tokens, positions=, attention_mask=)`` and returns an
object with ``.logits``; users pass their own model (or loss) in. Losses are returned as sums with
their token counts, so that sums over batches, devices and accumulation steps stay exact.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gemma_mt.data.records import TrainingInput
from gemma_mt.models import lora

Params = Any


@flax.struct.dataclass
class TrainState:
  """What a step changes: ``step`` (int32 scalar), ``params``, ``opt_state``."""

  step: jax.Array
  params: Params
  opt_state: optax.OptState


class LossSums(NamedTuple):
  """Sums over the target tokens of a batch (float32 scalars)."""

  loss_sum: jax.Array
  num_tokens: jax.Array
  num_correct: jax.Array


def attention_inputs(batch: TrainingInput, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """``positions int32[B, L]`` and causal ``attention_mask bool[B, L, L]`` of a batch.

  Padded rows: from the padding (only at the end of a row), never attending to a padding key.
  Packed rows: from ``segment_ids`` and ``positions``, a block-diagonal causal mask, so that each
  example sees only itself.
  """
  length = batch.input_tokens.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, :, :]
  if batch.segment_ids is not None:
    segments = batch.segment_ids
    same_segment = segments[:, :, None] == segments[:, None, :]
    return batch.positions.astype(jnp.int32), causal & same_segment & (segments != 0)[:, None, :]
  is_token = batch.input_tokens != pad_id
  positions = jnp.maximum(jnp.cumsum(is_token, axis=-1) - 1, 0).astype(jnp.int32)
  return positions, causal & is_token[:, None, :]


def loss_sums(logits: jax.Array, batch: TrainingInput) -> LossSums:
  """Cross-entropy of every target token of every row: ``logits[B, L, V]`` predicts token t+1.

  The labels are shifted, not the logits: the last position predicts nothing (weight 0), so the
  logits are used whole, and their gradient is not a padded copy of a ``[B, L - 1, V]`` slice
  (on an H200, Gemma 2B at 32 × 512, that pad alone cost 6 ms a step)."""
  return _target_sums(logits.astype(jnp.float32), *_shifted_targets(batch))


def _shifted_targets(batch: TrainingInput) -> tuple[jax.Array, jax.Array]:
  """``(labels int32[B, L], weights float32[B, L])``: position t's label is token t + 1; the
  last position's label is token 0 with weight 0."""
  tokens = batch.input_tokens
  labels = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  weights = jnp.concatenate([batch.target_mask[:, 1:], jnp.zeros_like(batch.target_mask[:, :1])],
                            axis=1).astype(jnp.float32)
  return labels, weights


def _target_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> LossSums:
  """Sums of ``float32[..., V]`` logits against ``labels[...]``, each token weighted.

  A token is correct when its label's logit is the largest (a tie counts as correct): a
  maximum, which XLA shares with the cross-entropy's log-sum-exp, where an ``argmax`` would be
  one more pass over the vocabulary (on an H200, Gemma 2B at 32 × 512: 7 ms a step)."""
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  correct = (label_logits >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  return LossSums(
      loss_sum=jnp.sum(token_loss * weights),
      num_tokens=jnp.sum(weights),
      num_correct=jnp.sum(correct * weights),
  )


def chunked_loss_sums(hidden: jax.Array, embedding: jax.Array, softcap: float | None,
                      batch: TrainingInput, chunk: int) -> LossSums:
  """``loss_sums`` of a gemma model's logits ``softcap(hidden @ embedding.T)``, ``chunk``
  positions of every row at a time.

  ``hidden[B, L, D]`` are the final hidden states and ``embedding[V, D]`` the tied output
  projection. Each chunk's ``[B, chunk, V]`` float32 logits live only inside its step of a scan,
  and under ``jax.checkpoint`` the backward pass recomputes them from the chunk's hidden states
  instead of keeping them: the full ``[B, L, V]`` logits never exist.
  """
  batch_size, length = batch.input_tokens.shape
  steps = -(-length // chunk)
  pad = steps * chunk - length

  def chunks(x: jax.Array) -> jax.Array:
    """``[B, L, ...]`` → ``[steps, B, chunk, ...]``, the tail padded (with zero weight)."""
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape((batch_size, steps, chunk) + x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk_sums(carry: LossSums, inputs: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[
      LossSums, None]:
    h, labels, weights = inputs
    logits = jnp.dot(h, embedding.T)  # in the model's dtype, as its own decode
    if softcap is not None:
      logits = jnp.tanh(logits / softcap) * softcap
    sums = _target_sums(logits.astype(jnp.float32), labels, weights)
    return LossSums(*(total + part for total, part in zip(carry, sums))), None

  zeros = LossSums(*(jnp.zeros((), jnp.float32),) * 3)
  labels, weights = _shifted_targets(batch)
  sums, _ = jax.lax.scan(chunk_sums, zeros, (chunks(hidden), chunks(labels), chunks(weights)))
  return sums


def batch_loss_sums(model: Any, params: Params, batch: TrainingInput, pad_id: int,
                    loss_chunk: int = 0) -> LossSums:
  """``loss_sums`` of ``model`` on a batch: from its full logits, or (``loss_chunk`` > 0, gemma
  models) ``chunked_loss_sums`` of its final hidden states, ``loss_chunk`` positions at a time."""
  if not loss_chunk:
    return loss_sums(model_logits(model, params, batch, pad_id), batch)
  positions, attention_mask = attention_inputs(batch, pad_id)
  # The logits the model also returns are unused, so jit leaves them out of the program.
  output = model.apply({'params': params}, batch.input_tokens, positions=positions,
                       attention_mask=attention_mask, return_hidden_states=True)
  return chunked_loss_sums(output.hidden_states, params['embedder']['input_embedding'],
                           model.config.final_logit_softcap, batch, loss_chunk)


def model_logits(model: Any, params: Params, batch: TrainingInput, pad_id: int) -> jax.Array:
  """``float[B, L, V]`` logits of ``model`` on the batch's tokens."""
  positions, attention_mask = attention_inputs(batch, pad_id)
  output = model.apply(
      {'params': params}, batch.input_tokens, positions=positions, attention_mask=attention_mask)
  return output.logits


def mean_loss(params: Params, batch: TrainingInput, model: Any, pad_id: int,
              loss_chunk: int = 0) -> tuple[jax.Array, LossSums]:
  """The loss to differentiate: summed target-token loss / number of target tokens."""
  loss_sum, sums = _summed_loss(params, batch, model, pad_id, None, loss_chunk)
  return loss_sum / jnp.maximum(sums.num_tokens, 1.0), sums


def model_params(params: Params, frozen: Params | None) -> Params:
  """The tree the model takes: the trained ``params`` alone, or (LoRA) the frozen base with
  the adapters ``params`` added (``lora.combine``)."""
  return lora.combine(frozen, params) if frozen else params


def _cast_floats(tree: Params, dtype: Any) -> Params:
  """Floating arrays of ``tree`` in ``dtype``; quantized weights stay integers."""
  return jax.tree.map(
      lambda x: x if isinstance(x, lora.QuantizedWeight) or not jnp.issubdtype(
          x.dtype, jnp.floating) else x.astype(dtype),
      tree, is_leaf=lambda x: isinstance(x, lora.QuantizedWeight))


def _summed_loss(params: Params, batch: TrainingInput, model: Any, pad_id: int,
                 compute_dtype: Any, loss_chunk: int = 0,
                 frozen: Params | None = None) -> tuple[jax.Array, LossSums]:
  if compute_dtype is not None:
    params = _cast_floats(params, compute_dtype)
    frozen = _cast_floats(frozen, compute_dtype) if frozen else frozen
  sums = batch_loss_sums(model, model_params(params, frozen), batch, pad_id, loss_chunk)
  return sums.loss_sum, sums


def microbatches(batch: TrainingInput, num: int) -> TrainingInput:
  """``[B, L]`` → ``[num, B / num, L]``; microbatch i takes rows i, i + num, … so that each one
  spans every device that holds a part of the batch."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1), batch)


def summed_gradients(params: Params, batch: TrainingInput, *, model: Any, pad_id: int,
                     grad_accum_steps: int = 1, compute_dtype: Any = None,
                     loss_chunk: int = 0, frozen: Params | None = None) -> tuple[Params, LossSums]:
  """Gradients of the summed target-token loss and the sums, over ``grad_accum_steps`` pieces.

  Accumulating sums (not means) makes the accumulated step equal the one big-batch step.
  Gradients are of ``params`` only: a ``frozen`` base gets none.
  """
  grad_fn = jax.grad(_summed_loss, has_aux=True)
  if grad_accum_steps == 1:
    return grad_fn(params, batch, model, pad_id, compute_dtype, loss_chunk, frozen)

  def accumulate(carry, micro):
    grads, sums = grad_fn(params, micro, model, pad_id, compute_dtype, loss_chunk, frozen)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, params), LossSums(*(jnp.zeros((), jnp.float32),) * 3))
  (grads, sums), _ = jax.lax.scan(accumulate, zeros, microbatches(batch, grad_accum_steps))
  return grads, sums


def num_examples(batch: TrainingInput) -> jax.Array:
  """How many examples the batch holds: rows with a target, or segments of packed rows."""
  if batch.segment_ids is None:
    return jnp.sum(jnp.any(batch.target_mask, axis=-1), dtype=jnp.int32)
  starts = (batch.positions == 0) & (batch.segment_ids > 0)
  return jnp.sum(starts, dtype=jnp.int32)


def train_step(
    state: TrainState,
    batch: TrainingInput,
    frozen: Params | None = None,
    *,
    model: Any,
    optimizer: optax.GradientTransformation,
    pad_id: int,
    learning_rate_fn: optax.Schedule | None = None,
    grad_accum_steps: int = 1,
    compute_dtype: Any = None,
    loss_chunk: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch; returns the new state and scalar metrics.

  The loss is the cross-entropy summed over every target token of the batch divided by their
  number; ``compute_dtype`` (e.g. bfloat16) is the dtype the forward pass runs in;
  ``loss_chunk`` > 0 computes it ``chunked_loss_sums``' way. With a ``frozen`` base (LoRA),
  ``state.params`` are the adapters: only they are differentiated and updated.
  """
  grads, sums = summed_gradients(state.params, batch, model=model, pad_id=pad_id,
                                 grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype,
                                 loss_chunk=loss_chunk, frozen=frozen)
  num_tokens = jnp.maximum(sums.num_tokens, 1.0)
  grads = jax.tree.map(lambda g, p: (g / num_tokens).astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train_loss': sums.loss_sum / num_tokens,
      'train_accuracy': sums.num_correct / num_tokens,
      'num_target_tokens': sums.num_tokens,
      'num_examples': num_examples(batch),
      'grad_norm': optax.tree.norm(grads),
  }
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(params: Params, batch: TrainingInput, frozen: Params | None = None, *, model: Any,
              pad_id: int, loss_chunk: int = 0) -> LossSums:
  """Loss sums of one evaluation batch; padding rows add nothing."""
  return batch_loss_sums(model, model_params(params, frozen), batch, pad_id, loss_chunk)

"""Beam search over gemma's sampler: the same prefill, KV cache and stop tokens, K beams a source.

The gemma library decodes greedily or by sampling only. ``BeamSampler`` is its ``gm.text.Sampler``
with the per-token loop replaced by a beam search: the caller repeats every prompt ``beam_size``
times (rows ``b * K … b * K + K - 1`` are source ``b``'s beams), the prefill fills one KV cache row
per beam, and each step keeps the ``K`` best unfinished continuations of each source (their cache
rows gathered from their parents) and the ``K`` best finished ones, ranked by log-probability over
the GNMT length penalty ``((5 + length) / 6) ** length_penalty``. On return every beam row of a
source holds that source's best hypothesis (finished ones first, unfinished only when none ended).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from gemma import gm
# The loop and its state are gemma's (gm.text exports only the Sampler); gemma is pinned < 5.
from gemma.gm.text import _sampler_loop


def length_penalty_divisor(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's length penalty (Wu et al., 2016): hypotheses are ranked by log-prob over this."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


@flax.struct.dataclass
class BeamState:
  """The sampler's state for ``B * K`` beam rows, plus what beam search keeps per source.

  Attributes:
    sampling: gemma's state; ``predicted_tokens`` int[B*K, T] are the unfinished beams.
    alive_scores: float32[B, K] log-probabilities of the unfinished beams (-inf: no beam).
    finished_tokens: int[B, K, T] the best finished hypotheses, end token included.
    finished_scores: float32[B, K] their log-probability over the length penalty (-inf: none).
  """

  sampling: _sampler_loop.SamplingState
  alive_scores: jax.Array
  finished_tokens: jax.Array
  finished_scores: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamSearchLoop(_sampler_loop.SamplerLoop):
  """gemma's ``SamplerLoop`` with beam search in place of per-token sampling."""

  beam_size: int
  length_penalty: float

  def sample(self, *, params: Any, init_state: _sampler_loop.SamplingState,
             max_new_tokens: jax.Array, stream: bool = False) -> _sampler_loop.SamplingState:
    if stream:
      raise ValueError('beam search does not stream: its best hypothesis is known only at the end')
    return self._beam_loop(params=params, state=init_state, max_new_tokens=max_new_tokens)

  @functools.partial(jax.jit, static_argnames=('self',))
  def _beam_loop(self, *, params: Any, state: _sampler_loop.SamplingState,
                 max_new_tokens: jax.Array) -> _sampler_loop.SamplingState:
    k = self.beam_size
    rows, out_length = state.predicted_tokens.shape
    sources = rows // k
    # Only the first beam of each source starts alive: K copies of one prompt would otherwise
    # fill the beam with K copies of one hypothesis.
    alive = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)
    beams = BeamState(
        sampling=state,
        alive_scores=jnp.broadcast_to(alive, (sources, k)).astype(jnp.float32),
        finished_tokens=jnp.zeros((sources, k, out_length), state.predicted_tokens.dtype),
        finished_scores=jnp.full((sources, k), -jnp.inf, jnp.float32),
    )

    def keep_going(beams: BeamState) -> jax.Array:
      step = beams.sampling.step
      # Log-probabilities only fall as a beam grows, so the best an unfinished beam can still
      # reach is its score over the largest length penalty.
      best_alive = beams.alive_scores[:, 0] / length_penalty_divisor(max_new_tokens,
                                                                    self.length_penalty)
      settled = beams.finished_scores[:, -1] >= best_alive
      return ((step < max_new_tokens) & ~jnp.all(settled)
              & ~beams.sampling.cache_info.is_full)

    beams = jax.lax.while_loop(keep_going, functools.partial(self._beam_step, params=params),
                               beams)
    return self._best_hypotheses(beams)

  def _beam_step(self, beams: BeamState, *, params: Any) -> BeamState:
    k = self.beam_size
    state = beams.sampling
    rows, out_length = state.predicted_tokens.shape
    sources = rows // k
    out = self.model.apply(
        {'params': params},
        tokens=state.last_token[..., None],
        cache=state.cache,
        positions=state.last_token_pos[..., None],
        attention_mask=state.attention_mask_for_step[:, None, :],
    )
    log_probs = jax.nn.log_softmax(out.logits[:, 0, :].astype(jnp.float32), axis=-1)
    if self.forbidden_tokens:
      log_probs = log_probs.at[:, self.forbidden_tokens].set(-jnp.inf)
    vocab = log_probs.shape[-1]
    candidates = (beams.alive_scores[..., None] + log_probs.reshape(sources, k, vocab))
    # 2K candidates: even if K of them end here, K unfinished ones remain to carry on.
    scores, flat = jax.lax.top_k(candidates.reshape(sources, k * vocab), 2 * k)
    parents, tokens = flat // vocab, flat % vocab
    parent_tokens = jnp.take_along_axis(
        state.predicted_tokens.reshape(sources, k, out_length), parents[..., None], axis=1)
    sequences = parent_tokens.at[:, :, state.step].set(tokens)  # [B, 2K, T]
    ended = jnp.isin(tokens, jnp.asarray(self.end_tokens))

    # Finished: the ones ending now join the kept ones; the K best stay.
    ended_scores = jnp.where(ended, scores, -jnp.inf) / length_penalty_divisor(
        state.step + 1, self.length_penalty)
    finished_scores, best = jax.lax.top_k(
        jnp.concatenate([beams.finished_scores, ended_scores], axis=1), k)
    finished_tokens = jnp.take_along_axis(
        jnp.concatenate([beams.finished_tokens, sequences], axis=1), best[..., None], axis=1)

    # Unfinished: the K best that did not end; their cache rows are their parents'.
    alive_scores, best = jax.lax.top_k(jnp.where(ended, -jnp.inf, scores), k)
    new_tokens = jnp.take_along_axis(tokens, best, axis=1).reshape(rows)
    parent_rows = (jnp.take_along_axis(parents, best, axis=1)
                   + jnp.arange(sources)[:, None] * k).reshape(rows)
    take = lambda x: jnp.take(x, parent_rows, axis=0)
    sampling = dataclasses.replace(
        state,
        step=state.step + 1,
        last_token=new_tokens,
        last_token_pos=take(state.last_token_pos) + 1,
        predicted_tokens=jnp.take_along_axis(sequences, best[..., None], axis=1).reshape(
            rows, out_length),
        cache=jax.tree.map(take, out.cache),
        full_attention_mask=take(state.full_attention_mask),
    )
    return BeamState(sampling=sampling, alive_scores=alive_scores,
                     finished_tokens=finished_tokens, finished_scores=finished_scores)

  def _best_hypotheses(self, beams: BeamState) -> _sampler_loop.SamplingState:
    """Every beam row of a source ← its best finished hypothesis (or best unfinished one)."""
    k = self.beam_size
    state = beams.sampling
    rows, out_length = state.predicted_tokens.shape
    alive_best = state.predicted_tokens.reshape(rows // k, k, out_length)[:, 0]
    has_finished = beams.finished_scores[:, 0] > -jnp.inf
    best = jnp.where(has_finished[:, None], beams.finished_tokens[:, 0], alive_best)
    # Tokens after an end token are padding (0), by gemma's own loop's helper.
    best = _sampler_loop._mask_tokens_after_end_tokens(best, end_tokens=self.end_tokens)  # pylint: disable=protected-access
    return dataclasses.replace(state, predicted_tokens=jnp.repeat(best, k, axis=0),
                               done=jnp.ones_like(state.done))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamSampler(gm.text.Sampler):
  """``gm.text.Sampler`` that decodes by beam search; pass each prompt ``beam_size`` times in a
  row, and read every ``beam_size``-th output."""

  beam_size: int = 4
  length_penalty: float = 0.6

  def _initialize_sampler_loop(self, sampling: Any) -> BeamSearchLoop:
    loop = super()._initialize_sampler_loop(sampling)
    return BeamSearchLoop(**{f.name: getattr(loop, f.name) for f in dataclasses.fields(loop)},
                          beam_size=self.beam_size, length_penalty=self.length_penalty)

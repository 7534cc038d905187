"""Translating with a model: batched decoding that stops at end-of-sequence or end-of-turn.

Decoding is gemma's own ``gm.text.Sampler`` (prefill, KV cache, per-row stop at EOS and
``<end_of_turn>``), or its beam-search variant (``beam_search.BeamSampler``), fed with the run's
tokenizer and prompt format. Sources are decoded in batches of similar length (sorted, then put
back in order), with prompts padded to a few fixed lengths so that a file of any length compiles
only a handful of programs, and each batch's KV cache sized to its padded prompts and the new
tokens (a decoding step reads the whole cache: one sized for the longest possible prompt made
short prompts' steps a third slower on CPU). Given a mesh, each batch is laid out over its batch axes like a
training batch: in a multi-process job every process decodes its rows, and every process gets all
outputs back in order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from gemma_mt import beam_search
from gemma_mt.data import pipeline
from gemma_mt.data.records import PromptFormat
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.train import sharding

SAMPLING_METHODS = ('greedy', 'random', 'top_k', 'top_p')
# Prompt lengths (tokens) that batches are padded to; longer sources are truncated to fit the last.
PROMPT_BUCKETS = (32, 64, 128, 256)
END_OF_TURN = '<end_of_turn>'


def gemma_text_tokenizer(tokenizer: GemmaTokenizer) -> Any:
  """A ``gm.text.Tokenizer`` over the same sentencepiece file, with its special ids.

  Dialog turn markers missing from the vocabulary fall back to EOS, so they stop decoding too.
  """
  from gemma import gm  # pylint: disable=import-outside-toplevel

  eos = tokenizer.eos_id
  special = gm.text.SpecialTokens(
      'SpecialTokens',
      {
          'PAD': tokenizer.pad_id,
          'EOS': eos,
          'BOS': tokenizer.bos_id,
          'UNK': tokenizer.piece_id('<unk>') or 3,
          'MASK': tokenizer.piece_id('<mask>') or eos,
          'START_OF_TURN': tokenizer.piece_id('<start_of_turn>') or eos,
          'END_OF_TURN': tokenizer.piece_id('<end_of_turn>') or eos,
          'BEGIN_OF_TOOL_RESPONSE': eos,
      },
  )

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class _Tokenizer(gm.text.Tokenizer):
    special_tokens = special

  return _Tokenizer(path=tokenizer.path)


@dataclasses.dataclass(frozen=True)
class Translations:
  """Outputs in the order of the sources, and how many sources were cut to fit the context."""

  outputs: list[str]
  truncated: int


@dataclasses.dataclass(frozen=True)
class Translator:
  """Translations of source sentences by ``model`` with ``params``.

  Attributes:
    model, params: the flax module and its parameters.
    tokenizer, prompt_format: how a source becomes prompt tokens.
    max_new_tokens: the most tokens generated per source.
    batch_size: sources decoded together.
    sampling: ``greedy`` (the default), or ``random`` / ``top_k`` / ``top_p`` at
      ``temperature``, seeded by ``seed``.
    max_prompt_tokens: prompts longer than this have their source cut (and are counted).
    beam_size: above 1, beam search with this many beams (greedy: 1), ranking hypotheses by
      log-probability over GNMT's length penalty with exponent ``length_penalty``.
    stop_pieces: pieces that also end an output, such as ``'\n'`` for a pretrained model's
      one-line answers (each must be a single piece of the vocabulary); cut from the output.
    mesh: decode on this mesh, each batch sharded over its batch axes (``batch_size`` rounded up
      to a multiple of their size); in a multi-process job every process must call ``translate``
      with the same sources. None: wherever ``params`` are.
  """

  model: Any
  params: Any
  tokenizer: GemmaTokenizer
  prompt_format: PromptFormat
  max_new_tokens: int = 64
  batch_size: int = 32
  sampling: str = 'greedy'
  temperature: float = 1.0
  top_k: int = 40
  top_p: float = 0.9
  seed: int = 0
  max_prompt_tokens: int = PROMPT_BUCKETS[-1]
  beam_size: int = 1
  length_penalty: float = 0.6
  stop_pieces: tuple[str, ...] = ()
  mesh: Mesh | None = None

  def __post_init__(self):
    if self.sampling not in SAMPLING_METHODS:
      raise ValueError(f'sampling={self.sampling!r}: use one of {", ".join(SAMPLING_METHODS)}')
    if self.beam_size < 1:
      raise ValueError(f'beam_size={self.beam_size}: use 1 (greedy) or more beams')
    if self.beam_size > 1 and self.sampling != 'greedy':
      raise ValueError(f'beam_size={self.beam_size} with sampling={self.sampling!r}: beam '
                       'search is deterministic; sample with beam_size=1')

  @functools.cached_property
  def _batch_rows(self) -> int:
    """Sources per batch: ``batch_size``, a multiple of the mesh's batch-axes size."""
    if self.mesh is None:
      return self.batch_size
    shards = sharding.batch_shards(self.mesh)
    return -(-self.batch_size // shards) * shards

  @functools.cached_property
  def _sampler(self) -> Any:
    """The sampler of the longest prompts: its cache holds ``max_prompt_tokens`` and the new
    tokens (``_sampler_for`` sizes it down to a batch's prompts)."""
    from gemma import gm  # pylint: disable=import-outside-toplevel

    buckets = tuple(b for b in PROMPT_BUCKETS if b < self.max_prompt_tokens)
    beams = ({'beam_size': self.beam_size, 'length_penalty': self.length_penalty}
             if self.beam_size > 1 else {})
    return (beam_search.BeamSampler if beams else gm.text.Sampler)(
        **beams,
        model=self.model,
        params=self.params,
        tokenizer=gemma_text_tokenizer(self.tokenizer),
        sampling=self._sampling_method(),
        cache_length=self.max_prompt_tokens + self.max_new_tokens,
        max_out_length=self.max_new_tokens,
        pad_length=buckets + (self.max_prompt_tokens,),
        stop_tokens=self.stop_pieces or None,
    )

  @functools.cached_property
  def _samplers_by_cache_length(self) -> dict[int, Any]:
    return {}

  def _sampler_for(self, batch_prompts: list[str]) -> Any:
    """The sampler whose KV cache holds these prompts, padded to their bucket, and the new
    tokens: every decoding step attends over (and carries) the whole cache, so a cache sized
    for the longest possible prompt would cost short prompts most of a step's time."""
    sampler = self._sampler
    # As the sampler pads them: the smallest bucket that holds the longest prompt with its BOS.
    longest = max(len(sampler.tokenizer.encode(p, add_bos=True)) for p in batch_prompts)
    padded = next((b for b in sampler.pad_length if longest <= b), longest)
    length = padded + self.max_new_tokens
    if length not in self._samplers_by_cache_length:
      self._samplers_by_cache_length[length] = dataclasses.replace(sampler, cache_length=length)
    return self._samplers_by_cache_length[length]

  def _sampling_method(self) -> Any:
    from gemma import gm  # pylint: disable=import-outside-toplevel

    if self.sampling == 'greedy':
      return gm.text.Greedy()
    if self.sampling == 'random':
      return gm.text.RandomSampling(temperature=self.temperature)
    if self.sampling == 'top_k':
      return gm.text.TopkSampling(k=self.top_k, temperature=self.temperature)
    return gm.text.TopPSampling(p=self.top_p, temperature=self.temperature)

  def __call__(self, sources: Sequence[str]) -> list[str]:
    """One translation per source, in order."""
    return self.translate(sources).outputs

  def translate(self, sources: Sequence[str],
                on_batch: Callable[[int], None] = lambda n: None) -> Translations:
    """Translations of ``sources`` in order; an empty source gives an empty output.

    ``on_batch(n)`` is called after each batch with its number of sources (progress bars).
    """
    outputs = [''] * len(sources)
    prompts, truncated = {}, 0
    for index, source in enumerate(sources):
      if source.strip():
        prompts[index], cut = self._prompt(source.strip())
        truncated += cut
    # Similar lengths together: less padding, and fewer padded lengths to compile.
    order = sorted(prompts, key=lambda i: len(prompts[i]))
    rows = self._batch_rows
    for start in range(0, len(order), rows):
      batch = order[start: start + rows]
      batch_prompts = [prompts[i] for i in batch]
      if len(order) > rows or self.mesh is not None:
        # A short last batch filled up: one batch shape, one compiled program (and on a mesh,
        # rows that divide over its batch axes).
        batch_prompts += batch_prompts[-1:] * (rows - len(batch))
      texts = self._decode_batch(batch_prompts, rng=self.seed + start)
      for index, text in zip(batch, texts):
        # The sampler stops after an end-of-turn or stop piece but keeps its text.
        for end in (END_OF_TURN, *self.stop_pieces):
          text = text.split(end)[0]
        outputs[index] = text.strip()
      on_batch(len(batch))
    on_batch(len(sources) - len(prompts))
    return Translations(outputs, truncated)

  def _decode_batch(self, batch_prompts: list[str], rng: int) -> list[str]:
    """One output per prompt; on a mesh, this process decodes its rows and receives all."""
    # Sized from the whole batch, before it is split: every process compiles the same program.
    sampler = self._sampler_for(batch_prompts)
    kwargs = {}
    if self.mesh is not None:
      # The rows of this process, as a training batch's (``ProcessSlice``), sharded like one.
      process = pipeline.ProcessSlice(jax.process_index(), jax.process_count())
      batch_prompts = batch_prompts[process.rows(len(batch_prompts))]
      kwargs['sharding'] = sharding.batch_sharding(self.mesh)
    repeated = [p for p in batch_prompts for _ in range(self.beam_size)]
    texts = sampler.sample(repeated, max_new_tokens=self.max_new_tokens, rng=rng, **kwargs)
    return texts[:: self.beam_size]

  def _prompt(self, source: str) -> tuple[str, bool]:
    """The prompt of ``source`` and whether the source had to be cut to fit."""
    prompt = self.prompt_format.render(source)
    # 1 for the BOS token the sampler adds, 2 for pieces that merge differently where the source
    # meets the template (tokenized apart here, together by the sampler).
    room = self.max_prompt_tokens - 3 - len(self.tokenizer.encode(self.prompt_format.render('')))
    source_ids = self.tokenizer.encode(source)
    if len(source_ids) <= room:
      return prompt, False
    cut = self.tokenizer.decode(np.asarray(source_ids[: max(room, 0)]))
    return self.prompt_format.render(cut), True

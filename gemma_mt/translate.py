"""Translating with a trained model: greedy decoding that stops at end-of-sequence.

Decoding is gemma's own ``gm.text.Sampler`` (prefill, KV cache, stop tokens), fed with the run's
tokenizer and prompt format.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from gemma_mt.data.records import PromptFormat
from gemma_mt.data.tokenizer import GemmaTokenizer


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
class Translator:
  """Greedy translations of source sentences by ``model`` with ``params``."""

  model: Any
  params: Any
  tokenizer: GemmaTokenizer
  prompt_format: PromptFormat
  max_new_tokens: int = 64

  @functools.cached_property
  def _sampler(self) -> Any:
    from gemma import gm  # pylint: disable=import-outside-toplevel

    return gm.text.Sampler(
        model=self.model,
        params=self.params,
        tokenizer=gemma_text_tokenizer(self.tokenizer),
        cache_length=512,
        max_out_length=self.max_new_tokens,
        pad_length=None,
    )

  def __call__(self, sources: Sequence[str]) -> list[str]:
    """One translation per source, cut at EOS (or at ``max_new_tokens``)."""
    prompts = [self.prompt_format.render(s) for s in sources]
    outputs = self._sampler.sample(prompts, max_new_tokens=self.max_new_tokens, rng=0)
    return [o.strip() for o in outputs]

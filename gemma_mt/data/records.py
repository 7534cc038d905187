"""TrainingInput records and the prompt format that builds them (the one place for both).

A record is one row of the model's input: ``BOS prompt target EOS pad…`` where the prompt is
``prefix + source + suffix``. Only the target and its EOS are in ``target_mask``; there is no BOS
between prompt and target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

DEFAULT_PREFIX = 'Translate this into French:\n'
DEFAULT_SUFFIX = '\n'


class TrainingInput(NamedTuple):
  """One row, or a batch of rows, of training input.

  Attributes:
    input_tokens: ``int32[..., L]`` token ids, BOS first, padded with the pad id.
    target_mask: ``bool[..., L]`` True where the token is part of the target (with its end token);
      the loss predicts exactly these tokens.
    segment_ids: packed rows only: ``int32[..., L]`` 1, 2, … for the examples in the row, 0 for
      padding; attention stays inside a segment.
    positions: packed rows only: ``int32[..., L]`` position of each token in its own example.
  """

  input_tokens: np.ndarray
  target_mask: np.ndarray
  segment_ids: np.ndarray | None = None
  positions: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a source sentence becomes a prompt: ``prefix + source + suffix``; and the token that
  ends a target (``end_of_target``: a piece, or empty for EOS)."""

  prefix: str = DEFAULT_PREFIX
  suffix: str = DEFAULT_SUFFIX
  end_of_target: str = ''

  @classmethod
  def from_template(cls, template: str, target_language: str = 'French') -> PromptFormat:
    """``plain``: the tutorial's prompt; ``gemma_chat``: Gemma's dialog turns around it."""
    if template == 'plain':
      return cls(prefix=f'Translate this into {target_language}:\n', suffix='\n')
    if template == 'gemma_chat':
      # Instruction-tuned Gemma ends its turn with <end_of_turn>, not EOS: targets do too.
      return cls(
          prefix=f'<start_of_turn>user\nTranslate this into {target_language}:\n',
          suffix='<end_of_turn>\n<start_of_turn>model\n',
          end_of_target='<end_of_turn>',
      )
    raise ValueError(f'unknown prompt template {template!r}: use plain or gemma_chat')

  def render(self, source: str) -> str:
    return self.prefix + source + self.suffix

  def end_of_target_id(self, tokenizer: Any) -> int:
    """The id that ends every target: ``end_of_target``'s piece, or EOS (also where the
    vocabulary lacks the piece)."""
    if self.end_of_target:
      piece = tokenizer.piece_id(self.end_of_target)
      if piece is not None:
        return piece
    return tokenizer.eos_id


PROMPT_TEMPLATES = ('plain', 'gemma_chat')
# What happens to an example longer than max_seq_len: dropped, or its target cut (with no end
# token: the model is not taught to stop after half a sentence).
TOO_LONG_POLICIES = ('drop', 'truncate')


def make_training_input(
    prompt_ids: np.ndarray, target_ids: np.ndarray, max_seq_len: int, pad_id: int
) -> TrainingInput:
  """Concatenates ``prompt_ids[p]`` (BOS first) and ``target_ids[t]`` (end token last), pads to L.

  Raises ValueError if ``p + t > max_seq_len``; callers filter or truncate first.
  """
  length = len(prompt_ids) + len(target_ids)
  if length > max_seq_len:
    raise ValueError(f'record of {length} tokens does not fit max_seq_len={max_seq_len}')
  input_tokens = np.full((max_seq_len,), pad_id, dtype=np.int32)
  input_tokens[: len(prompt_ids)] = prompt_ids
  input_tokens[len(prompt_ids) : length] = target_ids
  target_mask = np.zeros((max_seq_len,), dtype=bool)
  target_mask[len(prompt_ids) : length] = True
  return TrainingInput(input_tokens=input_tokens, target_mask=target_mask)


def empty_training_input(max_seq_len: int, pad_id: int) -> TrainingInput:
  """A padding row: no tokens, nothing in the target (weighs nothing in any loss)."""
  return TrainingInput(
      input_tokens=np.full((max_seq_len,), pad_id, dtype=np.int32),
      target_mask=np.zeros((max_seq_len,), dtype=bool),
  )

"""GemmaTokenizer: sentencepiece with Gemma's special ids, for training records and decoding.

Works with the real Gemma ``tokenizer.model`` and with the bundled demo model, which keeps Gemma's
ids (pad 0, eos 1, bos 2, unk 3) so that both take the same code paths.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from gemma_mt import errors


class TokenizerError(errors.UserError):
  """The tokenizer file is missing or is not a sentencepiece model."""


@dataclasses.dataclass(frozen=True)
class GemmaTokenizer:
  """A sentencepiece model with Gemma's conventions.

  Attributes:
    path: the sentencepiece ``tokenizer.model`` file.
  """

  path: str

  @functools.cached_property
  def _sp(self) -> spm.SentencePieceProcessor:
    if not os.path.isfile(self.path):
      raise TokenizerError(f'tokenizer file {self.path} does not exist')
    processor = spm.SentencePieceProcessor()
    try:
      processor.Load(self.path)
    except (OSError, RuntimeError) as e:
      raise TokenizerError(f'tokenizer file {self.path} is not a sentencepiece model: {e}') from e
    return processor

  def __getstate__(self) -> dict[str, Any]:
    # Grain worker processes pickle the pipeline; they reload the model from `path`.
    return {'path': self.path}

  def __setstate__(self, state: dict[str, Any]) -> None:
    object.__setattr__(self, 'path', state['path'])

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def piece_id(self, piece: str) -> int | None:
    """The id of one vocabulary piece (e.g. ``'<start_of_turn>'``), None if it has none."""
    index = self._sp.PieceToId(piece)
    return None if index == self._sp.unk_id() and piece != self._sp.IdToPiece(index) else index

  def encode(
      self,
      text: str,
      prefix: str = '',
      suffix: str = '',
      *,
      add_bos: bool = False,
      add_eos: bool = False,
  ) -> np.ndarray:
    """Token ids of ``prefix + text + suffix`` as ``int32[n]``, with BOS first / EOS last."""
    ids = self._sp.EncodeAsIds(prefix + text + suffix)
    if add_bos:
      ids.insert(0, self.bos_id)
    if add_eos:
      ids.append(self.eos_id)
    return np.asarray(ids, dtype=np.int32)

  def encode_batch(
      self,
      texts: Sequence[str],
      prefix: str = '',
      suffix: str = '',
      *,
      add_bos: bool = False,
      add_eos: bool = False,
  ) -> list[np.ndarray]:
    """``encode`` over many texts, in one sentencepiece call."""
    batch = self._sp.EncodeAsIds([prefix + t + suffix for t in texts])
    head = [self.bos_id] if add_bos else []
    tail = [self.eos_id] if add_eos else []
    return [np.asarray(head + ids + tail, dtype=np.int32) for ids in batch]

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of ``ids[n]`` up to the first EOS, without BOS or padding."""
    kept = []
    for token in np.asarray(ids).reshape(-1).tolist():
      if token == self.eos_id:
        break
      if token not in (self.pad_id, self.bos_id):
        kept.append(token)
    return self._sp.DecodeIds(kept)

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """``decode`` of each row of ``ids[B, n]``."""
    return [self.decode(row) for row in np.asarray(ids)]

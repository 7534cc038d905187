"""Translation quality: corpus BLEU and chrF++ by sacrebleu, with their signatures."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sacrebleu


@dataclasses.dataclass(frozen=True)
class QualityScores:
  """Corpus scores of hypotheses against one reference each.

  Attributes:
    bleu: corpus BLEU (0–100, sacrebleu's default 13a tokenization).
    chrf: corpus chrF++ (character n-grams plus word bigrams, 0–100).
    num_examples: hypothesis/reference pairs scored.
    bleu_signature, chrf_signature: sacrebleu's signatures, to report with the numbers.
  """

  bleu: float
  chrf: float
  num_examples: int
  bleu_signature: str
  chrf_signature: str

  def summary(self) -> str:
    return (f'BLEU {self.bleu:.2f}, chrF++ {self.chrf:.2f} on {self.num_examples} pairs '
            f'({self.bleu_signature}; {self.chrf_signature})')


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> QualityScores:
  """BLEU and chrF++ of ``hypotheses[i]`` against ``references[i]``."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF(word_order=2)
  hypotheses, references = list(hypotheses), [list(references)]
  return QualityScores(
      bleu=bleu.corpus_score(hypotheses, references).score,
      chrf=chrf.corpus_score(hypotheses, references).score,
      num_examples=len(hypotheses),
      bleu_signature=str(bleu.get_signature()),
      chrf_signature=str(chrf.get_signature()),
  )

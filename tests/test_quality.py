"""Corpus BLEU and chrF++: sacrebleu's numbers and signatures."""

import pytest
import sacrebleu

from gemma_mt import quality

REFERENCES = ['Le chat dort sur le tapis.', 'Il trouvera onze chiens fatigués.',
              "Je ne trouverai pas les fleurs."]


def test_references_against_themselves_score_100():
  scores = quality.corpus_scores(REFERENCES, REFERENCES)
  assert scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)
  assert scores.num_examples == 3


def test_scores_and_signatures_are_sacrebleus():
  hypotheses = ['Le chat dort sur un tapis.', 'Il trouve onze chiens.', 'Je ne trouve pas.']
  scores = quality.corpus_scores(hypotheses, REFERENCES)
  assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score)
  assert scores.chrf == pytest.approx(
      sacrebleu.corpus_chrf(hypotheses, [REFERENCES], word_order=2).score)
  assert 0 < scores.bleu < 100 and 0 < scores.chrf < 100
  bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF(word_order=2)
  bleu.corpus_score(hypotheses, [REFERENCES])
  chrf.corpus_score(hypotheses, [REFERENCES])
  assert scores.bleu_signature == str(bleu.get_signature())
  assert scores.chrf_signature == str(chrf.get_signature())
  assert 'nw:2' in scores.chrf_signature  # chrF++: word bigrams
  with pytest.raises(ValueError, match='2 hypotheses but 3 references'):
    quality.corpus_scores(hypotheses[:2], REFERENCES)

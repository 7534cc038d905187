import json
import random
import re

from gemma_mt.data import demo_corpus


def _read(path):
  return [tuple(json.loads(line).values()) for line in path.read_text('utf-8').splitlines()]


def test_shipped_assets_are_what_the_generator_writes(tmp_path):
  demo_corpus.write_assets(tmp_path)
  for name in (demo_corpus.TRAIN_FILE, demo_corpus.VALID_FILE, demo_corpus.TOKENIZER_FILE):
    assert (tmp_path / name).read_bytes() == (demo_corpus.ASSETS_DIR / name).read_bytes(), name


def test_splits_are_distinct_and_sized():
  train = _read(demo_corpus.ASSETS_DIR / demo_corpus.TRAIN_FILE)
  valid = _read(demo_corpus.ASSETS_DIR / demo_corpus.VALID_FILE)
  assert len(train) == demo_corpus.DEFAULT_NUM_TRAIN
  assert len(valid) == demo_corpus.DEFAULT_NUM_VALID
  assert not {en for en, _ in train} & {en for en, _ in valid}
  assert len({en for en, _ in train}) == len(train)


def test_french_grammar_rules_hold_over_many_sentences():
  rng = random.Random(0)
  pairs = [demo_corpus.generate_pair(rng) for _ in range(5000)]
  french_errors = [
      r"\b(le|la|je|ne|de) [aeiouéh]",  # elision missed: l'arbre, j'ai, n'a, d'orange
      r'\bde (le|les) ',  # contraction missed: du, des
  ]
  english_errors = [r'\ban [^aeiou]', r'\b[Aa] [aeiou]']
  for en, fr in pairs:
    assert en[0].isupper() and en.endswith('.') and fr[0].isupper() and fr.endswith('.')
    for pattern in french_errors:
      assert not re.search(pattern, fr, flags=re.IGNORECASE), (pattern, en, fr)
    for pattern in english_errors:
      assert not re.search(pattern, en), (pattern, en, fr)
    if re.search(r'\bnot \w+ an? ', en):  # negation turns un/une into de: pas (mangé) de pomme
      assert re.search(r"\bpas (\w+ )?d(e |')", fr), (en, fr)


def test_known_constructions():
  rng = random.Random(3)
  seen = {demo_corpus.generate_pair(rng)[1] for _ in range(20000)}
  text = ' '.join(seen)
  for fragment in ("J'ai", "l'arbre", 'près du', 'près des', 'ne mange pas', 'pas de ',
                   'chevaux', 'petites', 'une pomme', 'deux ', 'trouveront', 'a vu'):
    assert fragment in text, fragment

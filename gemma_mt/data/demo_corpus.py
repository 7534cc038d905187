"""The bundled English→French demo corpus: a deterministic generator over a small grammar.

The corpus is a real, if small, translation task: French articles agree with the noun's gender
and number and elide before vowels (``l'arbre``), adjectives agree and mostly follow the noun,
prepositions contract with articles (``près du jardin``), verbs are conjugated in three tenses,
negation wraps the verb (``ne … pas``) and turns indefinite objects into ``de``, and numbers are
spelled out with gender (``une pomme``, ``deux pommes``).

``python -m gemma_mt.data.demo_corpus`` rewrites the shipped files in ``gemma_mt/data/assets/``
(the corpus and the sentencepiece model trained on it); the same seed writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import random

from absl import app
from absl import flags

from gemma_mt import errors
from gemma_mt.data import asset_paths
from gemma_mt.data import records

DEFAULT_SEED = 20261128
DEFAULT_NUM_TRAIN = 24_000
DEFAULT_NUM_VALID = 400
DEFAULT_VOCAB_SIZE = 1024
TRAIN_FILE = asset_paths.DEMO_TRAIN_FILE
VALID_FILE = asset_paths.DEMO_VALID_FILE
TOKENIZER_FILE = asset_paths.DEMO_TOKENIZER_FILE
ASSETS_DIR = asset_paths.ASSETS_DIR

_VOWELS = tuple('aeiouhâéèêîôû')


@dataclasses.dataclass(frozen=True)
class Noun:
  en: str
  en_plural: str
  fr: str
  fr_plural: str
  feminine: bool


@dataclasses.dataclass(frozen=True)
class Adjective:
  en: str
  fr: tuple[str, str, str, str]  # masculine, feminine, masculine plural, feminine plural
  before_noun: bool = False


@dataclasses.dataclass(frozen=True)
class Verb:
  en: tuple[str, str, str]  # base, third person singular, past
  fr_present: tuple[str, str, str, str, str]  # je, tu, il/elle, nous, ils/elles
  fr_participle: str
  fr_future_stem: str


NOUNS = (
    Noun('cat', 'cats', 'chat', 'chats', False),
    Noun('dog', 'dogs', 'chien', 'chiens', False),
    Noun('house', 'houses', 'maison', 'maisons', True),
    Noun('car', 'cars', 'voiture', 'voitures', True),
    Noun('apple', 'apples', 'pomme', 'pommes', True),
    Noun('tree', 'trees', 'arbre', 'arbres', False),
    Noun('book', 'books', 'livre', 'livres', False),
    Noun('table', 'tables', 'table', 'tables', True),
    Noun('bird', 'birds', 'oiseau', 'oiseaux', False),
    Noun('woman', 'women', 'femme', 'femmes', True),
    Noun('man', 'men', 'homme', 'hommes', False),
    Noun('child', 'children', 'enfant', 'enfants', False),
    Noun('friend', 'friends', 'ami', 'amis', False),
    Noun('flower', 'flowers', 'fleur', 'fleurs', True),
    Noun('letter', 'letters', 'lettre', 'lettres', True),
    Noun('horse', 'horses', 'cheval', 'chevaux', False),
    Noun('city', 'cities', 'ville', 'villes', True),
    Noun('teacher', 'teachers', 'professeur', 'professeurs', False),
    Noun('chair', 'chairs', 'chaise', 'chaises', True),
    Noun('cake', 'cakes', 'gâteau', 'gâteaux', False),
    Noun('door', 'doors', 'porte', 'portes', True),
    Noun('boat', 'boats', 'bateau', 'bateaux', False),
    Noun('orange', 'oranges', 'orange', 'oranges', True),
    Noun('student', 'students', 'étudiant', 'étudiants', False),
)

ADJECTIVES = (
    Adjective('red', ('rouge', 'rouge', 'rouges', 'rouges')),
    Adjective('black', ('noir', 'noire', 'noirs', 'noires')),
    Adjective('white', ('blanc', 'blanche', 'blancs', 'blanches')),
    Adjective('green', ('vert', 'verte', 'verts', 'vertes')),
    Adjective('blue', ('bleu', 'bleue', 'bleus', 'bleues')),
    Adjective('happy', ('heureux', 'heureuse', 'heureux', 'heureuses')),
    Adjective('tired', ('fatigué', 'fatiguée', 'fatigués', 'fatiguées')),
    Adjective('small', ('petit', 'petite', 'petits', 'petites'), before_noun=True),
    Adjective('big', ('grand', 'grande', 'grands', 'grandes'), before_noun=True),
    Adjective('good', ('bon', 'bonne', 'bons', 'bonnes'), before_noun=True),
    Adjective('pretty', ('joli', 'jolie', 'jolis', 'jolies'), before_noun=True),
)

VERBS = (
    Verb(('see', 'sees', 'saw'), ('vois', 'vois', 'voit', 'voyons', 'voient'), 'vu', 'verr'),
    Verb(('eat', 'eats', 'ate'), ('mange', 'manges', 'mange', 'mangeons', 'mangent'), 'mangé',
         'manger'),
    Verb(('want', 'wants', 'wanted'), ('veux', 'veux', 'veut', 'voulons', 'veulent'), 'voulu',
         'voudr'),
    Verb(('like', 'likes', 'liked'), ('aime', 'aimes', 'aime', 'aimons', 'aiment'), 'aimé',
         'aimer'),
    Verb(('have', 'has', 'had'), ('ai', 'as', 'a', 'avons', 'ont'), 'eu', 'aur'),
    Verb(('find', 'finds', 'found'), ('trouve', 'trouves', 'trouve', 'trouvons', 'trouvent'),
         'trouvé', 'trouver'),
    Verb(('buy', 'buys', 'bought'), ('achète', 'achètes', 'achète', 'achetons', 'achètent'),
         'acheté', 'achèter'),
    Verb(('watch', 'watches', 'watched'),
         ('regarde', 'regardes', 'regarde', 'regardons', 'regardent'), 'regardé', 'regarder'),
    Verb(('take', 'takes', 'took'), ('prends', 'prends', 'prend', 'prenons', 'prennent'), 'pris',
         'prendr'),
    Verb(('draw', 'draws', 'drew'), ('dessine', 'dessines', 'dessine', 'dessinons', 'dessinent'),
         'dessiné', 'dessiner'),
)

# (English, French subject pronoun, person index into the conjugation tables, is plural)
PRONOUNS = (
    ('I', 'je', 0), ('you', 'tu', 1), ('he', 'il', 2), ('she', 'elle', 2),
    ('we', 'nous', 3), ('they', 'ils', 4),
)
_FUTURE_ENDINGS = ('ai', 'as', 'a', 'ons', 'ont')
_AVOIR = ('ai', 'as', 'a', 'avons', 'ont')
NUMBERS = (
    ('one', 'un'), ('two', 'deux'), ('three', 'trois'), ('four', 'quatre'), ('five', 'cinq'),
    ('six', 'six'), ('seven', 'sept'), ('eight', 'huit'), ('nine', 'neuf'), ('ten', 'dix'),
    ('eleven', 'onze'), ('twelve', 'douze'), ('twenty', 'vingt'),
)
# (English, French preposition before a noun phrase)
PLACES = (('in', 'dans'), ('near', 'près de'), ('behind', 'derrière'), ('under', 'sous'))
TIMES = {
    'present': (('today', "aujourd'hui"), ('every day', 'tous les jours')),
    'past': (('yesterday', 'hier'),),
    'future': (('tomorrow', 'demain'),),
}
DETERMINERS = ('the', 'a', 'my', 'this', 'number')


def _starts_with_vowel(word: str) -> bool:
  return word[0].lower() in _VOWELS


def _elide(word: str, following: str) -> str:
  """``je`` → ``j'``, ``le``/``la`` → ``l'``, ``ne`` → ``n'``, ``de`` → ``d'`` before a vowel."""
  if word in ('je', 'le', 'la', 'ne', 'de') and _starts_with_vowel(following):
    return word[0] + "'"
  return word + ' '


@dataclasses.dataclass(frozen=True)
class NounPhrase:
  en: str
  fr_det: str  # the French determiner, '' for numbers written into fr_rest
  fr_rest: str
  plural: bool
  indefinite: bool

  @property
  def fr(self) -> str:
    return (_elide(self.fr_det, self.fr_rest) if self.fr_det else '') + self.fr_rest


def _noun_phrase(rng: random.Random) -> NounPhrase:
  noun = rng.choice(NOUNS)
  determiner = rng.choice(DETERMINERS)
  plural = determiner != 'a' and rng.random() < 0.4
  count_en = count_fr = ''
  if determiner == 'number':
    index = rng.randrange(len(NUMBERS))
    plural = index > 0
    count_en, count_fr = NUMBERS[index]
    if not plural and noun.feminine:
      count_fr = 'une'
  adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
  en_noun = noun.en_plural if plural else noun.en
  fr_noun = noun.fr_plural if plural else noun.fr
  if adjective is not None:
    en_words = f'{adjective.en} {en_noun}'
    form = adjective.fr[2 * plural + noun.feminine]
    fr_words = f'{form} {fr_noun}' if adjective.before_noun else f'{fr_noun} {form}'
  else:
    en_words, fr_words = en_noun, fr_noun

  if determiner == 'number':
    return NounPhrase(f'{count_en} {en_words}', '', f'{count_fr} {fr_words}', plural, True)
  if determiner == 'the':
    fr_det = 'les' if plural else ('la' if noun.feminine else 'le')
    return NounPhrase(f'the {en_words}', fr_det, fr_words, plural, False)
  if determiner == 'a':
    article = 'an' if en_words[0] in 'aeiou' else 'a'
    return NounPhrase(f'{article} {en_words}', 'une' if noun.feminine else 'un', fr_words,
                      False, True)
  if determiner == 'my':
    if plural:
      fr_det = 'mes'
    else:  # "mon amie" / "mon école": ma → mon before a vowel
      fr_det = 'ma' if noun.feminine and not _starts_with_vowel(fr_words) else 'mon'
    return NounPhrase(f'my {en_words}', fr_det, fr_words, plural, False)
  if plural:
    return NounPhrase(f'these {en_words}', 'ces', fr_words, True, False)
  if noun.feminine:
    fr_det = 'cette'
  else:
    fr_det = 'cet' if _starts_with_vowel(fr_words) else 'ce'
  return NounPhrase(f'this {en_words}', fr_det, fr_words, False, False)


def _after_preposition(preposition: str, phrase: NounPhrase) -> str:
  """``de`` + ``le`` → ``du``, ``de`` + ``les`` → ``des``, ``de`` + ``l'`` stays."""
  if preposition.endswith(' de') and phrase.fr_det in ('le', 'les'):
    stem = preposition[:-3]
    contracted = 'du' if phrase.fr_det == 'le' and not _starts_with_vowel(phrase.fr_rest) else None
    if phrase.fr_det == 'les':
      contracted = 'des'
    if contracted:
      return f'{stem} {contracted} {phrase.fr_rest}'
  if preposition.endswith(' de'):
    return preposition[:-2] + _elide('de', phrase.fr) + phrase.fr
  return f'{preposition} {phrase.fr}'


def _negated_object(phrase: NounPhrase) -> str:
  """Under negation ``un``/``une`` become ``de``: ``je ne mange pas de pomme``."""
  if phrase.fr_det in ('un', 'une'):
    return _elide('de', phrase.fr_rest) + phrase.fr_rest
  return phrase.fr


def _capitalize(text: str) -> str:
  return text[0].upper() + text[1:]


def generate_pair(rng: random.Random) -> tuple[str, str]:
  """One (English, French) sentence pair."""
  if rng.random() < 0.45:
    en_subject, fr_subject, person = rng.choice(PRONOUNS)
    third_singular = person == 2
  else:
    phrase = _noun_phrase(rng)
    en_subject, fr_subject = phrase.en, phrase.fr
    person = 4 if phrase.plural else 2
    third_singular = not phrase.plural
  verb = rng.choice(VERBS)
  tense = rng.choice(('present', 'past', 'future'))
  negated = rng.random() < 0.25
  obj = _noun_phrase(rng)

  if tense == 'present':
    fr_verb = verb.fr_present[person]
    if negated:
      en_verb = f"{'does' if third_singular else 'do'} not {verb.en[0]}"
    else:
      en_verb = verb.en[1] if third_singular else verb.en[0]
  elif tense == 'past':
    fr_verb = _AVOIR[person]
    en_verb = f'did not {verb.en[0]}' if negated else verb.en[2]
  else:
    fr_verb = verb.fr_future_stem + _FUTURE_ENDINGS[person]
    en_verb = f'will not {verb.en[0]}' if negated else f'will {verb.en[0]}'

  if negated:
    fr_core = f'{_elide("ne", fr_verb)}{fr_verb} pas'
  else:
    fr_core = fr_verb
  if tense == 'past':
    fr_core = f'{fr_core} {verb.fr_participle}'
  fr_subject_text = _elide(fr_subject, fr_core).rstrip(' ') if fr_subject == 'je' else fr_subject
  separator = '' if fr_subject_text.endswith("'") else ' '
  fr_object = _negated_object(obj) if negated else obj.fr
  en = f'{en_subject} {en_verb} {obj.en}'
  fr = f'{fr_subject_text}{separator}{fr_core} {fr_object}'

  extra = rng.random()
  if extra < 0.3:
    en_place, fr_place = rng.choice(PLACES)
    place = _noun_phrase(rng)
    en += f' {en_place} {place.en}'
    fr += ' ' + _after_preposition(fr_place, place)
  elif extra < 0.55:
    en_time, fr_time = rng.choice(TIMES[tense])
    en += f' {en_time}'
    fr += f' {fr_time}'
  return _capitalize(en) + '.', _capitalize(fr) + '.'


def generate_splits(
    seed: int = DEFAULT_SEED,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_valid: int = DEFAULT_NUM_VALID,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """Distinct pairs split into (train, valid); no English sentence is in both."""
  rng = random.Random(seed)
  seen: set[str] = set()
  pairs: list[tuple[str, str]] = []
  while len(pairs) < num_train + num_valid:
    en, fr = generate_pair(rng)
    if en not in seen:
      seen.add(en)
      pairs.append((en, fr))
  return pairs[num_valid:], pairs[:num_valid]


def write_jsonl(pairs: list[tuple[str, str]], path: pathlib.Path) -> None:
  with path.open('w', encoding='utf-8') as f:
    for en, fr in pairs:
      f.write(json.dumps({'src': en, 'dst': fr}, ensure_ascii=False) + '\n')


def train_tokenizer(pairs: list[tuple[str, str]], vocab_size: int = DEFAULT_VOCAB_SIZE) -> bytes:
  """A BPE sentencepiece model over the pairs and the prompts, with Gemma's conventions.

  Gemma's ids (pad 0, eos 1, bos 2, unk 3, ``<mask>`` 4), its dialog turn markers as single
  pieces, newlines kept as pieces, no dummy prefix, split digits and byte fallback, so that every
  code path that a real Gemma tokenizer takes is taken with this one too.
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  prompts = [records.PromptFormat.from_template(t) for t in records.PROMPT_TEMPLATES]
  lines = [text for pair in pairs for text in pair]
  lines += [p.render(en) for p in prompts for en, _ in pairs[:200]]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      model_type='bpe',
      vocab_size=vocab_size,
      character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>', unk_piece='<unk>',
      user_defined_symbols=['<mask>', '<start_of_turn>', '<end_of_turn>', '\n'],
      normalization_rule_name='identity',
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_digits=True,
      byte_fallback=True,
      num_threads=1,
      shuffle_input_sentence=False,
      minloglevel=2,
  )
  return model.getvalue()


def write_assets(out_dir: pathlib.Path = ASSETS_DIR, *, seed: int = DEFAULT_SEED,
                 num_train: int = DEFAULT_NUM_TRAIN, num_valid: int = DEFAULT_NUM_VALID) -> str:
  """Writes the train and valid splits and the tokenizer; returns a line saying so."""
  train, valid = generate_splits(seed, num_train, num_valid)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_jsonl(train, out_dir / TRAIN_FILE)
  write_jsonl(valid, out_dir / VALID_FILE)
  (out_dir / TOKENIZER_FILE).write_bytes(train_tokenizer(train))
  return f'wrote {len(train)} train and {len(valid)} valid pairs and {TOKENIZER_FILE} to {out_dir}'


def _main(argv: list[str]) -> None:
  f = flags.FLAGS
  print(write_assets(pathlib.Path(f.out_dir), seed=f.seed, num_train=f.num_train,
                     num_valid=f.num_valid))


if __name__ == '__main__':
  flags.DEFINE_string('out_dir', str(ASSETS_DIR), 'Where to write the files.')
  flags.DEFINE_integer('seed', DEFAULT_SEED, 'Seed of the generator.')
  flags.DEFINE_integer('num_train', DEFAULT_NUM_TRAIN, 'Training pairs.')
  flags.DEFINE_integer('num_valid', DEFAULT_NUM_VALID, 'Validation pairs.')
  app.run(_main, flags_parser=errors.parse_flags)

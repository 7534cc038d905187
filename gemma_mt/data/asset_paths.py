"""Where the files shipped in ``gemma_mt/data/assets`` are (no imports beyond pathlib).

They are written by ``python -m gemma_mt.data.demo_corpus``; models and data sources only need
their paths.
"""

import pathlib

ASSETS_DIR = pathlib.Path(__file__).parent / 'assets'
DEMO_TRAIN_FILE = 'demo_en_fr.train.jsonl'
DEMO_VALID_FILE = 'demo_en_fr.valid.jsonl'
DEMO_TOKENIZER_FILE = 'demo_tokenizer.model'
DEMO_TOKENIZER = ASSETS_DIR / DEMO_TOKENIZER_FILE

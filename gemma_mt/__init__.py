"""gemma_mt: fine-tune Gemma models for machine translation in JAX.

The public API, for use from other JAX code (names resolve lazily, so that importing the package
or running ``--help`` does not import jax)::

    from gemma_mt import TrainConfig, train_and_evaluate
    result = train_and_evaluate(TrainConfig(workdir='runs/demo'))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'TrainConfig': 'gemma_mt.train.config',
    'ConfigError': 'gemma_mt.train.config',
    'train_and_evaluate': 'gemma_mt.train.loop',
    'TrainResult': 'gemma_mt.train.loop',
    'TrainState': 'gemma_mt.train.step',
    'train_step': 'gemma_mt.train.step',
    'eval_step': 'gemma_mt.train.step',
    'GemmaTokenizer': 'gemma_mt.data.tokenizer',
    'TrainingInput': 'gemma_mt.data.records',
    'PromptFormat': 'gemma_mt.data.records',
    'Translator': 'gemma_mt.decoding',
    'corpus_scores': 'gemma_mt.quality',
    'QualityScores': 'gemma_mt.quality',
    'UserError': 'gemma_mt.errors',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

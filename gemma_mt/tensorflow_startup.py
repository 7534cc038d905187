"""How gemma_mt's commands start TensorFlow, which they import (gemma's modules do) but never run.

Called first by each command's entry point (``python -m gemma_mt.train`` and the others), never
on import of a library module: it changes the process's environment, which is the command's to
set, not a library's.
"""

from __future__ import annotations

import os
import sys


def set_environment() -> None:
  """Keeps TensorFlow's C++ start-up chatter out of the terminal (``TF_CPP_MIN_LOG_LEVEL=2``), for
  this process and those it starts; a value the user set is kept. Keeps scikit-learn out of this
  process, unless something already imported it.

  TensorFlow imports all of Keras at start-up, and Keras imports scikit-learn for its wrappers,
  which it skips when ``import sklearn`` fails: no gemma_mt command uses scikit-learn, and not
  importing it saves about a second of each command's start-up CPU (``bench/startup.py``). The
  rest of Keras stays: the only switch, ``TF_USE_LEGACY_KERAS=1`` without ``tf_keras`` installed,
  breaks ``tf.keras``, which TensorBoard's hparams plugin touches on import (gemma's ``gm.ckpts``
  → kauldron → clu).
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # A None entry makes `import sklearn` raise ImportError (Python's import system, documented).
  sys.modules.setdefault('sklearn', None)

"""How gemma_mt's commands start TensorFlow, which they import (gemma's modules do) but never run.

Called first by each command's entry point (``python -m gemma_mt.train`` and the others), never
on import of a library module: it changes the process's environment, which is the command's to
set, not a library's.
"""

from __future__ import annotations

import importlib.util
import os


def set_environment() -> None:
  """Quiet, lean TensorFlow start-up for this process and the processes it starts.

  ``TF_CPP_MIN_LOG_LEVEL=2`` keeps TensorFlow's C++ start-up chatter out of the terminal.
  ``TF_USE_LEGACY_KERAS=1`` where ``tf_keras`` is not installed: TensorFlow otherwise imports all
  of Keras at start-up (and scikit-learn through Keras' wrappers), 29% of a training process's
  start-up CPU (``bench/startup.py``); pointed at the absent ``tf_keras`` it loads neither (that
  import fails quietly). Nothing gemma_mt runs uses ``tf.keras``; the tests run this way too.
  A value the user set is kept.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if importlib.util.find_spec('tf_keras') is None:
    os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

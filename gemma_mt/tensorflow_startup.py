"""How gemma_mt's commands start TensorFlow, which they import (gemma's modules do) but never run.

Called first by each command's entry point (``python -m gemma_mt.train`` and the others), never
on import of a library module: it changes the process's environment, which is the command's to
set, not a library's.
"""

from __future__ import annotations

import os


def set_environment() -> None:
  """Keeps TensorFlow's C++ start-up chatter out of the terminal (``TF_CPP_MIN_LOG_LEVEL=2``), for
  this process and those it starts; a value the user set is kept.

  TensorFlow also imports all of Keras at start-up (with scikit-learn, for Keras' wrappers), a
  third of a training process's start-up CPU (``bench/startup.py``). It is left to do so: the
  only switch, ``TF_USE_LEGACY_KERAS=1`` without ``tf_keras`` installed, breaks ``tf.keras``,
  which TensorBoard's hparams plugin touches on import (gemma's ``gm.ckpts`` → kauldron → clu).
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

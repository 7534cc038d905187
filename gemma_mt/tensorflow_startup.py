"""How gemma_mt's commands start without TensorFlow, which gemma's modules import but never run.

Called first by each command's entry point (``python -m gemma_mt.train`` and the others), never
on import of a library module: it changes the process's environment and import system, which are
the command's to set, not a library's.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from typing import Any, Sequence

# The one module that imports TensorFlow when gemma is imported (``import tensorflow as tf``, then
# ``tf.Tensor`` in the array types of its isinstance checks).
_TENSORFLOW_IMPORTER = 'kauldron.typing.array_types'


def set_environment() -> None:
  """Lets this process start without importing TensorFlow, Keras or scikit-learn (about 4 s of
  each command's start-up CPU, ``bench/startup.py``); a command that reads a ``tfds:`` dataset
  still imports the real TensorFlow when it needs it.

  - gemma's ``kauldron.typing.array_types`` reads ``tf.Tensor`` at import; while it is imported,
    ``tensorflow`` names a stand-in whose ``Tensor`` answers isinstance checks with the real
    ``tf.Tensor`` once TensorFlow is imported, and with False before (nothing can be a tensor of a
    TensorFlow not imported). The stand-in is removed from ``sys.modules`` at once: etils takes
    any ``tensorflow`` there for the real one (gemma's batch padding would then import
    ``tensorflow.experimental.numpy``).
  - TensorBoard's event writer uses its pure-Python file layer (``tensorboard.compat.notf``,
    TensorBoard's own switch) instead of TensorFlow's.
  - TensorFlow's C++ start-up chatter stays out of the terminal (``TF_CPP_MIN_LOG_LEVEL=2``, for
    this process and those it starts; a value the user set is kept), and when TensorFlow is
    imported, Keras skips its scikit-learn wrappers (a ``None`` entry in ``sys.modules`` makes
    ``import sklearn`` raise ImportError), which no gemma_mt command uses.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.modules.setdefault('sklearn', None)
  sys.modules.setdefault('tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf'))
  if _TENSORFLOW_IMPORTER not in sys.modules and not any(
      isinstance(finder, _ImportsWithoutTensorFlow) for finder in sys.meta_path):
    sys.meta_path.insert(0, _ImportsWithoutTensorFlow())


class _TensorOnceImported(type):
  """Metaclass of the stand-in ``tf.Tensor``: isinstance and issubclass ask the real one."""

  def __instancecheck__(cls, instance: Any) -> bool:
    tensorflow = sys.modules.get('tensorflow')
    return tensorflow is not None and isinstance(instance, tensorflow.Tensor)

  def __subclasscheck__(cls, subclass: type) -> bool:
    tensorflow = sys.modules.get('tensorflow')
    return tensorflow is not None and issubclass(subclass, tensorflow.Tensor)


class _Tensor(metaclass=_TensorOnceImported):
  """``tf.Tensor`` as gemma's array types see it when imported before TensorFlow."""


class _ImportsWithoutTensorFlow(importlib.abc.MetaPathFinder):
  """Finds ``kauldron.typing.array_types`` as usual and runs it with a stand-in ``tensorflow``,
  unless the real one is already imported."""

  def find_spec(self, fullname: str, path: Sequence[str] | None,
                target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
    if fullname != _TENSORFLOW_IMPORTER or 'tensorflow' in sys.modules:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
    if spec is not None and spec.loader is not None:
      spec.loader = _LoaderWithoutTensorFlow(spec.loader)
    return spec


class _LoaderWithoutTensorFlow(importlib.abc.Loader):
  """The module's own loader, run with ``sys.modules['tensorflow']`` set to the stand-in."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
    return self._loader.create_module(spec)

  def exec_module(self, module: types.ModuleType) -> None:
    # Imported first so that neither sees the stand-in.
    import jaxtyping  # pylint: disable=import-outside-toplevel,unused-import
    import numpy  # pylint: disable=import-outside-toplevel,unused-import
    stand_in = types.ModuleType('tensorflow', 'Stand-in while kauldron.typing is imported.')
    stand_in.Tensor = _Tensor
    sys.modules['tensorflow'] = stand_in
    try:
      self._loader.exec_module(module)
    finally:
      if sys.modules.get('tensorflow') is stand_in:
        del sys.modules['tensorflow']

"""How gemma_mt's commands start without TensorFlow, which gemma's modules import but never run.

Called first by each command's entry point (``python -m gemma_mt.train`` and the others), never
on import of a library module: it changes the process's environment and import system, which are
the command's to set, not a library's.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import os
import sys
import types
from typing import Any, Sequence

# The modules that ``import tensorflow`` when gemma is imported, run with a stand-in: kauldron's
# array types read ``tf.Tensor`` for their isinstance checks; the others, imported through
# ``kauldron.train`` when a released Gemma's class is first used (``gm.nn.Gemma3_270M``: gemma's
# checkpoint loaders), use ``tf`` only in functions that gemma_mt never calls.
_TENSORFLOW_IMPORTERS = ('kauldron.typing.array_types', 'kauldron.train.setup_utils',
                         'kauldron.data.iterators.noop_handler',
                         'kauldron.data.iterators.tfdata_handler')
# clu's TensorBoard writer, also imported through ``kauldron.train``: its imports need the real
# TensorFlow (TensorBoard's hparams summaries make a tensor at import), so the module runs when a
# writer is first made (never, in gemma_mt).
_TENSORFLOW_WRITER = 'clu.metric_writers.tf.summary_writer'


def set_environment() -> None:
  """Lets this process start without importing TensorFlow, Keras or scikit-learn (about 4 s of
  each command's start-up CPU, ``bench/startup.py``); a command that reads a ``tfds:`` dataset
  still imports the real TensorFlow when it needs it.

  - gemma's ``kauldron.typing.array_types`` reads ``tf.Tensor`` at import; while it (or another
    of ``_TENSORFLOW_IMPORTERS``) is imported, ``tensorflow`` names a stand-in whose ``Tensor``
    answers isinstance checks with the real ``tf.Tensor`` once TensorFlow is imported, and with
    False before (nothing can be a tensor of a TensorFlow not imported); any other attribute of
    the stand-in imports the real TensorFlow. Only the importer's own ``import tensorflow`` gets
    the stand-in; it never enters ``sys.modules``: etils and TFDS take any ``tensorflow`` there
    for the real one (gemma's batch padding would then import ``tensorflow.experimental.numpy``).
  - clu's TensorBoard writer module (``clu.metric_writers.SummaryWriter``) runs when a writer is
    first made.
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
  if not any(
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


class _TensorFlowOnUse(types.ModuleType):
  """``tensorflow`` while an importer runs: ``Tensor`` is ``_Tensor``; any other attribute is
  the real TensorFlow's, imported then."""

  def __getattr__(self, name: str) -> Any:
    if name.startswith('__'):  # the import system's probes
      raise AttributeError(name)
    if name == 'Tensor':
      return _Tensor
    return getattr(importlib.import_module('tensorflow'), name)


class _ImportsWithoutTensorFlow(importlib.abc.MetaPathFinder):
  """Finds the TensorFlow importers as usual and runs each with a stand-in ``tensorflow``, and
  clu's TensorBoard writer on first use, unless the real TensorFlow is already imported."""

  def find_spec(self, fullname: str, path: Sequence[str] | None,
                target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
    if fullname not in (*_TENSORFLOW_IMPORTERS, _TENSORFLOW_WRITER) or 'tensorflow' in sys.modules:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
    if spec is not None and spec.loader is not None:
      spec.loader = (_WriterOnFirstUse(spec.loader) if fullname == _TENSORFLOW_WRITER
                     else _LoaderWithoutTensorFlow(spec.loader))
    return spec


class _WrappedLoader(importlib.abc.Loader):
  """A module's own loader, which creates the module; subclasses change how it runs."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
    return self._loader.create_module(spec)


class _WriterOnFirstUse(_WrappedLoader):
  """clu's TensorBoard writer module with a ``SummaryWriter`` that runs the module (importing
  TensorFlow) and then makes the writer. (clu and kauldron only call it; nothing subclasses it.)"""

  def exec_module(self, module: types.ModuleType) -> None:
    loader = self._loader

    def summary_writer(*args: Any, **kwargs: Any) -> Any:
      if module.SummaryWriter is summary_writer:  # clu's modules keep this function: run once
        loader.exec_module(module)  # defines the real SummaryWriter in place of this function
      return module.SummaryWriter(*args, **kwargs)

    module.SummaryWriter = summary_writer


class _LoaderWithoutTensorFlow(_WrappedLoader):
  """The module's own loader, run with an ``__import__`` that answers the module's own
  ``import tensorflow`` with the stand-in while the real one is not imported. (Not through
  ``sys.modules``: the modules it imports in turn would see the stand-in, and TFDS or etils
  take any ``tensorflow`` there for the real one.)"""

  def exec_module(self, module: types.ModuleType) -> None:
    stand_in = _TensorFlowOnUse('tensorflow', f'TensorFlow as {module.__name__} imports it.')

    def import_(name: str, globals_: Any = None, locals_: Any = None,
                fromlist: Sequence[str] = (), level: int = 0) -> Any:
      if name == 'tensorflow' and level == 0 and 'tensorflow' not in sys.modules:
        return stand_in
      return builtins.__import__(name, globals_, locals_, fromlist, level)

    module.__builtins__ = {**builtins.__dict__, '__import__': import_}
    self._loader.exec_module(module)

"""Import-only stand-ins for TensorFlow and TensorFlow Datasets on a machine without them.

`bench/gpu_suite.sh` puts this folder on PYTHONPATH only where `import tensorflow` fails (a lent
GPU machine has neither package and no network). Creating a gemma model imports ``gm.ckpts``,
which imports all of kauldron and clu: their modules name TensorFlow's and TFDS's types at import
(``isinstance`` checks, annotations of dataclass fields, base classes) and call nothing of them on
the benchmarks' path. Every attribute of a stand-in module is an empty class whose attributes are
again such classes, so those imports succeed; anything that would really use TensorFlow fails.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any


def _attribute(owner: str, name: str) -> Any:
  """``owner.name``'s stand-in; dunder names stay Python's (``__path__``, ``__wrapped__``…)."""
  if name.startswith('__'):
    raise AttributeError(name)
  return stand_in(f'{owner}.{name}')


class _StandInType(type):
  """The class of every stand-in: any public attribute is another stand-in class."""

  def __getattr__(cls, name: str) -> Any:
    return _attribute(cls.__qualname__, name)


@functools.cache
def stand_in(qualname: str) -> type:
  """The one stand-in class of ``qualname`` (the same object at every import)."""
  return _StandInType(qualname.rsplit('.', 1)[-1], (), {
      '__qualname__': qualname,
      '__module__': __name__,
      # `tf.data.Dataset[...]` in annotations.
      '__class_getitem__': classmethod(lambda cls, item: cls),
  })


def module_getattr(module: str):
  """A module-level ``__getattr__`` that gives ``module.NAME``'s stand-in."""
  return functools.partial(_attribute, module)


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Makes ``import PACKAGE.a.b`` give a stand-in module (etils imports
  ``tensorflow.experimental.numpy`` once ``tensorflow`` is in ``sys.modules``)."""

  def __init__(self, package: str):
    self.package = package

  def find_spec(self, fullname: str, path: Any = None, target: Any = None):
    del path, target
    if fullname.startswith(self.package + '.'):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
    module = types.ModuleType(spec.name, 'Import-only stand-in (bench/no_tensorflow).')
    module.__getattr__ = module_getattr(spec.name)
    return module

  def exec_module(self, module: types.ModuleType) -> None:
    pass


def install(package: str) -> Any:
  """Stand-ins for ``package``'s submodules; returns the package's module-level ``__getattr__``."""
  finders = [f for f in sys.meta_path if isinstance(f, _SubmoduleFinder)]
  if all(f.package != package for f in finders):
    sys.meta_path.append(_SubmoduleFinder(package))
  return module_getattr(package)

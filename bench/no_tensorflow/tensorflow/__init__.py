"""Import-only stand-in for TensorFlow (see ``stand_in``): never on the path where TensorFlow is."""

import stand_in
# TensorBoard's hparams plugin builds one TensorProto at import: TensorBoard's own builder makes it.
from tensorboard.util.tensor_util import make_tensor_proto  # pylint: disable=unused-import

__getattr__ = stand_in.install('tensorflow')
# A dunder name, which the module-level __getattr__ leaves to Python: etils reads
# `tf.__internal__.types`.
__internal__ = stand_in.stand_in('tensorflow.__internal__')

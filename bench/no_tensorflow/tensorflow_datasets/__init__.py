"""Import-only stand-in for TensorFlow Datasets (see ``stand_in``): kauldron's data modules name
its types at import."""

import stand_in

__getattr__ = stand_in.install('tensorflow_datasets')

"""The ``--mesh`` value: sizes of the ``data``, ``fsdp`` and ``tensor`` axes (no jax import)."""

from __future__ import annotations

import dataclasses
import math

from gemma_mt import errors

MESH_AXES = ('data', 'fsdp', 'tensor')


class MeshError(errors.UserError):
  """A --mesh that does not fit the devices."""


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """``data:D,fsdp:F,tensor:T`` sizes; one may be -1 to take the remaining devices.

  An axis left out has size 1, except ``data``, which takes the rest unless another axis does.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  @classmethod
  def parse(cls, text: str) -> MeshSpec:
    sizes: dict[str, int] = {}
    for part in filter(None, text.split(',')):
      name, sep, value = part.partition(':')
      name = name.strip()
      if not sep or name not in MESH_AXES or name in sizes:
        raise MeshError(f'--mesh={text!r}: write data:D,fsdp:F,tensor:T (each axis at most once)')
      try:
        sizes[name] = int(value)
      except ValueError:
        raise MeshError(f'--mesh={text!r}: {value!r} is not an integer') from None
      if sizes[name] == 0 or sizes[name] < -1:
        raise MeshError(f'--mesh={text!r}: axis sizes are positive, or -1 for the rest')
    if list(sizes.values()).count(-1) > 1:
      raise MeshError(f'--mesh={text!r}: only one axis may be -1')
    if 'data' not in sizes and -1 not in sizes.values():
      sizes['data'] = -1  # an unnamed data axis takes the devices the others leave
    return cls(**{'data': 1, 'fsdp': 1, 'tensor': 1, **sizes})

  def resolve(self, num_devices: int) -> dict[str, int]:
    """Axis sizes whose product is ``num_devices``; MeshError naming --mesh otherwise."""
    sizes = {'data': self.data, 'fsdp': self.fsdp, 'tensor': self.tensor}
    known = math.prod(v for v in sizes.values() if v != -1)
    for name, value in sizes.items():
      if value == -1:
        if num_devices % known:
          raise MeshError(f'--mesh: {num_devices} devices do not divide into the fixed axes '
                          f'({known}); choose sizes whose product divides {num_devices}')
        sizes[name] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
      raise MeshError(
          f'--mesh={self.describe()} has {math.prod(sizes.values())} devices but there are '
          f'{num_devices}: make the product of the axis sizes {num_devices} (or use -1)')
    return sizes

  def describe(self) -> str:
    return ','.join(f'{n}:{getattr(self, n)}' for n in MESH_AXES)

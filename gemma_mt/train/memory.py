"""The memory plan of a run: what one device holds during a training step, before any weight is
read, from the compiled step's own ``memory_analysis()`` and the shardings of the state."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from gemma_mt.train import sharding

_GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one training step.

  Attributes:
    params: the parameter shards.
    opt_state: the optimizer state shards.
    gradients: one gradient per parameter shard (in the parameters' dtype); XLA holds them among
      its temporaries.
    activations: the rest of XLA's temporaries (activations kept for the backward pass, logits,
      buffers of collectives).
    batch: the batch's shard.
    frozen: the frozen base's shards (LoRA runs: quantized if asked), 0 otherwise.
    device_bytes: memory of one device (for CPU devices: the host's memory shared by them), or
      None when unknown.
    device: what ``device_bytes`` is.
  """

  params: int
  opt_state: int
  gradients: int
  activations: int
  batch: int
  device_bytes: int | None
  device: str
  frozen: int = 0

  @property
  def total(self) -> int:
    return (self.params + self.opt_state + self.gradients + self.activations + self.batch
            + self.frozen)

  def fits(self) -> bool:
    return self.device_bytes is None or self.total <= self.device_bytes

  def lines(self) -> list[str]:
    rows = [('frozen base', self.frozen)] if self.frozen else []
    rows += [('parameters', self.params), ('optimizer state', self.opt_state),
            ('gradients', self.gradients), ('activations and temporaries', self.activations),
            ('batch', self.batch), ('total', self.total)]
    out = ['memory plan per device:']
    out += [f'  {name:<28} {value / _GIB:9.3f} GiB' for name, value in rows]
    if self.device_bytes is None:
      out.append(f'  {"device memory":<28}   unknown ({self.device})')
    else:
      out.append(f'  {"device memory":<28} {self.device_bytes / _GIB:9.3f} GiB ({self.device}): '
                 f'{"fits" if self.fits() else "DOES NOT FIT"} '
                 f'({100 * self.total / self.device_bytes:.0f}%)')
    return out

  def advice(self, config: Any, mesh: Any) -> str:
    """What to change when the plan does not fit, largest saving first."""
    hints = []
    if self.params + self.opt_state + self.gradients > self.activations and mesh.shape['fsdp'] < mesh.size:
      hints.append(f'shard parameters and optimizer state over more devices (--mesh=fsdp:{mesh.size})')
    if not config.lora_rank and self.params + self.opt_state > self.activations:
      hints.append('train LoRA adapters on a frozen base instead of every parameter '
                   '(--lora_rank=16, and --base_quantization=int8 for a smaller base)')
    elif config.lora_rank and config.base_quantization == 'none':
      hints.append('hold the frozen base in int8 (--base_quantization=int8)')
    if config.loss_chunk == 0:
      hints.append('compute the loss a few positions at a time, never holding the full logits '
                   '(--loss_chunk=32)')
    if config.remat == 'none':
      hints.append('recompute activations in the backward pass (--remat=block)')
    if config.compute_dtype == 'float32':
      hints.append('compute in --compute_dtype=bfloat16')
    if config.param_dtype == 'float32':
      hints.append('keep parameters in --param_dtype=bfloat16')
    hints.append(f'a smaller --batch_size (or --grad_accum_steps) or --max_seq_len (now '
                 f'{config.batch_size} × {config.max_seq_len})')
    return '; '.join(hints)


def device_memory(device: jax.Device, num_local_devices: int) -> tuple[int | None, str]:
  """``(bytes, description)`` of one device's memory; CPU devices share the host's memory
  between the ``num_local_devices`` of this process that the run uses."""
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), device.device_kind
  if device.platform == 'cpu':
    try:
      host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError):
      return None, 'host memory unknown'
    return host // num_local_devices, f'host memory / {num_local_devices} CPU devices'
  return None, device.device_kind


def plan(compiled_step: Any, abstract_state: Any, state_shardings: Any, abstract_batch: Any,
         mesh: jax.sharding.Mesh, abstract_frozen: Any = None) -> MemoryPlan:
  """The plan of ``compiled_step`` (a compiled ``train_step`` on ``abstract_state`` and, for
  LoRA runs, the frozen base ``abstract_frozen``: ShapeDtypeStructs with shardings)."""
  params = sharding.bytes_per_device(abstract_state.params, state_shardings.params)
  opt_state = sharding.bytes_per_device(abstract_state.opt_state, state_shardings.opt_state)
  batch = sharding.bytes_per_device(abstract_batch,
                                    jax.tree.map(lambda x: x.sharding, abstract_batch))
  analysis = compiled_step.memory_analysis()
  temp = int(getattr(analysis, 'temp_size_in_bytes', 0) or 0) if analysis is not None else 0
  gradients = min(params, temp)
  device_bytes, description = device_memory(mesh.devices.flat[0], len(mesh.local_devices))
  frozen = sharding.bytes_per_device(
      abstract_frozen, jax.tree.map(lambda x: x.sharding, abstract_frozen)) if abstract_frozen else 0
  return MemoryPlan(params=params, opt_state=opt_state, gradients=gradients,
                    activations=temp - gradients, batch=batch, device_bytes=device_bytes,
                    device=description, frozen=frozen)

"""The frozen base of a LoRA run: its layout, read from the run's weights, quantized and
fingerprinted; and a LoRA run's saved adapters with the base they were trained on."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp

from gemma_mt import models
from gemma_mt.models import lora
from gemma_mt.models import sources as model_sources
from gemma_mt.train import checkpoint
from gemma_mt.train import sharding
from gemma_mt.train.config import ConfigError, TrainConfig

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BaseLayout:
  """Shapes and shardings of a LoRA run's parameters.

  Attributes:
    model: the adapted flax module (``lora.AdaptedTransformer``).
    base_model: the plain transformer it wraps (the base's dtype).
    abstract_base: ``ShapeDtypeStruct``s of the base as read (``--base_dtype``), with shardings.
    abstract_frozen: the same after ``--base_quantization``, with shardings.
    abstract_adapters: ``ShapeDtypeStruct``s of the adapters (no shardings).
  """

  model: Any
  base_model: Any
  abstract_base: Any
  abstract_frozen: Any
  abstract_adapters: Any

  @property
  def frozen_shardings(self) -> Any:
    return jax.tree.map(lambda x: x.sharding, self.abstract_frozen)


def transposed_gating(model: Any) -> bool:
  return bool(getattr(model.config, 'transpose_gating_einsum', False))


def layout(config: TrainConfig, spec: models.ModelSpec, mesh: Any) -> BaseLayout:
  """The layout of ``config``'s LoRA run of ``spec`` on ``mesh``; ConfigError for a rank that
  the adapted weights cannot have."""
  lora_spec = config.lora_spec()
  base_model = spec.transformer(jnp.dtype(config.frozen_dtype), config.remat)
  model = lora.adapt(base_model, lora_spec, jnp.dtype(config.param_dtype))
  full = jax.eval_shape(lambda: models.init_params(model, config.seed))
  base, adapters = lora.split(full)
  transposed = transposed_gating(base_model)
  try:
    smallest = lora.smallest_adapted_dimension(base, lora_spec.targets, transposed)
  except lora.LoraError as e:
    raise ConfigError(str(e)) from None
  if lora_spec.rank > smallest:
    raise ConfigError(f'--lora_rank={lora_spec.rank} is larger than the smallest adapted '
                      f'dimension of {spec.name} ({smallest}): use a rank of at most {smallest}')
  frozen = lora.abstract_quantized(base, config.base_quantization, transposed)
  rules = sharding.rules_for(base_model.config)
  return BaseLayout(
      model, base_model,
      sharding.with_shardings(base, sharding.param_shardings(mesh, base, rules)),
      sharding.with_shardings(frozen, sharding.param_shardings(mesh, frozen, rules)),
      adapters)


def load(config: TrainConfig, run_model: model_sources.RunModel,
         base_layout: BaseLayout) -> tuple[Any, dict[str, list[float]]]:
  """The frozen base on the devices (quantized if asked) and its fingerprint.

  Read from ``--init_from`` if set, else from the weights' source; a demo model without
  either starts from its seeded random parameters (the same ones on every resume).
  """
  abstract = base_layout.abstract_base
  if config.init_from:
    base = checkpoint.restore_params(config.init_from, abstract)
  elif run_model.source is not None:
    base = run_model.source.load_params(abstract)
  else:
    _LOG.warning('--lora_rank on %s without --ckpt: the base is random (for tests only)',
                 run_model.spec.name)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    base = jax.jit(lambda key: models.init_params(base_layout.base_model, key),
                   out_shardings=shardings,
                   compiler_options=models.INIT_COMPILER_OPTIONS)(jax.random.key(config.seed))
  fingerprint = lora.fingerprint(base)
  if config.base_quantization != 'none':
    base = jax.jit(
        lambda b: lora.quantize(b, config.base_quantization,
                                transposed_gating(base_layout.base_model)),
        out_shardings=base_layout.frozen_shardings, donate_argnums=0)(base)
  return base, fingerprint


def restore_lora_run(workdir: str, step: int, config: TrainConfig,
                     device: jax.Device | None = None) -> tuple[BaseLayout, Any, Any]:
  """(layout, frozen base, adapters) of a LoRA run's checkpoint ``step``, on one device.

  The base is read again from the run's recorded ``--ckpt`` (or ``--init_from``, or the seed)
  and must be the one the adapters were trained on.
  """
  device = device or jax.devices()[0]
  mesh = sharding.make_mesh(devices=[device])
  spec = models.get_model_spec(config.model)
  run_model = model_sources.resolve_run_model(config.model, config.ckpt, config.tokenizer)
  base_layout = layout(config, spec, mesh)
  frozen, fingerprint = load(config, run_model, base_layout)
  directory = os.path.join(workdir, 'checkpoints')
  store = checkpoint.RunCheckpoints.for_reading(directory)
  try:
    check_base(store, step, fingerprint, config)
  finally:
    store.close()
  replicated = jax.sharding.SingleDeviceSharding(device)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      base_layout.abstract_adapters)
  adapters = checkpoint.restore_params(os.path.join(directory, str(step)), abstract,
                                        f'--workdir={workdir} at step {step}')
  return base_layout, frozen, adapters


def merged_lora_params(workdir: str, step: int, config: TrainConfig, dtype: Any) -> Any:
  """A LoRA run's checkpoint ``step`` as a plain model's parameters on one device: the base read
  again, the adapters folded into it (``lora.fold``), in ``dtype``."""
  base_layout, frozen, adapters = restore_lora_run(workdir, step, config)
  return lora.fold(lora.combine(frozen, adapters), config.lora_spec(),
                   transposed_gating(base_layout.base_model), dtype)


def check_base(store: checkpoint.RunCheckpoints, step: int, fingerprint: dict[str, list[float]],
               config: TrainConfig) -> None:
  """CheckpointError if checkpoint ``step`` was trained on another base than ``fingerprint``'s."""
  saved = store.saved_base_fingerprint(step)
  if saved is None:
    raise checkpoint.CheckpointError(
        f'checkpoint {step} in {store.directory} records no LoRA base: it is not a LoRA run\'s')
  differing = lora.fingerprint_difference(saved, fingerprint)
  if differing is not None:
    source = config.init_from or config.ckpt or f'the seed {config.seed}'
    raise checkpoint.CheckpointError(
        f'the base read from {source} is not the one checkpoint {step} in {store.directory} '
        f'was trained on ({differing} differs): pass the weights it was trained on, or use a '
        'new --workdir')

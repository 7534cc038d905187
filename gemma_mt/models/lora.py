"""LoRA adapters on a frozen (optionally quantized) Gemma base: wrap, split, quantize, fold.

A low-rank adapter adds ``scale · x @ a @ b`` (``scale = alpha / rank``) to one of the model's
einsum projections, with ``a`` holding the projection's input dimensions and the rank, and ``b``
the rank and its output dimensions (the gemma library's ``peft.LoRAEinsumAdapter`` shapes:
``q_einsum/w [N, D, H]`` gets ``a [D, r]``, ``b [r, N, H]``). ``b`` starts at zero, so the
adapted model starts as the base. The base may be held quantized (int8 or int4 per channel, the
gemma library's ``uniform_quantize``): each projection is dequantized to the compute dtype
where it is used, and again in the backward pass rather than kept (``jax.checkpoint``).

Parameter trees: the adapted model's tree is the base tree plus ``…/q_einsum/lora/{a,b}`` in
the attention and ``mlp/{gating_einsum,linear}_lora/{a,b}`` in the MLP (its two einsums share
one scope). ``split`` and ``combine`` move between the two parts; ``fold`` merges the adapters
into the base weights (a plain model's parameters).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gemma_mt.models.lora_spec import LoraError, LoraSpec

# Each einsum weight: the letters of its dimensions and which of them the input contracts
# (the equations of gemma's Attention and FeedForward). ``a`` takes the input letters (in the
# weight's order) and the rank, ``b`` the rank and the other letters.
WEIGHT_LETTERS = {
    'q_einsum': ('NDH', 'D'),
    'kv_einsum': ('CKDH', 'D'),
    'qkv_einsum': ('SNDH', 'D'),
    'attn_vec_einsum': ('NHD', 'NH'),
    'gating_einsum': ('NFH', 'F'),
    'linear': ('HF', 'H'),
}
# Gemma 2 (9B, 27B) and Gemma 3 store the gating einsum as [2, hidden, embed].
TRANSPOSED_GATING_LETTERS = ('NHF', 'F')


@flax.struct.dataclass
class QuantizedWeight:
  """An einsum weight as integers: ``values / scale`` is the weight (gemma's convention).

  ``values`` int8 or int4 with the weight's shape; ``scale`` float32 with size 1 along the
  contracted dimensions (one scale per output channel).
  """

  values: jax.Array
  scale: jax.Array

  def dequantize(self, dtype: Any) -> jax.Array:
    return (self.values.astype(jnp.float32) / self.scale).astype(dtype)


def weight_letters(name: str, transpose_gating: bool) -> tuple[str, str]:
  """(letters of the weight's dimensions, the contracted ones) of einsum ``name``."""
  if name == 'gating_einsum' and transpose_gating:
    return TRANSPOSED_GATING_LETTERS
  return WEIGHT_LETTERS[name]


def einsum_name(path: str) -> str | None:
  """The einsum a weight path belongs to (``layer_0/attn/q_einsum/w`` → ``q_einsum``)."""
  parts = path.split('/')
  if parts[-1] == 'w' and len(parts) > 1 and parts[-2] in WEIGHT_LETTERS:
    return parts[-2]
  if parts[-1] in ('gating_einsum', 'linear') and len(parts) > 1 and parts[-2] == 'mlp':
    return parts[-1]
  return None


def adapter_path(weight_path: str) -> str:
  """Where the adapters of a weight live: ``…/q_einsum/lora``, ``…/mlp/linear_lora``."""
  name = einsum_name(weight_path)
  if name in ('gating_einsum', 'linear'):
    return weight_path + '_lora'
  return weight_path.rsplit('/', 1)[0] + '/lora'


def is_adapter(path: str) -> bool:
  return any(part == 'lora' or part.endswith('_lora') for part in path.split('/'))


def split(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """The adapted model's parameter tree → (base tree, adapter tree)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  base = {k: v for k, v in flat.items() if not is_adapter(k)}
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  return (traverse_util.unflatten_dict(base, sep='/'),
          traverse_util.unflatten_dict(adapters, sep='/'))


def combine(base: Any, adapters: Any) -> dict[str, Any]:
  """The inverse of ``split``: one tree the adapted model takes."""
  flat = traverse_util.flatten_dict(base, sep='/')
  flat.update(traverse_util.flatten_dict(adapters, sep='/'))
  return traverse_util.unflatten_dict(flat, sep='/')


def _contracted_axes(name: str, transpose_gating: bool) -> tuple[int, ...]:
  letters, contracted = weight_letters(name, transpose_gating)
  return tuple(letters.index(c) for c in contracted)


def quantize(base: Any, method: str, transpose_gating: bool) -> Any:
  """Every einsum weight of ``base`` as a ``QuantizedWeight`` (``int8`` or ``int4``, one
  scale per output channel); embeddings and norms stay as they are. Runs under jit too."""
  from gemma.peft import _quantization_utils  # pylint: disable=import-outside-toplevel

  if method == 'none':
    return base
  bits, dtype = {'int8': (8, jnp.int8), 'int4': (4, jnp.int4)}[method]
  flat = traverse_util.flatten_dict(base, sep='/')
  out = {}
  for path, value in flat.items():
    name = einsum_name(path)
    if name is None:
      out[path] = value
      continue
    values, scale = _quantization_utils.uniform_quantize(
        value.astype(jnp.float32), bitwidth=bits,
        granularity=_quantization_utils.QuantizationGranularity.PER_CHANNEL, dtype=dtype,
        # All contracted axes (gemma's helper hands them to jnp.max): one scale per output.
        axis_to_reduce=_contracted_axes(name, transpose_gating))
    out[path] = QuantizedWeight(values, scale.astype(jnp.float32))
  return traverse_util.unflatten_dict(out, sep='/')


def abstract_quantized(abstract_base: Any, method: str, transpose_gating: bool) -> Any:
  """``ShapeDtypeStruct``s of ``quantize(base)`` (nothing computed)."""
  return jax.eval_shape(lambda b: quantize(b, method, transpose_gating), abstract_base)


def fold(params: Any, lora: LoraSpec, transpose_gating: bool, dtype: Any = None) -> Any:
  """The adapted model's tree (base + adapters) → a plain model's parameters, each adapted
  weight ``w + scale · a ⊗ b`` (a quantized one dequantized first), in ``dtype`` (default: the
  base weight's dtype, float32 for a quantized one)."""
  base, adapters = split(params)
  flat_adapters = traverse_util.flatten_dict(adapters, sep='/')
  out = {}
  for path, value in traverse_util.flatten_dict(base, sep='/').items():
    name = einsum_name(path)
    if isinstance(value, QuantizedWeight):
      value = value.dequantize(dtype or jnp.float32)
    elif dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
      value = value.astype(dtype)
    where = adapter_path(path) if name else None
    if where and where + '/a' in flat_adapters:
      delta = weight_delta(flat_adapters[where + '/a'], flat_adapters[where + '/b'], name,
                           transpose_gating)
      value = (value.astype(jnp.float32) + lora.scale * delta).astype(value.dtype)
    out[path] = value
  return traverse_util.unflatten_dict(out, sep='/')


def weight_delta(a: jax.Array, b: jax.Array, name: str, transpose_gating: bool) -> jax.Array:
  """``a ⊗ b`` over the rank, laid out like einsum ``name``'s weight (float32)."""
  letters, contracted = weight_letters(name, transpose_gating)
  a_letters = ''.join(c for c in letters if c in contracted) + 'r'
  b_letters = 'r' + ''.join(c for c in letters if c not in contracted)
  return jnp.einsum(f'{a_letters},{b_letters}->{letters}', a.astype(jnp.float32),
                    b.astype(jnp.float32))


def smallest_adapted_dimension(abstract_base: Any, lora_targets: tuple[str, ...],
                               transpose_gating: bool) -> int:
  """The smallest of the adapted weights' input and output sizes (a rank's upper bound)."""
  smallest = None
  for path, value in traverse_util.flatten_dict(abstract_base, sep='/').items():
    name = einsum_name(path)
    if name not in lora_targets:
      continue
    letters, contracted = weight_letters(name, transpose_gating)
    size = dict(zip(letters, value.shape))
    fan_in = int(np.prod([size[c] for c in contracted]))
    fan_out = int(np.prod([size[c] for c in letters if c not in contracted]))
    smallest = min(fan_in, fan_out, smallest or fan_in)
  if smallest is None:
    raise LoraError('--lora_targets adapt no weight of this model')
  return smallest


class _AdaptedEinsum(nn.Module):
  """Stands in for one of gemma's ``_layers.Einsum``: its (maybe quantized) weight, plus an
  adapter when ``rank`` > 0."""

  wrapped: nn.Module
  rank: int
  scale: float
  adapter_dtype: Any

  @nn.compact
  def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
    from gemma import peft  # pylint: disable=import-outside-toplevel

    if self.is_initializing():
      out = self.wrapped(eqn, x)
    else:
      weight = self.wrapped.variables['params'][self.wrapped.weight_name]
      out = _einsum(eqn, x, weight)
    if not self.rank:
      return out
    adapter = peft.LoRAEinsumAdapter(rank=self.rank, einsum_str=eqn, shape=self.wrapped.shape,
                                     dtype=self.adapter_dtype)
    nn.share_scope(self, adapter)
    return out + (self.scale * adapter(x.astype(self.adapter_dtype))).astype(out.dtype)


def _einsum(eqn: str, x: jax.Array, weight: Any) -> jax.Array:
  if not isinstance(weight, QuantizedWeight):
    return jnp.einsum(eqn, x, weight)
  # Dequantized where it is used; recomputed in the backward pass instead of kept.
  return jax.checkpoint(
      lambda x, w: jnp.einsum(eqn, x, w.dequantize(x.dtype)),
      policy=jax.checkpoint_policies.nothing_saveable)(x, weight)


def adapt(model: nn.Module, lora: LoraSpec | None, adapter_dtype: Any = jnp.float32
          ) -> AdaptedTransformer:
  """``model`` (a gemma ``Transformer``) with adapters ``lora`` on its einsums.

  gemma's ``Transformer.__call__`` is under ``nn.jit``, whose trace cache is keyed by the
  module's fields: an interceptor around it is not one of them, so two adaptations of equal
  models would share one trace (the first one's rank and scale). The wrapped copy carries the
  adaptation among its fields.
  """
  cls = _keyed_class(type(model))
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.init and f.name not in ('parent', 'name', 'adaptation')}
  return AdaptedTransformer(model=cls(**fields, adaptation=repr((lora, str(adapter_dtype)))),
                            lora=lora, adapter_dtype=adapter_dtype)


@functools.cache
def _keyed_class(cls: type) -> type:
  """``cls`` with one more field, ``adaptation``, that only tells traces apart."""

  class Keyed(cls):  # pylint: disable=missing-class-docstring
    adaptation: str = ''

  Keyed.__name__ = Keyed.__qualname__ = cls.__name__
  return Keyed


class AdaptedTransformer(nn.Module):
  """A gemma ``Transformer`` (``model``) whose einsums take adapters (``lora``) and may hold a
  quantized base; the parameters are the model's own plus the adapters (see module doc).
  Build it with ``adapt``."""

  model: nn.Module
  lora: LoraSpec | None
  adapter_dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    super().__post_init__()
    # The wrapped model's parameters at the top level, as gm.nn.LoRA does.
    if self.scope is not None:
      nn.share_scope(self, self.model)

  @nn.compact
  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    from gemma import peft  # pylint: disable=import-outside-toplevel
    from gemma.gm.nn import _layers  # pylint: disable=import-outside-toplevel

    def replace(module: nn.Module) -> nn.Module:
      if not isinstance(module, _layers.Einsum):
        return module
      name = module.name if module.weight_name == 'w' else module.weight_name
      adapted = self.lora is not None and name in self.lora.targets
      return _AdaptedEinsum(
          name='lora' if module.weight_name == 'w' else f'{module.weight_name}_lora',
          wrapped=module, rank=self.lora.rank if adapted else 0,
          scale=self.lora.scale if adapted else 0.0, adapter_dtype=self.adapter_dtype)

    with peft.ModuleInterceptor(replace):
      return self.model(*args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    # The wrapped model's config, cache helpers, … (what the sampler asks of a model).
    return getattr(self.model, name)


def fingerprint(base: Any) -> dict[str, list[float]]:
  """``{path: [sum, sum of squares]}`` of every array of ``base`` (float32, on the devices):
  what tells a resumed run that its base holds the weights it was trained on."""
  flat = traverse_util.flatten_dict(base, sep='/')

  def sums(tree: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.stack([jnp.sum(v.astype(jnp.float32)),
                          jnp.sum(jnp.square(v.astype(jnp.float32)))]) for k, v in tree.items()}

  out = jax.jit(sums)(flat)
  # Replicated results: every process reads its own copy (no cross-process fetch).
  return {k: [float(x) for x in np.asarray(v.addressable_data(0))] for k, v in out.items()}


def fingerprint_difference(saved: dict[str, list[float]],
                           current: dict[str, list[float]]) -> str | None:
  """The first parameter whose fingerprints differ (beyond float32 summation order), or
  None when they match."""
  for path in sorted(set(saved) | set(current)):
    if path not in saved or path not in current:
      return path
    if not np.allclose(saved[path], current[path], rtol=1e-5, atol=1e-6):
      return path
  return None

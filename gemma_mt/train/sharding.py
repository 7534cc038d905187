"""The device mesh, the partition rules of Gemma parameters, and how batches are laid out.

The rules are data: a parameter path pattern → one logical axis name per dimension, and each
logical axis → a mesh axis. FSDP shards the model dimension (``embed``) of every large parameter
over ``fsdp``; tensor parallelism shards heads, the MLP hidden dimension and the vocabulary over
``tensor``. A dimension that does not divide by its mesh axis stays replicated (and says so in the
log). Optimizer state follows the parameters (``optax.tree_map_params``); batches are split over
``data`` × ``fsdp``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental import mesh_utils
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gemma_mt.data.records import TrainingInput
from gemma_mt.models import lora
from gemma_mt.train.mesh_spec import MESH_AXES, MeshSpec

_LOG = logging.getLogger(__name__)

BATCH_AXES = ('data', 'fsdp')

Rules = tuple[tuple[str, tuple[str | None, ...]], ...]
# Parameter path (slash-joined, matched at the end of the path) → logical axis of each dimension.
PARAM_RULES: Rules = (
    (r'embedder/input_embedding', ('vocab', 'embed')),
    (r'attn/q_einsum/w', ('heads', 'embed', 'head_dim')),
    (r'attn/qkv_einsum/w', (None, 'heads', 'embed', 'head_dim')),
    (r'attn/kv_einsum/w', (None, 'kv_heads', 'embed', 'head_dim')),
    (r'attn/attn_vec_einsum/w', ('heads', 'head_dim', 'embed')),
    (r'mlp/gating_einsum', (None, 'embed', 'mlp')),
    (r'mlp/linear', ('mlp', 'embed')),
    (r'(norm|_norm)/scale', (None,)),
)
# Gemma 2 (9B, 27B) and Gemma 3 store the gating einsum transposed: [2, hidden, embed].
TRANSPOSED_GATING_RULE = (r'mlp/gating_einsum', (None, 'mlp', 'embed'))


def rules_for(transformer_config: Any) -> Rules:
  """PARAM_RULES for a ``gm.nn.config.TransformerConfig`` (its gating einsum's layout)."""
  if not getattr(transformer_config, 'transpose_gating_einsum', False):
    return PARAM_RULES
  return tuple(TRANSPOSED_GATING_RULE if pattern == TRANSPOSED_GATING_RULE[0] else (pattern, axes)
               for pattern, axes in PARAM_RULES)
# Logical axis → mesh axis (None: replicated).
LOGICAL_TO_MESH: dict[str, str | None] = {
    'vocab': 'tensor',
    'embed': 'fsdp',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'mlp': 'tensor',
    'head_dim': None,
}


def make_mesh(spec: MeshSpec = MeshSpec(), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with the axes ``data``, ``fsdp``, ``tensor`` over ``devices`` (default: all).

  Over all devices of several processes (hosts), ``data`` is split across the hosts first
  (a hybrid mesh: only the gradient reduction crosses the slower network); ``fsdp`` and
  ``tensor`` stay within a host when the sizes allow it.
  """
  all_devices = devices is None or len(devices) == len(jax.devices())
  devices = list(jax.devices() if devices is None else devices)
  sizes = spec.resolve(len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  hosts = jax.process_count()
  if all_devices and hosts > 1 and sizes['data'] % hosts == 0:
    per_host = (sizes['data'] // hosts, sizes['fsdp'], sizes['tensor'])
    device_array = mesh_utils.create_hybrid_device_mesh(
        per_host, (hosts, 1, 1), devices=devices, process_is_granule=True)
    return Mesh(device_array, MESH_AXES)
  if all_devices:
    # Orders devices so that `tensor` neighbours are close on the interconnect.
    # Auto axes: the compiler places intermediate values (jax.make_mesh's default is Explicit).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over ``data`` × ``fsdp``, the sequence dimension whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many pieces ``batch_sharding`` cuts the rows of a batch into."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def path_name(path: Sequence[Any]) -> str:
  """``'layer_0/attn/q_einsum/w'`` from a pytree key path (dict keys, attributes, indices)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def logical_axes(path_name: str, ndim: int,
                 rules: Rules = PARAM_RULES) -> tuple[str | None, ...]:
  """The logical axes of a parameter from ``rules``; unknown parameters are replicated.

  A quantized weight's integers and scales (``…/w/values``, ``…/w/scale``) take the weight's
  rule. A LoRA adapter takes its weight's axes by dimension: ``a`` those of the contracted
  dimensions, ``b`` those of the others, the rank replicated.
  """
  if path_name.endswith(('/values', '/scale')) and lora.einsum_name(path_name.rsplit('/', 1)[0]):
    path_name = path_name.rsplit('/', 1)[0]
  if lora.is_adapter(path_name):
    return _adapter_axes(path_name, ndim, rules)
  for pattern, axes in rules:
    if re.search(pattern + '$', path_name) and len(axes) == ndim:
      return axes
  return (None,) * ndim


def _adapter_axes(path_name: str, ndim: int, rules: Rules) -> tuple[str | None, ...]:
  head, part = path_name.rsplit('/', 1)  # …/q_einsum/lora, a | …/mlp/linear_lora, b
  weight = head[:-len('_lora')] if head.endswith('_lora') else head.rsplit('/', 1)[0] + '/w'
  name = lora.einsum_name(weight)
  if name is None or part not in ('a', 'b'):
    return (None,) * ndim
  transposed = any(p == TRANSPOSED_GATING_RULE[0] and a == TRANSPOSED_GATING_RULE[1]
                   for p, a in rules)
  letters, contracted = lora.weight_letters(name, transposed)
  by_letter = dict(zip(letters, logical_axes(weight, len(letters), rules)))
  if part == 'a':
    axes = tuple(by_letter[c] for c in letters if c in contracted) + (None,)
  else:
    axes = (None,) + tuple(by_letter[c] for c in letters if c not in contracted)
  return axes if len(axes) == ndim else (None,) * ndim


def param_partition_spec(path_name: str, shape: Sequence[int], mesh: Mesh,
                         rules: Rules = PARAM_RULES) -> PartitionSpec:
  """The PartitionSpec of one parameter; dimensions that do not divide stay replicated."""
  spec = []
  for dim, axis in zip(shape, logical_axes(path_name, len(shape), rules)):
    mesh_axis = LOGICAL_TO_MESH.get(axis) if axis else None
    if dim == 1 and path_name.endswith('/scale'):  # a quantized weight's, contracted dimension
      mesh_axis = None
    if mesh_axis is not None and mesh.shape[mesh_axis] > 1 and dim % mesh.shape[mesh_axis]:
      _LOG.info('%s: dimension %s of size %d does not divide over %s=%d; replicated',
                path_name, axis, dim, mesh_axis, mesh.shape[mesh_axis])
      mesh_axis = None
    spec.append(mesh_axis if mesh_axis is not None and mesh.shape[mesh_axis] > 1 else None)
  return PartitionSpec(*spec)


def param_shardings(mesh: Mesh, abstract_params: Any, rules: Rules = PARAM_RULES) -> Any:
  """A NamedSharding for every parameter, from the partition rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(
          mesh, param_partition_spec(path_name(path), x.shape, mesh, rules)),
      abstract_params)


def state_shardings(mesh: Mesh, abstract_state: Any, optimizer: optax.GradientTransformation,
                    rules: Rules = PARAM_RULES) -> Any:
  """Shardings of a train state (``step``, ``params``, ``opt_state``).

  Parameters follow the rules. In the optimizer state, ``optax.tree_map_params`` finds the
  copies of the parameter tree: a leaf with its parameter's shape (Adam's moments) is sharded
  like it; others (Adafactor's factored rows, step counts) are replicated.
  """
  params = param_shardings(mesh, abstract_state.params, rules)

  def like_param(leaf: Any, param: Any, param_sharding: NamedSharding) -> NamedSharding:
    return param_sharding if leaf.shape == param.shape else replicated(mesh)

  opt_state = optax.tree_map_params(
      optimizer, like_param, abstract_state.opt_state, abstract_state.params, params,
      transform_non_params=lambda _: replicated(mesh))
  return abstract_state.replace(step=replicated(mesh), params=params, opt_state=opt_state)


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """``jax.ShapeDtypeStruct``s of ``abstract_tree`` laid out by ``shardings`` (for restoring)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
  """Bytes of the largest per-device shard set of a tree laid out by ``shardings``."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard_shape = sharding.shard_shape(leaf.shape)
    # Bits, not bytes: int4 (a quantized base) packs two to a byte.
    total += math.prod(shard_shape) * jax.dtypes.itemsize_bits(leaf.dtype) // 8
  return total


def describe_param_shardings(abstract_params: Any, shardings: Any,
                             min_size: int = 1 << 16) -> list[str]:
  """One line per large parameter: its path, shape and PartitionSpec."""
  lines = []
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
    if math.prod(leaf.shape) >= min_size:
      lines.append(f'{path_name(path)} {tuple(leaf.shape)} → {tuple(sharding.spec)}')
  return lines


def global_batch(local: TrainingInput, mesh: Mesh) -> TrainingInput:
  """This process's rows → global ``jax.Array``s laid out by ``batch_sharding``."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)

"""The Hugging Face layout of Gemma 1/2/3 weights: one table of rows, used in both directions.

A row names one of our parameters (``layer_3/attn/q_einsum/w``), the Hugging Face tensors it is
made of (``model.layers.3.self_attn.q_proj.weight``) and the two transforms between them, so that
an export is the exact inverse of an import. Hugging Face stores each projection as a matrix
``[out, in]``; the gemma library stores it per head (``q_einsum/w [heads, embed, head_dim]``).
Both store RMSNorm weights as ``w`` with the norm scaling by ``1 + w``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from gemma_mt import errors
from gemma_mt.models.registry import Architecture, ModelSpec

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
# Hugging Face model_type → our family.
MODEL_TYPES = {'gemma': 'gemma', 'gemma2': 'gemma2', 'gemma3_text': 'gemma3', 'gemma3': 'gemma3'}


class LayoutError(errors.UserError):
  """Weights that do not fit the model: the message names the parameter and both shapes."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One of our parameters and the Hugging Face tensors it is made of."""

  ours: str
  theirs: tuple[str, ...]
  to_ours: Callable[[Sequence[np.ndarray]], np.ndarray]
  to_theirs: Callable[[np.ndarray], Sequence[np.ndarray]]


def _same(names: str | tuple[str, ...], ours: str) -> Row:
  return Row(ours, (names,), lambda t: t[0], lambda x: [x])


def layout_rows(config: Any) -> list[Row]:
  """Every row of a model with ``gm.nn.config.TransformerConfig`` ``config``, in order."""
  d, h, k, hd = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
  gemma1 = not config.use_post_attn_norm

  def split_heads(m: np.ndarray, n: int) -> np.ndarray:  # [n·hd, D] → [n, D, hd]
    return m.reshape(n, hd, d).transpose(0, 2, 1)

  def join_heads(x: np.ndarray) -> np.ndarray:  # [n, D, hd] → [n·hd, D]
    return x.transpose(0, 2, 1).reshape(-1, d)

  rows = [_same('model.embed_tokens.weight', 'embedder/input_embedding'),
          _same('model.norm.weight', 'final_norm/scale')]
  for i in range(config.num_layers):
    p, a, m = f'model.layers.{i}.', f'layer_{i}/attn/', f'layer_{i}/mlp/'
    rows.append(_same(p + 'input_layernorm.weight', f'layer_{i}/pre_attention_norm/scale'))
    if gemma1:
      rows.append(_same(p + 'post_attention_layernorm.weight', f'layer_{i}/pre_ffw_norm/scale'))
    else:
      rows += [
          _same(p + 'post_attention_layernorm.weight', f'layer_{i}/post_attention_norm/scale'),
          _same(p + 'pre_feedforward_layernorm.weight', f'layer_{i}/pre_ffw_norm/scale'),
          _same(p + 'post_feedforward_layernorm.weight', f'layer_{i}/post_ffw_norm/scale'),
      ]
    if config.use_qk_norm:
      rows += [_same(p + 'self_attn.q_norm.weight', a + '_query_norm/scale'),
               _same(p + 'self_attn.k_norm.weight', a + '_key_norm/scale')]
    q, kk, v = (p + f'self_attn.{n}_proj.weight' for n in 'qkv')
    if k == h:  # multi-head attention: one qkv_einsum [3, H, D, hd]
      rows.append(Row(a + 'qkv_einsum/w', (q, kk, v),
                      lambda t: np.stack([split_heads(x, h) for x in t]),
                      lambda x: [join_heads(y) for y in x]))
    else:
      rows.append(Row(a + 'q_einsum/w', (q,), lambda t: split_heads(t[0], h),
                      lambda x: [join_heads(x)]))
      rows.append(Row(a + 'kv_einsum/w', (kk, v),
                      lambda t: np.stack([split_heads(x, k) for x in t]),
                      lambda x: [join_heads(y) for y in x]))
    # o_proj [D, H·hd] ↔ attn_vec_einsum [H, hd, D]
    rows.append(Row(a + 'attn_vec_einsum/w', (p + 'self_attn.o_proj.weight',),
                    lambda t: t[0].T.reshape(h, hd, d), lambda x: [x.reshape(h * hd, d).T]))
    gate, up = p + 'mlp.gate_proj.weight', p + 'mlp.up_proj.weight'
    if config.transpose_gating_einsum:  # [2, F, D]: the Hugging Face matrices as they are
      rows.append(Row(m + 'gating_einsum', (gate, up), np.stack, list))
    else:  # [2, D, F]
      rows.append(Row(m + 'gating_einsum', (gate, up), lambda t: np.stack([x.T for x in t]),
                      lambda x: [y.T for y in x]))
    rows.append(Row(m + 'linear', (p + 'mlp.down_proj.weight',), lambda t: t[0].T,
                    lambda x: [x.T]))
  return rows


def flat_params(params: Any) -> dict[str, Any]:
  """``{'layer_0/attn/q_einsum/w': array}`` of a nested parameter dict."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  return traverse_util.flatten_dict(params, sep='/')


def nest_params(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of ``flat_params``."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  return traverse_util.unflatten_dict(flat, sep='/')


def convert_into(rows: Sequence[Row], read: Callable[[str], np.ndarray], abstract: Any,
                 source: str) -> Any:
  """Our parameters built row by row from ``read(theirs_name)``, laid out like ``abstract``.

  ``abstract`` holds ``jax.ShapeDtypeStruct``s with shardings: each tensor is converted on the
  host (one at a time) and each device receives only its own shard, in the wanted dtype.
  """
  import jax  # pylint: disable=import-outside-toplevel

  wanted = flat_params(abstract)
  by_name = {row.ours: row for row in rows}
  missing = sorted(set(wanted) - set(by_name))
  if missing:
    raise LayoutError(f'{source}: no source tensor for parameter {missing[0]}')
  out = {}
  for name, target in wanted.items():
    host = by_name[name].to_ours([read(t) for t in by_name[name].theirs])
    if tuple(host.shape) != tuple(target.shape):
      raise LayoutError(f'{source}: parameter {name} has shape {tuple(host.shape)} in the '
                        f'checkpoint and {tuple(target.shape)} in the model: pass the --model '
                        'these weights are for')
    host = np.asarray(host).astype(target.dtype)
    out[name] = jax.make_array_from_callback(host.shape, target.sharding,
                                             lambda index, host=host: host[index])
  return nest_params(out)


def hf_tensors(params: Any, config: Any) -> Iterator[tuple[str, np.ndarray]]:
  """``(hugging_face_name, array)`` of every tensor of ``params`` (host copies)."""
  import jax  # pylint: disable=import-outside-toplevel

  flat = flat_params(params)
  for row in layout_rows(config):
    value = np.asarray(jax.device_get(flat[row.ours]))
    yield from zip(row.theirs, row.to_theirs(value))


# --- PEFT LoRA adapters -------------------------------------------------------------------------

PEFT_WEIGHTS_FILE = 'adapter_model.safetensors'
PEFT_CONFIG_FILE = 'adapter_config.json'
# Our einsum → the Hugging Face modules it is made of (several: a stacked weight, its adapter's
# ``a`` shared by them and ``b`` split along the stack).
PEFT_MODULES = {
    'q_einsum': ('self_attn.q_proj',),
    'kv_einsum': ('self_attn.k_proj', 'self_attn.v_proj'),
    'qkv_einsum': ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'),
    'attn_vec_einsum': ('self_attn.o_proj',),
    'gating_einsum': ('mlp.gate_proj', 'mlp.up_proj'),
    'linear': ('mlp.down_proj',),
}


def peft_tensors(adapters: Any) -> Iterator[tuple[str, np.ndarray]]:
  """``(name, array)`` of PEFT's LoRA tensors for our adapters (``lora.split``'s second tree):
  ``lora_A [rank, in]`` and ``lora_B [out, rank]`` of each Hugging Face projection, so that
  ``lora_B @ lora_A`` is our ``a ⊗ b`` in the projection's ``[out, in]`` layout."""
  import jax  # pylint: disable=import-outside-toplevel

  flat = flat_params(adapters)
  for path in sorted(p for p in flat if p.endswith('/a')):
    where = path[:-len('/a')]
    layer = int(where.split('/')[0][len('layer_'):])
    name = where.split('/')[-2] if where.endswith('/lora') else where.split('/')[-1][:-len('_lora')]
    a = np.asarray(jax.device_get(flat[path]), dtype=np.float32)
    b = np.asarray(jax.device_get(flat[where + '/b']), dtype=np.float32)
    rank = a.shape[-1]
    modules = PEFT_MODULES[name]
    lora_a = a.reshape(-1, rank).T
    parts = [b] if len(modules) == 1 else [b[:, i] for i in range(len(modules))]
    for module, part in zip(modules, parts):
      prefix = f'base_model.model.model.layers.{layer}.{module}'
      yield f'{prefix}.lora_A.weight', lora_a
      yield f'{prefix}.lora_B.weight', part.reshape(rank, -1).T


def peft_config(rank: int, alpha: float, tensor_names: Sequence[str],
                base: str) -> dict[str, Any]:
  """PEFT's ``adapter_config.json`` of the adapters ``peft_tensors`` named ``tensor_names``."""
  modules = sorted({n.split('.')[-3] for n in tensor_names})
  return {
      'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': rank, 'lora_alpha': alpha,
      'lora_dropout': 0.0, 'target_modules': modules, 'bias': 'none', 'fan_in_fan_out': False,
      'use_rslora': False, 'use_dora': False, 'init_lora_weights': True,
      'inference_mode': True, 'modules_to_save': None, 'base_model_name_or_path': base,
  }


# --- config.json -------------------------------------------------------------------------------


def hf_config(spec: ModelSpec, torch_dtype: str) -> dict[str, Any]:
  """The ``config.json`` that ``transformers`` reads for ``spec`` (Gemma 1/2/3 text models)."""
  c = spec.transformer_config()
  layer_types = ['sliding_attention' if t.name == 'LOCAL_SLIDING' else 'full_attention'
                 for t in c.attention_types]
  values: dict[str, Any] = {
      'vocab_size': c.num_embed, 'hidden_size': c.embed_dim, 'intermediate_size': c.hidden_dim,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.num_kv_heads, 'head_dim': c.head_dim,
      'hidden_activation': 'gelu_pytorch_tanh', 'max_position_embeddings': spec.context_length,
      'rms_norm_eps': 1e-6, 'pad_token_id': 0, 'eos_token_id': 1, 'bos_token_id': 2,
      'tie_word_embeddings': True, 'torch_dtype': torch_dtype, 'dtype': torch_dtype,
      'attention_bias': False, 'attention_dropout': 0.0,
  }
  if spec.family in ('gemma', 'demo'):  # the demo models are Gemma 1 blocks
    values.update(architectures=['GemmaForCausalLM'], model_type='gemma', rope_theta=10000.0)
    return values
  # gemma multiplies queries by a scalar s; Hugging Face by query_pre_attn_scalar ** -0.5.
  values.update(query_pre_attn_scalar=round(c.query_pre_attn_scalar() ** -2),
                sliding_window=c.sliding_window_size, layer_types=layer_types,
                final_logit_softcapping=c.final_logit_softcap,
                attn_logit_softcapping=c.attn_logits_soft_cap)
  if spec.family == 'gemma2':
    values.update(architectures=['Gemma2ForCausalLM'], model_type='gemma2', rope_theta=10000.0)
    return values
  global_rope: dict[str, Any] = {'rope_type': 'default', 'rope_theta': float(
      c.global_base_frequency)}
  if c.global_scale_factor != 1.0:
    global_rope = {'rope_type': 'linear', 'factor': c.global_scale_factor,
                   'rope_theta': float(c.global_base_frequency)}
  values.update(architectures=['Gemma3ForCausalLM'], model_type='gemma3_text',
                rope_parameters={'full_attention': global_rope, 'sliding_attention': {
                    'rope_type': 'default', 'rope_theta': float(c.local_base_frequency)}},
                use_bidirectional_attention=False)
  return values


def architecture_of_config(values: dict[str, Any], path: str) -> Architecture:
  """The architecture a Hugging Face ``config.json`` describes."""
  if values.get('model_type') == 'gemma3' and 'text_config' in values:
    values = {'model_type': 'gemma3_text', **values['text_config']}
  family = MODEL_TYPES.get(values.get('model_type', ''))
  if family is None:
    raise LayoutError(f'{path}: model_type {values.get("model_type")!r} is not a Gemma text model '
                      f'({", ".join(MODEL_TYPES)})')
  try:
    return Architecture(
        family, values['vocab_size'], values['hidden_size'], values['intermediate_size'],
        values['num_attention_heads'], values['head_dim'], values['num_key_value_heads'],
        values['num_hidden_layers'])
  except KeyError as e:
    raise LayoutError(f'{path} has no {e.args[0]!r}: not a Gemma config.json') from None


def read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise LayoutError(f'{path} cannot be read as JSON ({e})') from None


# --- safetensors files -------------------------------------------------------------------------


class SafetensorsReader:
  """Tensors of a Hugging Face directory by name, read lazily (single file or sharded)."""

  def __init__(self, directory: str):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
      with open(index, encoding='utf-8') as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
    else:
      files = sorted(n for n in os.listdir(directory) if n.endswith('.safetensors'))
    if not files:
      raise LayoutError(f'{directory} holds no *.safetensors file')
    self._files = [safe_open(os.path.join(directory, n), framework='np') for n in files]
    self._where = {}
    for handle in self._files:
      for key in handle.keys():
        # Gemma 3 multimodal checkpoints nest the text model under language_model.
        self._where[key.replace('language_model.', '')] = (handle, key)

  def __call__(self, name: str) -> np.ndarray:
    try:
      handle, key = self._where[name]
    except KeyError:
      raise LayoutError(f'{self.directory} has no tensor {name}') from None
    return handle.get_tensor(key)


def write_safetensors(directory: str, tensors: Iterator[tuple[str, np.ndarray]],
                      dtype: Any, max_shard_bytes: int = 4 << 30) -> list[str]:
  """Writes ``tensors`` in ``dtype`` as ``model.safetensors`` (or shards with an index)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors:
    value = np.ascontiguousarray(value.astype(dtype))
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  if len(shards) == 1:
    names = [WEIGHTS_FILE]
  else:
    names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
    weight_map = {t: n for n, shard in zip(names, shards) for t in shard}
    with open(os.path.join(directory, INDEX_FILE), 'w', encoding='utf-8') as f:
      json.dump({'metadata': {}, 'weight_map': weight_map}, f, indent=2)
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(directory, name), metadata={'format': 'pt'})
  return names

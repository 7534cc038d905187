"""``--ckpt=SOURCE``: where a released model's weights and tokenizer come from, and loading them.

Sources:
  * ``kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION`` — Kaggle's Flax release through
    ``kagglehub.model_download`` (a copy in ``KAGGLEHUB_CACHE`` is used without network);
  * a directory in the gemma library's or Kaggle's Orbax layout (Gemma 1's flat layout too),
    with ``tokenizer.model`` in it or beside it;
  * a Hugging Face directory (``config.json``, ``*.safetensors``, ``tokenizer.model``);
  * ``gguf:PATH`` or ``gguf:gemma3-270m`` — a GGUF file, dequantized, its tokenizer rebuilt.

Which model the weights are is read from the source where it says (Kaggle's variation, Hugging
Face's ``config.json``, GGUF metadata, the shapes in an Orbax checkpoint); an explicit ``--model``
of another architecture is an error. Weights are read one tensor at a time on the host and each
device receives only its shards of the mesh.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from gemma_mt import errors
from gemma_mt.models import gguf
from gemma_mt.models import hf
from gemma_mt.models import registry
from gemma_mt.models.registry import Architecture, ModelSpec

KINDS = ('kaggle', 'orbax', 'hf', 'gguf')
TOKENIZER_FILE = 'tokenizer.model'
_KAGGLE_HANDLE = re.compile(r'^[\w.-]+/[\w.-]+/[\w.-]+/[\w.-]+(/\d+)?$')


class SourceError(errors.UserError):
  """A ``--ckpt``, ``--model`` or ``--tokenizer`` that cannot serve; the message says why."""


@dataclasses.dataclass(frozen=True)
class CheckpointSource:
  """A parsed ``--ckpt``: its kind and where it points (a handle or a path)."""

  kind: str
  location: str

  @classmethod
  def parse(cls, text: str) -> CheckpointSource:
    if text.startswith('kaggle:'):
      handle = text[len('kaggle:'):]
      if not _KAGGLE_HANDLE.match(handle):
        raise SourceError(f'--ckpt={text}: a Kaggle handle is OWNER/MODEL/FRAMEWORK/VARIATION/'
                          'VERSION, e.g. kaggle:google/gemma/flax/2b-it/2')
      return cls('kaggle', handle)
    if text.startswith('gguf:'):
      return cls('gguf', text[len('gguf:'):])
    for kind in ('hf', 'orbax'):
      if text.startswith(kind + ':'):
        return cls(kind, os.path.abspath(text[len(kind) + 1:]))
    path = os.path.abspath(text)
    if not os.path.isdir(path):
      raise SourceError(f'--ckpt={text} is not a directory, and not kaggle:HANDLE or gguf:PATH')
    kind = 'hf' if os.path.isfile(os.path.join(path, hf.CONFIG_FILE)) else 'orbax'
    return cls(kind, path)

  def __str__(self) -> str:
    return f'{self.kind}:{self.location}'


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
  """A source found on disk: the model it holds and its tokenizer.

  Attributes:
    source: the parsed ``--ckpt``.
    path: the local file (GGUF) or directory (Orbax checkpoint, Hugging Face directory).
    spec: the model the weights are (``--model`` if given and compatible).
    tokenizer_path: the sentencepiece model (``--tokenizer`` if given).
  """

  source: CheckpointSource
  path: str
  spec: ModelSpec
  tokenizer_path: str
  # The parsed GGUF file (parsing its 262,144-piece vocabulary takes seconds): read once.
  gguf_file: gguf.GGUFFile | None = dataclasses.field(default=None, compare=False, repr=False)

  def load_params(self, abstract_params: Any) -> Any:
    """The weights, laid out and typed like ``abstract_params`` (``ShapeDtypeStruct``s with
    shardings), each device holding only its shards."""
    if self.source.kind == 'gguf':
      rows = hf.layout_rows(self.spec.transformer_config())
      return hf.convert_into(rows, self.gguf_file or gguf.GGUFFile(self.path), abstract_params,
                             self.path)
    if self.source.kind == 'hf':
      rows = hf.layout_rows(self.spec.transformer_config())
      return hf.convert_into(rows, hf.SafetensorsReader(self.path), abstract_params, self.path)
    return _load_orbax(self.path, abstract_params)


def resolve(ckpt: str, model: str = '', tokenizer: str = '') -> ResolvedSource:
  """Finds ``ckpt`` on disk (downloading a Kaggle handle if needed) and the model it holds."""
  source = CheckpointSource.parse(ckpt)
  file = None
  if source.kind == 'kaggle':
    path, found = _kaggle(source.location)
    found_tokenizer = _tokenizer_near(path)
  elif source.kind == 'gguf':
    path = gguf.resolve_path(source.location)
    file = gguf.GGUFFile(path)
    found = _spec_of(file.architecture(), file.instruction_tuned, str(source))
    found_tokenizer = gguf.tokenizer_path(file)
  elif source.kind == 'hf':
    path = source.location
    found = _spec_of(hf.architecture_of_config(hf.read_config(path), path), False, str(source))
    found_tokenizer = _tokenizer_near(path)
  else:
    path = _orbax_item(source.location)
    found = _spec_of(_architecture_of_shapes(_orbax_nested_shapes(path), path), False,
                     str(source)) if not model else None
    found_tokenizer = _tokenizer_near(source.location)
  spec = _check_model(model, found, ckpt)
  tokenizer_path = os.path.abspath(tokenizer) if tokenizer else found_tokenizer
  if not tokenizer_path:
    raise SourceError(f'--ckpt={ckpt} has no {TOKENIZER_FILE} in it or beside it: pass '
                      '--tokenizer=PATH')
  check_tokenizer(tokenizer_path, spec, '--tokenizer' if tokenizer else f'--ckpt={ckpt}')
  return ResolvedSource(source, path, spec, tokenizer_path, file)


def check_tokenizer(path: str, spec: ModelSpec, origin: str) -> None:
  """Raises SourceError if ``path`` is no sentencepiece model of ``spec``'s vocabulary."""
  from gemma_mt.data.tokenizer import GemmaTokenizer  # pylint: disable=import-outside-toplevel

  size = GemmaTokenizer(path).vocab_size
  rows = spec.architecture.num_embed
  # Gemma 1/2 embeddings have 128 rows more than the tokenizer's 256,000 pieces (padding).
  if not rows - 256 <= size <= rows:
    raise SourceError(f'tokenizer {path} (from {origin}) has {size} pieces but {spec.name} has '
                      f'{rows} embedding rows: pass the tokenizer of this model')


def _check_model(model: str, found: ModelSpec | None, ckpt: str) -> ModelSpec:
  if not model:
    if found is None:
      raise SourceError(f'--ckpt={ckpt}: pass --model (one of {", ".join(registry.MODELS)})')
    return found
  if model not in registry.MODELS:
    raise SourceError(f'--model={model!r} is unknown: use one of {", ".join(registry.MODELS)}')
  spec = registry.MODELS[model]
  if found is not None and spec.architecture != found.architecture:
    raise SourceError(f'--model={model} ({spec.architecture.describe()}) disagrees with '
                      f'--ckpt={ckpt}, which holds {found.name} ({found.architecture.describe()})')
  return spec


def _spec_of(architecture: Architecture, instruction_tuned: bool, origin: str) -> ModelSpec:
  specs = registry.specs_of_architecture(architecture)
  if not specs:
    raise SourceError(f'{origin} holds a model no --model has ({architecture.describe()})')
  tuned = [s for s in specs if s.instruction_tuned == instruction_tuned]
  return (tuned or specs)[0]


def _tokenizer_near(path: str) -> str:
  for folder in (path, os.path.dirname(path.rstrip('/'))):
    candidate = os.path.join(folder, TOKENIZER_FILE)
    if os.path.isfile(candidate):
      return candidate
  return ''


def _kaggle(handle: str) -> tuple[str, ModelSpec | None]:
  """The local Orbax checkpoint of a Kaggle handle, and the model its variation names."""
  import kagglehub  # pylint: disable=import-outside-toplevel

  try:
    directory = kagglehub.model_download(handle)
  except Exception as e:  # pylint: disable=broad-except
    # kagglehub raises requests' and its own errors; all mean the same to the user.
    if handle.count('/') == 3:
      raise SourceError(f'--ckpt=kaggle:{handle} has no version and Kaggle cannot be asked '
                        f'({type(e).__name__}): pin it (kaggle:{handle}/VERSION) or pre-download '
                        'it into KAGGLEHUB_CACHE') from None
    raise SourceError(f'--ckpt=kaggle:{handle} could not be downloaded ({type(e).__name__}: '
                      f'{str(e).splitlines()[0][:200] if str(e) else ""}): check the handle and '
                      'your Kaggle credentials, or pre-download it into KAGGLEHUB_CACHE') from None
  unversioned = '/'.join(handle.split('/')[:4])
  found = next((s for s in registry.MODELS.values() if s.kaggle_handle == unversioned), None)
  return _orbax_item(directory), found


def _orbax_item(directory: str) -> str:
  """The Orbax checkpoint in ``directory`` or in one of its sub-directories (Kaggle's layout)."""
  markers = ('_METADATA', '_CHECKPOINT_METADATA', 'checkpoint', 'manifest.ocdbt')

  def is_checkpoint(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, m)) for m in markers)

  if not os.path.isdir(directory):
    raise SourceError(f'--ckpt={directory} is not a directory')
  if is_checkpoint(directory):
    return directory
  for name in sorted(os.listdir(directory)):
    if is_checkpoint(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise SourceError(f'--ckpt={directory} holds no Orbax checkpoint (nor does any folder in it) '
                    'and no config.json: pass a Kaggle/gemma checkpoint or a Hugging Face folder')


def _orbax_nested_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """``{'layer_0/attn/q_einsum/w': shape}`` of a checkpoint in any of the gemma library's layouts
  (flat Gemma 1, nested, stacked), as ``gm.ckpts.load_params`` would restore it."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  # The gemma library's own layout detection; it has no public API for shapes alone.
  from gemma.gm.ckpts import _checkpoint  # pylint: disable=import-outside-toplevel

  try:
    metadata, _ = _checkpoint._get_metadata_and_path(ocp.StandardCheckpointer(), path)  # pylint: disable=protected-access
  except (ValueError, OSError, FileNotFoundError) as e:
    raise SourceError(f'--ckpt={path}: not a readable Orbax checkpoint ({e})') from None
  tree = _checkpoint._CheckpointTree.shape_dtype_struct_like(metadata)  # pylint: disable=protected-access
  tree = tree.as_nested(remove_mm=tree.has_mm_params)  # text only
  return {name: tuple(x.shape) for name, x in hf.flat_params(tree.tree).items()}


def _architecture_of_shapes(shapes: dict[str, tuple[int, ...]], path: str) -> Architecture:
  try:
    num_embed, embed_dim = shapes['embedder/input_embedding']
    hidden_dim = shapes['layer_0/mlp/linear'][0]
    if 'layer_0/attn/qkv_einsum/w' in shapes:
      _, num_heads, _, head_dim = shapes['layer_0/attn/qkv_einsum/w']
      num_kv_heads = num_heads
    else:
      num_heads, _, head_dim = shapes['layer_0/attn/q_einsum/w']
      num_kv_heads = shapes['layer_0/attn/kv_einsum/w'][1]
  except (KeyError, ValueError):
    raise SourceError(f'--ckpt={path}: not a Gemma checkpoint (no embedder/layer_0 parameters)'
                      ) from None
  num_layers = len({name.split('/')[0] for name in shapes if name.startswith('layer_')})
  family = ('gemma3' if 'layer_0/attn/_query_norm/scale' in shapes else
            'gemma2' if 'layer_0/post_attention_norm/scale' in shapes else 'gemma')
  return Architecture(family, num_embed, embed_dim, hidden_dim, num_heads, head_dim, num_kv_heads,
                      num_layers)


def _load_orbax(path: str, abstract_params: Any) -> Any:
  from gemma import gm  # pylint: disable=import-outside-toplevel

  shapes = _orbax_nested_shapes(path)
  for name, target in hf.flat_params(abstract_params).items():
    if name not in shapes:
      raise hf.LayoutError(f'{path}: the checkpoint has no parameter {name}')
    if shapes[name] != tuple(target.shape):
      raise hf.LayoutError(f'{path}: parameter {name} has shape {shapes[name]} in the checkpoint '
                           f'and {tuple(target.shape)} in the model: pass the --model these '
                           'weights are for')
  return gm.ckpts.load_params(path, params=abstract_params, donate=False, text_only=True)


@dataclasses.dataclass(frozen=True)
class RunModel:
  """The model of a run: its spec, its tokenizer and, for a released model, its weights' source."""

  spec: ModelSpec
  tokenizer_path: str
  source: ResolvedSource | None


def model_name(model: str, ckpt: str) -> str:
  """``--model``, or the embedded default (``tiny``) when neither it nor ``--ckpt`` names one
  (``''`` with ``--ckpt``: the checkpoint names it)."""
  return model or ('' if ckpt else registry.DEFAULT_MODEL)


def resolve_run_model(model: str, ckpt: str = '', tokenizer: str = '', *,
                      need_weights: bool = True) -> RunModel:
  """``--model`` / ``--ckpt`` / ``--tokenizer`` → the model of a run.

  Without ``--ckpt`` the model starts from random parameters, which only the demo models do
  (``need_weights=False`` allows a released architecture too: a memory plan reads no weight).
  """
  if ckpt:
    resolved = resolve(ckpt, model, tokenizer)
    return RunModel(resolved.spec, resolved.tokenizer_path, resolved)
  if model not in registry.MODELS:
    raise SourceError(f'--model={model!r} is unknown: use one of {", ".join(registry.MODELS)}')
  spec = registry.MODELS[model]
  if not spec.is_random_init and need_weights:
    raise SourceError(f'--model={model} is a released model: pass its weights with --ckpt '
                      f'(e.g. --ckpt=kaggle:{spec.kaggle_handle}/VERSION)')
  if tokenizer:  # the bundled tokenizers are the demo models' own
    check_tokenizer(os.path.abspath(tokenizer), spec, '--tokenizer')
  return RunModel(spec, os.path.abspath(tokenizer) if tokenizer else spec.tokenizer_path, None)

"""Model names → Gemma architectures (gemma library configs), their tokenizers and sources.

``tiny`` (the embedded default) and ``bench`` are small Gemma-architecture models over the bundled
demo tokenizer, initialised at random. The other names are released Gemma models: their
architecture comes from the gemma library's classes where it has one (``gm.nn.Gemma2_2B``,
``gm.nn.Gemma3_270M``, …) and from our own config for Gemma 1 (the library has no Gemma 1 class);
their weights and tokenizer come from ``--ckpt``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from gemma_mt.data import asset_paths

if TYPE_CHECKING:
  import jax
  from gemma.gm.nn import Transformer, TransformerConfig

DEMO_TOKENIZER = str(asset_paths.DEMO_TOKENIZER)
FAMILIES = ('demo', 'gemma', 'gemma2', 'gemma3')
# Which --ckpt kinds can hold each family's weights.
SOURCES_OF_FAMILY = {
    'demo': ('workdir',),
    'gemma': ('kaggle', 'orbax', 'hf', 'gguf'),
    'gemma2': ('kaggle', 'orbax', 'hf', 'gguf'),
    'gemma3': ('kaggle', 'orbax', 'hf', 'gguf'),
}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What fixes the shapes of a model's parameters (two names may share one)."""

  family: str
  num_embed: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  head_dim: int
  num_kv_heads: int
  num_layers: int

  def describe(self) -> str:
    return (f'{self.family}: {self.num_layers} layers, embed {self.embed_dim}, mlp '
            f'{self.hidden_dim}, {self.num_heads} heads × {self.head_dim} ({self.num_kv_heads} kv), '
            f'vocabulary {self.num_embed}')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A named model.

  Attributes:
    name: the ``--model`` value.
    family: ``demo``, ``gemma`` (Gemma 1), ``gemma2`` or ``gemma3``.
    config_name: the gemma library class whose config this is (``Gemma3_270M``), or ``''`` for
      a config of ours (``own_config``).
    own_config: keyword arguments of ``gm.nn.config.TransformerConfig`` when there is no class.
    context_length: the longest sequence the released model was trained for.
    instruction_tuned: an ``-it`` model (its prompts use Gemma's dialog turns).
    tokenizer_path: the bundled tokenizer (demo models); released models take theirs from
      ``--ckpt`` (or ``--tokenizer``).
    kaggle_handle: the released Flax weights on Kaggle, ``OWNER/MODEL/FRAMEWORK/VARIATION``.
  """

  name: str
  family: str
  config_name: str = ''
  own_config: tuple[tuple[str, Any], ...] = ()
  context_length: int = 8192
  instruction_tuned: bool = False
  tokenizer_path: str = ''
  kaggle_handle: str = ''

  @property
  def is_random_init(self) -> bool:
    """Demo models start from random parameters; released ones from ``--ckpt``."""
    return self.family == 'demo'

  def transformer_config(self) -> TransformerConfig:
    from gemma import gm  # pylint: disable=import-outside-toplevel

    if self.config_name:
      config = getattr(gm.nn, self.config_name).config
      # Text only: Gemma 3 4B's vision encoder is not part of a translation model.
      return dataclasses.replace(config, vision_encoder=None)
    values = dict(self.own_config)
    num_layers = values.pop('num_layers')
    return gm.nn.config.TransformerConfig(
        final_logit_softcap=None, use_post_attn_norm=False, use_post_ffw_norm=False,
        attention_types=(gm.nn.config.AttentionType.GLOBAL,) * num_layers, **values)

  @functools.cached_property
  def architecture(self) -> Architecture:
    c = self.transformer_config()
    return Architecture(self.family, c.num_embed, c.embed_dim, c.hidden_dim, c.num_heads,
                        c.head_dim, c.num_kv_heads, c.num_layers)

  def transformer(self, param_dtype: Any, remat: str = 'none') -> Transformer:
    """The flax module; ``param_dtype`` is the dtype its parameters are created in.

    ``remat='block'`` recomputes each block's activations in the backward pass instead of
    keeping them (less memory, about one more forward pass of compute); same parameters.
    """
    from gemma import gm  # pylint: disable=import-outside-toplevel

    if remat not in REMAT_POLICIES:
      raise ValueError(f'remat={remat!r}: use one of {REMAT_POLICIES}')
    cls = _block_remat_transformer() if remat == 'block' else gm.nn.Transformer
    return cls(config=self.transformer_config(), dtype=param_dtype)


REMAT_POLICIES = ('none', 'block')


def _call_block(block: Any, x: Any, positions: Any, cache: Any, attention_mask: Any) -> Any:
  return block(x, positions, cache, attention_mask)


@functools.cache
def _block_remat_transformer() -> type:
  """``gm.nn.Transformer`` whose blocks are rematerialized one by one (``flax.linen.remat``)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from gemma import gm  # pylint: disable=import-outside-toplevel

  class BlockRematTransformer(gm.nn.Transformer):
    """The same module and parameters; only what the backward pass keeps differs."""

    def _apply_attention(self, inputs: Any, cache: Any) -> tuple[Any, Any]:
      # The loop of gm.nn.Transformer._apply_attention, each block call under remat.
      call = nn.remat(_call_block, prevent_cse=True)
      x, old_cache, new_cache = inputs.embeddings, cache or {}, {}
      for i, block in enumerate(self.blocks):
        name = f'layer_{i}'
        new_cache[name], x = call(block, x, inputs.positions, old_cache.get(name),
                                  inputs.attention_mask)
      return self.final_norm(x), new_cache

  return BlockRematTransformer


def _demo(name: str, **shape: int) -> ModelSpec:
  return ModelSpec(name, 'demo', own_config=tuple(shape.items()), context_length=8192,
                   tokenizer_path=DEMO_TOKENIZER)


def _released(name: str, family: str, config_name: str = '', *, context_length: int,
              kaggle: str = '', **own: Any) -> list[ModelSpec]:
  """The pretrained model and its ``-it`` twin (same architecture)."""
  return [
      ModelSpec(name + suffix, family, config_name, tuple(own.items()), context_length,
                instruction_tuned=bool(suffix),
                kaggle_handle=kaggle.format(variant=name.split('-', 1)[-1] + suffix)
                if kaggle else '')
      for suffix in ('', '-it')
  ]


_GEMMA1_2B = dict(num_embed=256128, embed_dim=2048, hidden_dim=16384, num_heads=8, head_dim=256,
                  num_kv_heads=1, num_layers=18)

# The model of a run that names neither --model nor --ckpt.
DEFAULT_MODEL = 'tiny'

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _demo('tiny', num_embed=1024, embed_dim=128, hidden_dim=512, num_heads=4, head_dim=32,
              num_kv_heads=1, num_layers=3),
        _demo('bench', num_embed=1024, embed_dim=512, hidden_dim=4096, num_heads=8, head_dim=64,
              num_kv_heads=1, num_layers=6),
        *_released('gemma-2b', 'gemma', context_length=8192,
                   kaggle='google/gemma/flax/{variant}', **_GEMMA1_2B),
        *_released('gemma2-2b', 'gemma2', 'Gemma2_2B', context_length=8192,
                   kaggle='google/gemma-2/flax/gemma2-{variant}'),
        *_released('gemma3-270m', 'gemma3', 'Gemma3_270M', context_length=32768,
                   kaggle='google/gemma-3/flax/gemma3-{variant}'),
        *_released('gemma3-1b', 'gemma3', 'Gemma3_1B', context_length=32768,
                   kaggle='google/gemma-3/flax/gemma3-{variant}'),
        *_released('gemma3-4b', 'gemma3', 'Gemma3_4B', context_length=131072,
                   kaggle='google/gemma-3/flax/gemma3-{variant}'),
    )
}


def get_model_spec(name: str) -> ModelSpec:
  try:
    return MODELS[name]
  except KeyError:
    raise KeyError(f'unknown model {name!r}: use one of {", ".join(MODELS)}') from None


def specs_of_architecture(architecture: Architecture) -> list[ModelSpec]:
  """The registered models with exactly this architecture (pretrained first)."""
  return [s for s in MODELS.values() if s.architecture == architecture]


# The length of the tokens that ``init_params`` runs the model on. The parameters do not depend
# on it (flax draws each from the key and its module's path), so one length for every run: one
# compiled initialization per model and layout, shared through the compilation cache.
INIT_TOKENS = 8


# XLA's backend optimization level for the random initialization. At the default, 3, LLVM
# spends most of the compile time optimizing the threefry loops that draw each leaf, for no gain:
# the same bits come out (tests/test_models.py), as fast (bench/startup.py: with this and without
# flax's eager init, a fresh run's parameters take 0.4 of the CPU).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def init_params(model: Transformer, seed: int | jax.Array) -> Any:
  """Random initial parameters of ``model`` (a pytree of arrays), from ``seed``: an int, or the
  key ``jax.random.key(seed)`` itself (passed into a jitted initialization as an argument, one
  program serves every seed).

  Called outside a trace, it runs one compiled program (compiled with
  ``INIT_COMPILER_OPTIONS``, the model's forward pass left out) instead of flax's eager
  ``init``, which dispatches every draw and compiles the model's forward pass only to throw its
  result away. Within a trace (``jax.jit``, ``jax.eval_shape``) it is part of that program.
  """
  import jax  # pylint: disable=import-outside-toplevel

  is_key = isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
  key = seed if is_key else jax.random.key(seed)
  if isinstance(key, jax.core.Tracer):
    return _traced_init(model, key)
  return jax.jit(_traced_init, static_argnums=0,
                 compiler_options=INIT_COMPILER_OPTIONS)(model, key)


def _traced_init(model: Transformer, key: jax.Array) -> Any:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  tokens = jnp.ones((1, INIT_TOKENS), dtype=jnp.int32)
  return model.init(key, tokens)['params']


def abstract_params(spec: ModelSpec, param_dtype: Any) -> Any:
  """``jax.ShapeDtypeStruct``s of the model's parameters (nothing allocated)."""
  import jax  # pylint: disable=import-outside-toplevel

  model = spec.transformer(param_dtype)
  return jax.eval_shape(lambda: init_params(model, 0))


def count_params(params: Any) -> int:
  import jax  # pylint: disable=import-outside-toplevel

  return sum(x.size for x in jax.tree.leaves(params))

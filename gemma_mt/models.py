"""Model names → Gemma transformer configs, their tokenizers, and initial parameters.

``tiny`` is the embedded default: a Gemma-architecture model (multi-query attention like Gemma 2B,
RMSNorm, gated GeLU MLP, RoPE, tied embeddings) of about 1.1M parameters over the bundled demo
tokenizer, initialised at random. ``bench`` is the same architecture at tens of millions of
parameters, for benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from gemma_mt.data import demo_corpus

if TYPE_CHECKING:
  from gemma.gm.nn import Transformer, TransformerConfig

DEMO_TOKENIZER = str(demo_corpus.ASSETS_DIR / demo_corpus.TOKENIZER_FILE)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A named model: its architecture and where its tokenizer comes from.

  Attributes:
    name: the ``--model`` value.
    num_embed: vocabulary size (rows of the embedding table).
    embed_dim, hidden_dim, num_heads, head_dim, num_kv_heads, num_layers: the shape.
    tokenizer_path: the sentencepiece model this model's vocabulary is.
  """

  name: str
  num_embed: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  head_dim: int
  num_kv_heads: int
  num_layers: int
  tokenizer_path: str

  def transformer_config(self) -> TransformerConfig:
    from gemma import gm  # pylint: disable=import-outside-toplevel

    return gm.nn.config.TransformerConfig(
        num_embed=self.num_embed,
        embed_dim=self.embed_dim,
        hidden_dim=self.hidden_dim,
        num_heads=self.num_heads,
        head_dim=self.head_dim,
        num_kv_heads=self.num_kv_heads,
        final_logit_softcap=None,
        use_post_attn_norm=False,
        use_post_ffw_norm=False,
        attention_types=(gm.nn.config.AttentionType.GLOBAL,) * self.num_layers,
    )

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


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec('tiny', num_embed=1024, embed_dim=128, hidden_dim=512, num_heads=4,
                  head_dim=32, num_kv_heads=1, num_layers=3, tokenizer_path=DEMO_TOKENIZER),
        ModelSpec('bench', num_embed=1024, embed_dim=512, hidden_dim=4096, num_heads=8,
                  head_dim=64, num_kv_heads=1, num_layers=6, tokenizer_path=DEMO_TOKENIZER),
    )
}


def get_model_spec(name: str) -> ModelSpec:
  try:
    return MODELS[name]
  except KeyError:
    raise KeyError(f'unknown model {name!r}: use one of {", ".join(MODELS)}') from None


def init_params(model: Transformer, seed: int, seq_len: int) -> Any:
  """Random initial parameters of ``model`` (a pytree of arrays), from ``seed``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  tokens = jnp.ones((1, seq_len), dtype=jnp.int32)
  return model.init(jax.random.key(seed), tokens)['params']


def count_params(params: Any) -> int:
  import jax  # pylint: disable=import-outside-toplevel

  return sum(x.size for x in jax.tree.leaves(params))

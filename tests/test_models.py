import jax.numpy as jnp
import pytest

from gemma_mt import models


def test_tiny_is_a_multi_query_gemma_over_the_demo_vocabulary(demo_tokenizer):
  spec = models.get_model_spec('tiny')
  config = spec.transformer_config()
  assert config.num_kv_heads == 1 and config.num_heads > 1
  assert config.num_embed == demo_tokenizer.vocab_size
  params = models.init_params(spec.transformer(jnp.float32), 0, 8)
  assert models.count_params(params) == 844_672
  assert params['layer_0']['attn']['kv_einsum']['w'].shape == (2, 1, 128, 32)


def test_same_seed_same_params():
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  a, b = models.init_params(model, 7, 8), models.init_params(model, 7, 8)
  assert (a['embedder']['input_embedding'] == b['embedder']['input_embedding']).all()


def test_unknown_model():
  with pytest.raises(KeyError, match='unknown model'):
    models.get_model_spec('gemma-99b')

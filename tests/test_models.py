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


def test_block_remat_has_the_same_parameters_and_gradients():
  import jax
  import numpy as np
  spec = models.get_model_spec('tiny')
  plain, remat = spec.transformer(jnp.float32), spec.transformer(jnp.float32, remat='block')
  params = models.init_params(plain, 0, 8)
  assert jax.tree.structure(models.init_params(remat, 0, 8)) == jax.tree.structure(params)
  tokens = jnp.arange(2 * 12, dtype=jnp.int32).reshape(2, 12) % 1000 + 4

  def grads(model):
    return jax.grad(lambda p: jnp.mean(model.apply({'params': p}, tokens).logits ** 2))(params)

  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  jaxpr = str(jax.make_jaxpr(lambda p: jax.grad(
      lambda q: remat.apply({'params': q}, tokens).logits.sum())(p))(params))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr
  with pytest.raises(ValueError, match='remat'):
    spec.transformer(jnp.float32, remat='full')

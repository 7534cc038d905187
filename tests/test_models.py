import jax.numpy as jnp
import pytest

from gemma_mt import models


def test_tiny_is_a_multi_query_gemma_over_the_demo_vocabulary(demo_tokenizer):
  spec = models.get_model_spec('tiny')
  config = spec.transformer_config()
  assert config.num_kv_heads == 1 and config.num_heads > 1
  assert config.num_embed == demo_tokenizer.vocab_size
  params = models.init_params(spec.transformer(jnp.float32), 0)
  assert models.count_params(params) == 844_672
  assert params['layer_0']['attn']['kv_einsum']['w'].shape == (2, 1, 128, 32)


def test_same_seed_same_params_whatever_the_length_and_the_jit():
  """A seed gives one set of parameters: eager or jitted with its key as an argument (one
  program for every seed), and equal to initializing on a longer input (``INIT_TOKENS`` is one
  length for every run)."""
  import jax
  import numpy as np

  model = models.get_model_spec('tiny').transformer(jnp.float32)
  a = models.init_params(model, 7)
  jitted = jax.jit(lambda key: models.init_params(model, key))
  longer = model.init(jax.random.key(7), jnp.ones((1, 48), jnp.int32))['params']
  for other in (models.init_params(model, 7), jitted(jax.random.key(7)), longer):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(other), strict=True):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(jitted(jax.random.key(8))['embedder']['input_embedding'],
                            a['embedder']['input_embedding'])


def test_unknown_model():
  with pytest.raises(KeyError, match='unknown model'):
    models.get_model_spec('gemma-99b')


def test_block_remat_has_the_same_parameters_and_gradients():
  import jax
  import numpy as np
  spec = models.get_model_spec('tiny')
  plain, remat = spec.transformer(jnp.float32), spec.transformer(jnp.float32, remat='block')
  params = models.init_params(plain, 0)
  assert jax.tree.structure(models.init_params(remat, 0)) == jax.tree.structure(params)
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

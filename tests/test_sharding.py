"""The mesh, the partition rules, and that sharding changes the layout but not the numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_mt import models
from gemma_mt.train import loop
from gemma_mt.train import optimizer as optimizer_lib
from gemma_mt.train import sharding
from gemma_mt.train import step as step_lib
from gemma_mt.train.config import TrainConfig
from gemma_mt.train.mesh_spec import MeshError, MeshSpec


@pytest.mark.parametrize('text, sizes', [
    ('', {'data': 8, 'fsdp': 1, 'tensor': 1}),
    ('fsdp:8', {'data': 1, 'fsdp': 8, 'tensor': 1}),
    ('data:2,fsdp:2,tensor:2', {'data': 2, 'fsdp': 2, 'tensor': 2}),
    ('fsdp:-1,tensor:2', {'data': 1, 'fsdp': 4, 'tensor': 2}),
    ('tensor:2', {'data': 4, 'fsdp': 1, 'tensor': 2}),
])
def test_mesh_spec(text, sizes):
  assert dict(sharding.make_mesh(MeshSpec.parse(text)).shape) == sizes


@pytest.mark.parametrize('text, message', [
    ('data:4', 'has 4 devices but there are 8'),
    ('data:3,fsdp:-1', 'do not divide'),
    ('model:8', 'write data:D'),
    ('data:-1,fsdp:-1', 'only one axis'),
    ('data:x', 'not an integer'),
])
def test_bad_mesh(text, message):
  with pytest.raises(MeshError, match=message):
    sharding.make_mesh(MeshSpec.parse(text))


def _run(tmp_path, mesh: str, devices=None, **overrides) -> list[float]:
  # test_checkpoint's settings (a constant rate: no step count in the program): the data:8 and
  # fsdp:8 steps are the programs its runs compile, shared through the compilation cache.
  values = dict(workdir=str(tmp_path / mesh.replace(':', '').replace(',', '_')), mesh=mesh,
                max_steps=10, batch_size=16, eval_batch_size=16, eval_every_n=10,
                save_every_n=10, log_every_n=1, num_translations=0, bleu_examples=0,
                lr_schedule='constant', warmup_steps=0)
  values.update(overrides)
  config = TrainConfig(**values)
  loop.train_and_evaluate(config, devices=devices)
  lines = (tmp_path / values['workdir']).joinpath('metrics.jsonl').read_text().splitlines()
  return [json.loads(l)['train_loss'] for l in lines if 'train_loss' in l]


def test_every_mesh_gives_the_one_device_losses(tmp_path):
  reference = _run(tmp_path, 'data:1', devices=jax.devices()[:1])
  assert len(reference) == 10 and reference[-1] < reference[0]
  for mesh in ('data:8', 'fsdp:8', 'data:2,fsdp:2,tensor:2'):
    np.testing.assert_allclose(_run(tmp_path, mesh), reference, rtol=1e-5, err_msg=mesh)


def test_gradient_accumulation_equals_the_big_batch_step(tmp_path):
  reference = _run(tmp_path, 'data:8', batch_size=32)
  accumulated = _run(tmp_path / 'accum', 'data:8', batch_size=32, grad_accum_steps=4)
  np.testing.assert_allclose(accumulated, reference, rtol=1e-5)


def _optimizer(optimizer_name: str):
  return optimizer_lib.make_optimizer(TrainConfig(workdir='unused', optimizer=optimizer_name),
                                      10)[0]


def _abstract_state(optimizer_name: str):
  model = models.get_model_spec('tiny').transformer(jnp.float32)
  optimizer = _optimizer(optimizer_name)

  def init():
    params = models.init_params(model, 0)
    return step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  return jax.eval_shape(init)


@pytest.mark.parametrize('optimizer_name', ['adamw', 'adafactor', 'sgd'])
def test_fsdp_8_really_splits_parameters_and_optimizer_state(optimizer_name):
  mesh = sharding.make_mesh(MeshSpec.parse('fsdp:8'))
  abstract = _abstract_state(optimizer_name)
  shardings = sharding.state_shardings(mesh, abstract, _optimizer(optimizer_name))
  # Zeros in the state's shapes: the layout is what is tested, and a random initialization
  # inside this jit compiled for about 10 s per optimizer.
  state = jax.jit(lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract),
                  out_shardings=shardings)()
  large = 0
  for leaf in jax.tree.leaves(state.params):
    if leaf.ndim >= 2:
      large += 1
      for shard in leaf.addressable_shards:
        assert shard.data.size * 8 == leaf.size, leaf.shape
  assert large == 1 + 3 * 5  # embedding + 5 matrices per block
  if optimizer_name == 'adamw':
    moments = [l for l in jax.tree.leaves(state.opt_state) if l.ndim >= 2]
    assert len(moments) == 2 * large
    for leaf in moments:
      assert leaf.addressable_shards[0].data.size * 8 == leaf.size
  params_bytes = sharding.bytes_per_device(abstract.params, shardings.params)
  total = sum(l.size * 4 for l in jax.tree.leaves(abstract.params))
  norms = sum(l.size * 4 for l in jax.tree.leaves(abstract.params) if l.ndim == 1)
  assert params_bytes == (total - norms) // 8 + norms


def test_tensor_axis_shards_heads_and_mlp_and_replicates_what_does_not_divide():
  mesh = sharding.make_mesh(MeshSpec.parse('data:2,tensor:4'))
  abstract = _abstract_state('adamw')
  specs = sharding.param_shardings(mesh, abstract.params)
  layer = specs['layer_0']
  assert layer['attn']['q_einsum']['w'].spec == jax.sharding.PartitionSpec('tensor', None, None)
  assert layer['mlp']['linear'].spec == jax.sharding.PartitionSpec('tensor', None)
  # One kv head (multi-query) cannot split over 4: replicated.
  assert layer['attn']['kv_einsum']['w'].spec == jax.sharding.PartitionSpec(None, None, None, None)
  assert specs['embedder']['input_embedding'].spec == jax.sharding.PartitionSpec('tensor', None)


def test_masked_positions_do_not_matter_and_every_row_does():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.normal(size=(4, 12, 50)), jnp.float32)
  tokens = rng.randint(4, 50, size=(4, 12)).astype(np.int32)
  mask = np.zeros((4, 12), bool)
  mask[:, 5:10] = True
  batch = step_lib.TrainingInput(tokens, mask)
  base = step_lib.loss_sums(logits, batch)
  changed = tokens.copy()
  changed[:, 1:5] = 7  # targets at prompt positions
  changed[:, 10:] = 0  # targets at padding positions
  same = step_lib.loss_sums(logits, batch._replace(input_tokens=changed))
  np.testing.assert_array_equal(np.asarray(same), np.asarray(base))
  grad = jax.grad(lambda l: step_lib.loss_sums(l, batch).loss_sum)(logits)
  assert not np.asarray(grad)[:, :4].any() and not np.asarray(grad)[:, 10:].any()
  assert np.asarray(grad)[3, 4:9].any()  # the last row's targets count
  other = tokens.copy()
  other[3, 7] = (other[3, 7] + 1) % 50
  assert float(step_lib.loss_sums(logits, batch._replace(input_tokens=other)).loss_sum) != float(
      base.loss_sum)


def test_model_flops_and_peaks():
  from gemma_mt.train import perf
  flops = perf.model_flops_per_step(num_params=1000, num_layers=2, num_heads=4, head_dim=8,
                                    batch_size=3, seq_len=16)
  assert flops == 3 * 16 * (6 * 1000 + 12 * 2 * 4 * 8 * 16)
  assert perf.peak_tflops('NVIDIA H200') == 989.0
  assert perf.peak_tflops('cpu') is None
  assert perf.peak_tflops('cpu', override=0.2) == 0.2


def test_block_remat_and_bfloat16_compute_train_the_same_run(tmp_path):
  reference = _run(tmp_path, 'data:8')
  np.testing.assert_allclose(_run(tmp_path / 'remat', 'data:8', remat='block'), reference,
                             rtol=1e-5)
  mixed = _run(tmp_path / 'bf16', 'data:8', compute_dtype='bfloat16')
  np.testing.assert_allclose(mixed, reference, rtol=3e-2)
  assert mixed != reference

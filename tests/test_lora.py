"""LoRA on a frozen (maybe quantized) base: the adapted model, its training, checkpoints,
resume after SIGKILL, refusals, exports and translation (the tiny model; the real Gemma 3 270M
against Hugging Face PEFT is in test_real_models.py)."""

import json
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from conftest import REPO, subprocess_env
from gemma_mt import models
from gemma_mt.models import lora
from gemma_mt.models.lora_spec import LoraSpec, parse_targets
from gemma_mt.train import checkpoint, frozen_base, loop, sharding
from gemma_mt.train.config import ConfigError, TrainConfig
from gemma_mt.train.mesh_spec import MeshSpec
from test_checkpoint import _reported_step, _train_losses, _wait_for

TOKENS = jnp.asarray([[2, 40, 9, 33, 100, 7, 8, 1, 0, 0]])
LORA_FLAGS = ['--lora_rank=4', '--lora_alpha=8', '--base_quantization=int8']
CLI_FLAGS = ['--max_steps=16', '--batch_size=16', '--save_every_n=4', '--log_every_n=1',
             '--eval_every_n=8', '--num_translations=0', '--bleu_examples=0',
             '--warmup_steps=2', *LORA_FLAGS]


def _tiny():
  return models.get_model_spec('tiny').transformer(jnp.float32)


def _adapted(rank=4, alpha=8.0, targets='all'):
  base_model = _tiny()
  model = lora.adapt(base_model, LoraSpec(rank, alpha, parse_targets(targets)))
  params = models.init_params(model, 0)
  return base_model, model, params


def _noisy(adapters, seed=1):
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_adapters_start_at_the_base_and_fold_into_it_exactly():
  base_model, model, params = _adapted()
  base, adapters = lora.split(params)
  # The base part is the plain model's own initialization; b = 0: the adapted model is the base.
  for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(models.init_params(base_model, 0))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  base_logits = base_model.apply({'params': base}, TOKENS).logits
  np.testing.assert_array_equal(np.asarray(model.apply({'params': params}, TOKENS).logits),
                                np.asarray(base_logits))
  trained = lora.combine(base, _noisy(adapters))
  adapted_logits = model.apply({'params': trained}, TOKENS).logits
  assert float(jnp.abs(adapted_logits - base_logits).max()) > 0.1
  folded = lora.fold(trained, LoraSpec(4, 8.0, parse_targets('all')), False)
  np.testing.assert_allclose(np.asarray(base_model.apply({'params': folded}, TOKENS).logits),
                             np.asarray(adapted_logits), atol=2e-5)
  # Scale alpha / rank: doubling alpha doubles the adapters' contribution.
  double = lora.adapt(base_model, LoraSpec(4, 16.0, parse_targets('all')))
  doubled = double.apply({'params': trained}, TOKENS).logits
  assert float(jnp.abs(doubled - adapted_logits).max()) > 1e-3


def test_targets_and_quantized_base():
  _, model, params = _adapted(targets='attn')
  paths = traverse_util.flatten_dict(lora.split(params)[1], sep='/')
  assert paths and all('/attn/' in p for p in paths)
  _, _, params = _adapted(targets='mlp')
  paths = traverse_util.flatten_dict(lora.split(params)[1], sep='/')
  assert {p.split('/', 1)[1] for p in paths} >= {'mlp/gating_einsum_lora/a', 'mlp/linear_lora/b'}
  assert all('/mlp/' in p for p in paths)
  with pytest.raises(lora.LoraError, match='--lora_targets'):
    parse_targets('attn,embedder')
  base_model, model, params = _adapted()
  base, adapters = lora.split(params)
  trained = lora.combine(base, _noisy(adapters))
  reference = model.apply({'params': trained}, TOKENS).logits
  errors = {}
  for method, dtype in (('int8', jnp.int8), ('int4', jnp.int4)):
    quantized = lora.quantize(base, method, False)
    weight = quantized['layer_0']['attn']['q_einsum']['w']
    assert isinstance(weight, lora.QuantizedWeight) and weight.values.dtype == dtype
    assert weight.scale.shape == (4, 1, 32)  # one scale per output channel of [N, D, H]
    logits = model.apply({'params': lora.combine(quantized, _noisy(adapters))},
                         TOKENS).logits
    errors[method] = float(jnp.abs(logits - reference).max())
  assert 0 < errors['int8'] < errors['int4'] < 0.5 * float(jnp.abs(reference).max())


def test_adapters_follow_their_weights_sharding():
  mesh = sharding.make_mesh(MeshSpec.parse('data:2,fsdp:2,tensor:2'), jax.devices()[:8])
  _, model, params = _adapted(rank=4)
  abstract = jax.eval_shape(lambda: params)
  shardings = traverse_util.flatten_dict(
      sharding.param_shardings(mesh, lora.split(abstract)[1]), sep='/')
  spec = {k: tuple(v.spec) for k, v in shardings.items()}
  assert spec['layer_0/attn/q_einsum/lora/a'] == ('fsdp', None)  # [D, r]
  assert spec['layer_0/attn/q_einsum/lora/b'] == (None, 'tensor', None)  # [r, N, H]
  assert spec['layer_0/attn/attn_vec_einsum/lora/a'] == ('tensor', None, None)  # [N, H, r]
  assert spec['layer_0/mlp/gating_einsum_lora/b'] == (None, None, 'tensor')  # [r, 2, F]
  assert spec['layer_0/mlp/linear_lora/a'] == ('tensor', None)  # [F, r]
  # The single KV head does not divide over tensor=2: replicated there.
  assert spec['layer_0/attn/kv_einsum/lora/b'] == (None, None, None, None)
  quantized = lora.abstract_quantized(lora.split(abstract)[0], 'int8', False)
  q = sharding.param_shardings(mesh, quantized)['layer_0']['attn']['q_einsum']['w']
  assert tuple(q.values.spec) == ('tensor', 'fsdp', None)
  assert tuple(q.scale.spec) == ('tensor', None, None)


def _config(workdir, **overrides) -> TrainConfig:
  values = dict(workdir=str(workdir), max_steps=12, batch_size=16, eval_every_n=6,
                save_every_n=6, log_every_n=2, lr_schedule='constant', warmup_steps=0,
                num_translations=0, bleu_examples=0, lora_rank=4, lora_alpha=8.0,
                learning_rate=1e-2, mesh='data:2,fsdp:2,tensor:2')
  values.update(overrides)
  return TrainConfig(**values)


@pytest.fixture(scope='session')
def lora_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('lora')
  return workdir, loop.train_and_evaluate(_config(workdir))


def test_only_adapters_train_and_are_saved(lora_run, tmp_path):
  workdir, result = lora_run
  saved = checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints'))
  try:
    metadata = saved._manager.item_metadata(12)['state']
  finally:
    saved.close()
  state = traverse_util.flatten_dict({'params': metadata['params']}, sep='/')
  assert state and all(lora.is_adapter(p) for p in state)
  trained = traverse_util.flatten_dict(result.state.params, sep='/')
  assert set(trained) == {p[len('params/'):] for p in state}
  assert any(np.abs(np.asarray(v)).max() > 0 for k, v in trained.items() if k.endswith('/b'))
  # The base the run trained on is the one it loads again, bit for bit, and untouched.
  base_layout, frozen, adapters = frozen_base.restore_lora_run(str(workdir), 12,
                                                               _saved_config(workdir, 12))
  plain = models.init_params(_tiny(), 0)
  for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # A checkpoint of adapters only is a small fraction of a full run's: in the arrays it saves
  # (parameters and Adam's moments), and on disk. (OCDBT's files are larger than the arrays
  # when a loaded machine makes it flush in more pieces: 0.8 MB here alone, 2.6 MB under load.)
  saved_bytes = sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(metadata) if hasattr(x, 'shape'))
  full_bytes = 3 * 4 * models.count_params(plain)  # float32 parameters + Adam's two moments
  assert saved_bytes < 0.1 * full_bytes, (saved_bytes, full_bytes)
  size = sum(f.stat().st_size for f in (workdir / 'checkpoints' / '12' / 'state').rglob('*')
             if f.is_file())
  assert size < 0.5 * full_bytes, (size, full_bytes)
  assert result.memory_plan.frozen > 0 and result.memory_plan.params < result.memory_plan.frozen


def test_resume_continues_exactly_and_refuses_another_setup(lora_run, tmp_path):
  workdir, result = lora_run
  losses = _losses(workdir)
  first = tmp_path / 'first'
  loop.train_and_evaluate(_config(first, max_steps=6))
  # Resumed on another mesh (elastic): the base read into the new layout, the same losses.
  resumed = loop.train_and_evaluate(_config(first, mesh='fsdp:8'))
  again = _losses(first)
  assert again.keys() == losses.keys()
  assert [again[s] for s in range(2, 7, 2)] == [losses[s] for s in range(2, 7, 2)]
  np.testing.assert_allclose([again[s] for s in again], [losses[s] for s in losses], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  for overrides, message in (
      (dict(lora_rank=0, lora_alpha=0.0), '--lora_rank=0 \\(checkpoint has 4\\)'),
      (dict(lora_rank=8), '--lora_rank=8 \\(checkpoint has 4\\)'),
      (dict(base_quantization='int8'), "--base_quantization='int8'"),
      (dict(seed=5), 'is not the one checkpoint 12'),
  ):
    with pytest.raises(checkpoint.CheckpointError, match=message):
      loop.train_and_evaluate(_config(workdir, max_steps=14, **overrides))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def _saved_config(workdir, step):
  store = checkpoint.RunCheckpoints.for_reading(str(workdir / 'checkpoints'))
  try:
    return store.saved_config(step)
  finally:
    store.close()


def _losses(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return {m['step']: m['train_loss'] for m in map(json.loads, lines) if 'train_loss' in m}


@pytest.mark.parametrize('overrides, message', [
    (dict(lora_rank=-1), '--lora_rank must be 0'),
    (dict(lora_targets='embed'), '--lora_targets'),
    (dict(lora_rank=0, base_quantization='int8'), 'applies to LoRA runs only'),
    (dict(base_quantization='int3'), '--base_quantization'),
    (dict(base_dtype='float16'), '--base_dtype'),
])
def test_bad_lora_settings_are_config_errors(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    _config(tmp_path / 'w', **overrides).validate()


def test_rank_larger_than_the_smallest_adapted_dimension(tmp_path):
  # tiny's smallest adapted dimension: kv_einsum's output, 2 × 1 head × 32.
  with pytest.raises(ConfigError, match='--lora_rank=65 is larger than the smallest adapted '
                                        'dimension of tiny \\(64\\)'):
    loop.plan_memory(_config(tmp_path / 'w', lora_rank=65, lora_targets='attn'))
  run, lines = loop.plan_memory(_config(tmp_path / 'w', base_quantization='int4'))
  assert any(l.startswith('LoRA rank 4, scale 2 on q_einsum') for l in lines)
  assert any('frozen base' in l for l in lines)
  assert not (tmp_path / 'w').exists()


def _cli(args, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope='session')
def cli_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('lora-cli')
  done = _cli(['gemma_mt.train', f'--workdir={workdir}', *CLI_FLAGS])
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'the base is random' in done.stderr
  return workdir


def test_sigkill_then_same_command_ends_bit_identical(cli_reference, tmp_path):
  workdir = tmp_path / 'run'
  command = [sys.executable, '-m', 'gemma_mt.train', f'--workdir={workdir}', *CLI_FLAGS]
  proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  reached = _wait_for(lambda: _reported_step(workdir) >= 10, proc)
  proc.kill()
  proc.wait()
  assert reached and proc.returncode == -signal.SIGKILL
  done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from' in done.stderr
  assert _train_losses(workdir) == _train_losses(cli_reference)


def test_exports_translate_and_refusals(cli_reference, tmp_path):
  from gemma_mt import errors, inference
  from gemma_mt.decoding import Translator
  from gemma_mt.export import export_params

  workdir = cli_reference
  with pytest.raises(errors.UserError, match='is a LoRA run: pass --merge_lora'):
    export_params(str(workdir), str(tmp_path / 'none'))
  assert not (tmp_path / 'none').exists()
  export_params(str(workdir), str(tmp_path / 'merged'), merge_lora=True)
  export_params(str(workdir), str(tmp_path / 'peft'), adapters_only=True)
  # The merged parameters give the adapted model's logits.
  base_layout, frozen, adapters = frozen_base.restore_lora_run(str(workdir), 16,
                                                               _saved_config(workdir, 16))
  adapted = base_layout.model.apply({'params': lora.combine(frozen, adapters)}, TOKENS).logits
  # Host arrays, as a full run's export (test_checkpoint): no sharding of this process's devices
  # is recorded, so the export loads on any device count (Orbax would warn that it is unsafe).
  merged = ocp.PyTreeCheckpointer().restore(str(tmp_path / 'merged' / 'params'))
  assert all(type(x) is np.ndarray for x in jax.tree.leaves(merged))
  np.testing.assert_allclose(np.asarray(_tiny().apply({'params': merged}, TOKENS).logits),
                             np.asarray(adapted), atol=2e-5)
  peft_config = json.loads((tmp_path / 'peft' / 'adapter_config.json').read_text())
  assert (peft_config['r'], peft_config['lora_alpha'], peft_config['peft_type']) == (4, 8, 'LORA')
  from safetensors.numpy import load_file
  tensors = load_file(str(tmp_path / 'peft' / 'adapter_model.safetensors'))
  assert tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'].shape == (4, 128)
  assert tensors['base_model.model.model.layers.2.mlp.up_proj.lora_B.weight'].shape == (512, 4)
  assert len(tensors) == 3 * 7 * 2
  # Translating from the workdir reads the base again and folds the adapters in: the same
  # output as the adapted model's own decoding.
  ready = inference.from_workdir(str(workdir))
  sources = ['The student bought the pretty oranges.', 'He will find eleven tired dogs.']
  folded = Translator(ready.model, ready.params, ready.tokenizer, ready.prompt_format, 12)(sources)
  direct = Translator(base_layout.model, lora.combine(frozen, adapters), ready.tokenizer,
                      ready.prompt_format, 12)(sources)
  assert folded == direct
  # A LoRA workdir does not resume as a full run: one line, exit 2, nothing written and nothing
  # removed, not even what an unfinished save left (a job writing there may own it). Many of
  # them: a clean-up still running at exit would print a traceback after the error line.
  unfinished = [workdir / 'checkpoints' / f'{90 + i}.orbax-checkpoint-tmp-{i}' for i in range(300)]
  for path in unfinished:
    (path / 'state').mkdir(parents=True)
  try:
    before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
    done = _cli(['gemma_mt.train', f'--workdir={workdir}', *CLI_FLAGS[:-3]])
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith('error: '), done.stderr[-2000:]
    assert '--lora_rank=0 (checkpoint has 4)' in done.stderr
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before
  finally:
    for path in unfinished:
      shutil.rmtree(path, ignore_errors=True)

"""Released Gemma models: the real Gemma 3 270M (GGUF from PyPI) loaded, checked against
transformers, saved and reloaded through every --ckpt source, sharded, and fine-tuned."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from gemma import gm

from conftest import REPO, readme_bash_block, subprocess_env, train_reporting_imports
from gemma_mt import models
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.models import gguf, hf, sources
from gemma_mt.train import sharding
from gemma_mt.train.mesh_spec import MeshSpec

TOKENS = [2, 818, 5279, 529, 7001, 563]  # BOS "The capital of France is"
REFERENCE_PYTHON = REPO / '.venv-ref' / 'bin' / 'python'


@pytest.fixture(scope='session')
def gguf_path() -> str:
  return gguf.resolve_path('gemma3-270m')


def _mesh(spec: str = '', num_devices: int = 1):
  return sharding.make_mesh(MeshSpec.parse(spec), jax.devices()[:num_devices])


def _abstract(spec: models.ModelSpec, mesh, dtype=jnp.float32):
  abstract = models.abstract_params(spec, dtype)
  rules = sharding.rules_for(spec.transformer_config())
  return sharding.with_shardings(abstract, sharding.param_shardings(mesh, abstract, rules))


@pytest.fixture(scope='session')
def gemma3(gguf_path):
  """(resolved source, float32 parameters on one device, flax model) of the real 270M."""
  resolved = sources.resolve('gguf:gemma3-270m')
  params = resolved.load_params(_abstract(resolved.spec, _mesh()))
  return resolved, params, resolved.spec.transformer(jnp.float32)


def _logits(model, params, tokens=TOKENS) -> np.ndarray:
  return np.asarray(model.apply({'params': params}, jnp.asarray([tokens])).logits[0])


def _reference_logits(model_path: str, tmp_path: pathlib.Path, tokens=TOKENS,
                      extra: tuple[str, ...] = ()) -> np.ndarray:
  """Float32 logits by Hugging Face transformers (CPU PyTorch, Python 3.11 side environment);
  ``extra``: more arguments of the script (more models, PEFT adapters)."""
  if not REFERENCE_PYTHON.exists():
    if os.environ.get('CI'):
      pytest.fail(f'{REFERENCE_PYTHON} missing: .ci/run sets it up (scripts/setup_reference_env.sh)')
    pytest.skip('no .venv-ref: run bash scripts/setup_reference_env.sh')
  out = tmp_path / f'reference-{len(list(tmp_path.iterdir()))}.npy'
  done = subprocess.run(
      [str(REFERENCE_PYTHON), str(REPO / 'tests' / 'reference' / 'transformers_logits.py'),
       f'--model={model_path}', f'--tokens={",".join(map(str, tokens))}', f'--out={out}',
       *extra],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  return np.load(out)


def test_model_names_and_parameter_counts():
  assert models.count_params(models.abstract_params(models.get_model_spec('gemma-2b'),
                                                    jnp.float32)) == 2_506_434_560
  assert models.get_model_spec('gemma-2b-it').kaggle_handle == 'google/gemma/flax/2b-it'
  for name in ('gemma2-2b', 'gemma2-2b-it', 'gemma3-270m', 'gemma3-270m-it', 'gemma3-1b',
               'gemma3-1b-it', 'gemma3-4b', 'gemma3-4b-it'):
    assert name in models.MODELS
  assert models.get_model_spec('gemma3-4b').transformer_config().vision_encoder is None
  counts = {n: models.count_params(models.abstract_params(models.get_model_spec(n), jnp.float32))
            for n in ('gemma2-2b', 'gemma3-270m', 'gemma3-1b')}
  assert counts == {'gemma2-2b': 2_614_636_800, 'gemma3-270m': 268_098_176,
                    'gemma3-1b': 999_885_952}


def test_models_list_cli():
  done = subprocess.run([sys.executable, '-m', 'gemma_mt.models', '--list'], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert lines[0].split()[:5] == ['name', 'family', 'parameters', 'vocabulary', 'context']
  row = next(l for l in lines if l.startswith('gemma3-270m '))
  assert '268,098,176' in row and '262,144' in row and 'gguf' in row
  assert len(lines) == 1 + len(models.MODELS)


def test_rebuilt_tokenizer_gives_the_reference_ids(gemma3, tmp_path):
  tokenizer = GemmaTokenizer(gguf.tokenizer_path(gemma3[0].gguf_file, str(tmp_path)))
  assert tokenizer.encode('Hello world').tolist() == [9259, 1902]
  assert tokenizer.encode('The capital of France is').tolist() == [818, 5279, 529, 7001, 563]
  assert tokenizer.encode('Hello world how are you').tolist() == [9259, 1902, 1217, 659, 611]
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)
  assert tokenizer.piece_id('<start_of_turn>') == 105
  assert tokenizer.piece_id('<end_of_turn>') == 106
  assert tokenizer.vocab_size == 262_144
  assert tokenizer.decode([2, 818, 5279, 529, 7001, 563, 1]) == 'The capital of France is'


def test_loaded_270m_is_a_real_language_model(gemma3, gguf_path):
  resolved, params, model = gemma3
  assert resolved.spec.name == 'gemma3-270m'
  tokenizer = GemmaTokenizer(resolved.tokenizer_path)
  sentences = ['The weather is nice today, so we are going to the beach.',
               'I would like a cup of coffee with milk, please.',
               "Le chat dort sur le canapé pendant que les enfants jouent dans le jardin.",
               "Nous allons au marché tous les samedis matin."]

  from gemma_mt.data.records import TrainingInput
  from gemma_mt.train import step
  ids = tokenizer.encode_batch(sentences, add_bos=True)
  length = max(len(x) for x in ids)
  tokens = np.zeros((len(ids), length), np.int32)
  for row, x in enumerate(ids):
    tokens[row, :len(x)] = x
  # Every token after BOS is predicted: the model's mean next-token loss on ordinary text.
  batch = TrainingInput(input_tokens=tokens, target_mask=(tokens != 0) & (np.arange(length) > 0))
  eval_fn = jax.jit(lambda p, b: step.eval_step(p, b, model=model, pad_id=0))

  def mean_loss(p) -> float:
    sums = eval_fn(p, batch)
    return float(sums.loss_sum / sums.num_tokens)

  # A uniform guess over the 262,144 pieces costs ln(262144) = 12.5 nats a token.
  real_loss = mean_loss(params)
  assert real_loss < 4.0, real_loss
  # Greedy continuations, one fixed-length forward pass per token (causal: the zeros after the
  # text change nothing).
  forward = jax.jit(lambda p, t: model.apply({'params': p}, t).logits)

  def continue_text(prompt: str, num_tokens: int = 8) -> str:
    ids = tokenizer.encode(prompt, add_bos=True).tolist()
    buffer = np.zeros((1, 32), np.int32)
    buffer[0, :len(ids)] = ids
    for n in range(len(ids), len(ids) + num_tokens):
      buffer[0, n] = int(np.argmax(forward(params, buffer)[0, n - 1]))
    return tokenizer.decode(buffer[0, len(ids):len(ids) + num_tokens])

  assert continue_text('Paris is the capital of').startswith(' France')
  assert continue_text('Monday, Tuesday, Wednesday,').startswith(' Thursday, Friday, Saturday')
  assert continue_text('English: cat\nFrench: chat\nEnglish: dog\nFrench:').startswith(' chien')


def test_gguf_import_matches_transformers_gguf_loader(gemma3, gguf_path, tmp_path):
  _, params, model = gemma3
  ours = _logits(model, params)
  theirs = _reference_logits(gguf_path, tmp_path)
  assert np.abs(ours - theirs).max() < 1e-4
  assert ours[-1].argmax() == theirs[-1].argmax()


def _kaggle_cache(root: pathlib.Path, params, tokenizer_path: str, *, flat: bool = False,
                  handle: str = 'google/gemma-3/flax/gemma3-270m', version: int = 1) -> str:
  """A KAGGLEHUB_CACHE laid out like Kaggle's: tokenizer.model and the checkpoint in VARIATION/."""
  directory = root / 'models' / handle / str(version)
  variation = handle.split('/')[-1]
  if flat:  # Gemma 1's flat layout, as the gemma library itself writes it
    from gemma.gm.ckpts import _checkpoint
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(directory / variation, _checkpoint._nested_to_flat(params))
  else:
    gm.ckpts.save_params(params, directory / variation, wait_until_finished=True)
  (directory / 'tokenizer.model').write_bytes(pathlib.Path(tokenizer_path).read_bytes())
  (root / 'models' / handle / f'{version}.complete').touch()
  return f'{handle}/{version}'


def _assert_bit_equal(a, b) -> None:
  flat_a, flat_b = hf.flat_params(a), hf.flat_params(b)
  assert flat_a.keys() == flat_b.keys()
  for name in flat_a:
    assert np.array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name])), name


@pytest.fixture(scope='session')
def kaggle_270m(gemma3, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """(KAGGLEHUB_CACHE, handle) holding the real 270M as Kaggle lays it out (written once)."""
  resolved, params, _ = gemma3
  root = tmp_path_factory.mktemp('kaggle')
  return root, _kaggle_cache(root, params, resolved.tokenizer_path)


def test_orbax_kaggle_and_hf_sources_load_back_bit_equal(gemma3, kaggle_270m, tmp_path,
                                                         monkeypatch):
  resolved, params, _ = gemma3
  kaggle_root, handle = kaggle_270m
  monkeypatch.setenv('KAGGLEHUB_CACHE', str(kaggle_root))
  from_kaggle = sources.resolve(f'kaggle:{handle}')
  assert from_kaggle.spec.name == 'gemma3-270m'
  assert from_kaggle.tokenizer_path.endswith('tokenizer.model')
  abstract = _abstract(resolved.spec, _mesh())
  _assert_bit_equal(from_kaggle.load_params(abstract), params)
  # The same checkpoint as a plain local directory, the model inferred from its shapes.
  local = sources.resolve(str(kaggle_root / 'models' / handle))
  assert local.source.kind == 'orbax' and local.spec.name == 'gemma3-270m'
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  (hf_dir / 'config.json').write_text(json.dumps(hf.hf_config(resolved.spec, 'float32')))
  (hf_dir / 'tokenizer.model').write_bytes(pathlib.Path(resolved.tokenizer_path).read_bytes())
  hf.write_safetensors(str(hf_dir), hf.hf_tensors(params, resolved.spec.transformer_config()),
                       np.float32, max_shard_bytes=600 << 20)  # two shards and an index
  assert (hf_dir / hf.INDEX_FILE).is_file()
  from_hf = sources.resolve(str(hf_dir))
  assert from_hf.source.kind == 'hf' and from_hf.spec.name == 'gemma3-270m'
  _assert_bit_equal(from_hf.load_params(abstract), params)


def test_gemma3_weights_load_sharded_on_8_devices(gemma3, kaggle_270m, monkeypatch):
  """Each device holds only its shard; the transposed gating einsum is sharded on its right
  dimensions and the 262,144-row embedding is split, not replicated."""
  resolved, params, _ = gemma3
  kaggle_root, handle = kaggle_270m
  monkeypatch.setenv('KAGGLEHUB_CACHE', str(kaggle_root))
  mesh = _mesh('fsdp:4,tensor:2', 8)
  for source in (sources.resolve(f'kaggle:{handle}'), resolved):
    loaded = source.load_params(_abstract(resolved.spec, mesh))
    layer = loaded['layer_0']
    assert layer['mlp']['gating_einsum'].shape == (2, 2048, 640)
    assert tuple(layer['mlp']['gating_einsum'].sharding.spec) == (None, 'tensor', 'fsdp')
    assert tuple(layer['mlp']['linear'].sharding.spec) == ('tensor', 'fsdp')
    embedding = loaded['embedder']['input_embedding']
    assert tuple(embedding.sharding.spec) == ('tensor', 'fsdp')
    assert {s.data.shape for s in embedding.addressable_shards} == {(131072, 160)}
    np.testing.assert_array_equal(np.asarray(embedding),
                                  np.asarray(params['embedder']['input_embedding']))


def test_gemma1_flat_layout_loads_with_its_shardings(tmp_path, monkeypatch):
  """A synthetic checkpoint in Gemma 1's flat layout (``transformer/layer_0/...``) through a
  Kaggle handle; the model is the tiny Gemma-1-style architecture."""
  spec = models.get_model_spec('tiny')
  params = models.init_params(spec.transformer(jnp.float32), 3)
  monkeypatch.setenv('KAGGLEHUB_CACHE', str(tmp_path / 'kaggle'))
  handle = _kaggle_cache(tmp_path / 'kaggle', params, models.DEMO_TOKENIZER, flat=True,
                         handle='google/gemma/flax/tiny-test')
  saved = ocp.StandardCheckpointer().metadata(
      tmp_path / 'kaggle' / 'models' / 'google/gemma/flax/tiny-test/1/tiny-test')
  assert 'transformer/layer_0/attn/q_einsum' in saved.item_metadata.tree
  resolved = sources.resolve(f'kaggle:{handle}', model='tiny')
  mesh = _mesh('fsdp:8', 8)
  loaded = resolved.load_params(_abstract(spec, mesh))
  _assert_bit_equal(loaded, params)
  assert tuple(loaded['layer_0']['mlp']['gating_einsum'].sharding.spec) == (None, 'fsdp', None)
  assert tuple(loaded['layer_0']['attn']['q_einsum']['w'].sharding.spec) == (None, 'fsdp', None)


def _flags_config(flags: list[str], **overrides):
  """The TrainConfig of ``--name=value`` flags (each a TrainConfig field; other lines skipped)."""
  from gemma_mt.train.config import TrainConfig
  # A bare boolean flag (--packing) is true.
  kinds = {'int': int, 'float': float, 'str': str,
           'bool': lambda v: v.lower() in ('', 'true', '1')}
  types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
  values = {}
  for flag in flags:
    if flag.startswith('--'):
      key, _, value = flag[2:].partition('=')
      values[key] = kinds[types[key]](value)
  return TrainConfig(**{**values, **overrides}).validate()


def _flagfile_config(name: str, **overrides):
  """The TrainConfig of ``configs/NAME``."""
  return _flags_config((REPO / 'configs' / name).read_text().splitlines(), **overrides)


def test_memory_plan_of_real_models_on_8_devices():
  """README's ``--dry_run`` of gemma-2b (bfloat16, fsdp:8), compiled for 8 simulated CPU
  devices, no weight read: the plan README prints, row for row where it does not depend on the
  host (its memory) or on XLA's version (the activations); the parameter and optimizer shards
  are an eighth of the unsharded sizes. (Gemma 3 270M's full step is planned by the dry-run CLI
  test, its LoRA step on 8 devices by the next test.)"""
  from gemma_mt.train import loop

  # The tutorial's flagfile, with its line for 8 GPUs: gemma-2b-it, gemma-2b's architecture.
  tutorial = _flagfile_config('mtnt_gemma2b_it.flags', mesh='fsdp:8', batch_size=64)
  assert tutorial.param_dtype == tutorial.compute_dtype == 'bfloat16'
  assert tutorial.prompt_template == 'gemma_chat'
  assert _flagfile_config('mtnt_gemma2b_it.flags').mesh == 'data:1'  # one GPU as written
  assert (models.get_model_spec('gemma-2b-it').transformer_config()
          == models.get_model_spec('gemma-2b').transformer_config())
  command = readme_bash_block('--dry_run --model=gemma-2b').replace('\\\n', ' ').split()
  assert command[:4] == ['.venv/bin/python', '-m', 'gemma_mt.train', '--dry_run'], command
  # --cpu_devices_per_process=8 is the process's: this one has its 8 simulated devices.
  assert '--cpu_devices_per_process=8' in command and len(jax.devices()) == 8
  run, lines = loop.plan_memory(_flags_config(
      [f for f in command[4:] if not f.startswith('--cpu_devices_per_process=')]))
  printed = re.search(r'```\n(model gemma-2b: .*?)```', (REPO / 'README.md').read_text(),
                      re.DOTALL).group(1).splitlines()
  assert lines[0] == printed[0]
  # Each indented row by its name (a layout row's name is the whole row): README shows
  # layer_0's layouts and every row of the plan.
  rows = {line.split('  ')[1]: line for line in lines if line.startswith('  ')}
  shown = {line.split('  ')[1]: line for line in printed if line.startswith('  ')}
  assert set(shown) <= set(rows)
  for row in ('parameters', 'optimizer state', 'gradients', 'batch'):
    assert rows[row] == shown[row]
  # The activations and the total are XLA's; the device's memory, the host's.
  assert '(host memory / 8 CPU devices): ' in rows['device memory']
  plan = run.memory_plan
  assert printed[-1] == f'does not fit: {plan.advice(run.config, run.mesh)}'
  count = 2_506_434_560
  assert any(f'{count:,} parameters' in line for line in lines)
  # bfloat16: 2 bytes per parameter; all but the norm scales (replicated) split in eight.
  assert 2 * count / 8 < plan.params < 2 * count / 7.95
  assert 2 * plan.params <= plan.opt_state < 2 * plan.params * 1.01  # Adam's two moments
  assert plan.activations > 0 and plan.total == (plan.params + plan.opt_state + plan.gradients
                                                 + plan.activations + plan.batch)
  assert plan.fits() == (plan.total <= plan.device_bytes)
  unsharded = sharding.param_shardings(_mesh('data:8', 8), models.abstract_params(
      models.get_model_spec('gemma3-4b'), jnp.bfloat16))
  assert sharding.bytes_per_device(models.abstract_params(models.get_model_spec('gemma3-4b'),
                                                          jnp.bfloat16), unsharded) == 2 * 3_880_099_328


def test_memory_plan_of_a_lora_run_counts_its_quantized_base():
  """gemma3-270m LoRA (rank 16) on an int8 base over 8 simulated devices, no weight read: the
  frozen base is a row of its own, its projections one byte a parameter (int4: half a byte),
  the embedding in bfloat16; adapters and their Adam moments are all that trains."""
  from flax import traverse_util
  from gemma_mt.models import lora
  from gemma_mt.train import frozen_base, loop
  from gemma_mt.train.config import TrainConfig

  config = TrainConfig(model='gemma3-270m', mesh='fsdp:8', batch_size=8, max_seq_len=32,
                       lora_rank=16, base_dtype='bfloat16', base_quantization='int8',
                       compute_dtype='bfloat16', max_steps=10)
  run, lines = loop.plan_memory(config)
  plan = run.memory_plan
  assert any(line.startswith('  frozen base ') for line in lines)
  assert any('frozen base of 268,098,176 parameters (bfloat16, quantization int8' in line
             for line in lines)
  flat = traverse_util.flatten_dict(run.base_layout.abstract_base, sep='/')
  # Gemma 3 stores its gating einsum transposed: its model dimension, the last, is split.
  assert tuple(flat['layer_0/mlp/gating_einsum'].sharding.spec) == (None, None, 'fsdp')
  projections = sum(x.size for k, x in flat.items() if lora.einsum_name(k))
  others = sum(x.size for k, x in flat.items() if not lora.einsum_name(k))
  assert projections + others == 268_098_176
  # int8 projections + bfloat16 embedding and norms, an eighth per device (+ the scales).
  expected = (projections + 2 * others) / 8
  assert expected < plan.frozen < expected * 1.02, (plan.frozen, expected)
  adapters = models.count_params(run.abstract_state.params)
  # float32 adapters: those along the model dimension split over fsdp, the rest replicated.
  assert 4 * adapters / 8 < plan.params < 4 * adapters
  assert 2 * plan.params <= plan.opt_state <= 2 * plan.params * 1.01
  assert plan.params < plan.frozen / 8
  assert plan.total == (plan.frozen + plan.params + plan.opt_state + plan.gradients
                        + plan.activations + plan.batch)
  int4 = lora.abstract_quantized(frozen_base.layout(
      config, run.run_model.spec, run.mesh).abstract_base, 'int4', True)
  int4_bytes = sharding.bytes_per_device(int4, sharding.param_shardings(run.mesh, int4))
  assert int4_bytes < plan.frozen - 0.49 * projections / 8


def test_dry_run_cli_prints_the_plan_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  # The CPU recipe's flagfile, parsed and validated by the CLI, with a batch that cannot fit
  # (--ckpt= : the plan needs only the architecture).
  done = train_reporting_imports(
      '--flagfile=configs/mtnt_gemma3_270m.flags', '--dry_run', '--ckpt=', '--model=gemma3-270m',
      '--cpu_devices_per_process=1', '--batch_size=256', '--max_seq_len=1024',
      f'--workdir={workdir}', timeout=300)
  assert done.returncode == 1, done.stderr[-2000:]
  # A released Gemma's class imports kauldron's trainer and clu's TensorBoard writer, which
  # import TensorFlow: the command starts without it all the same.
  assert done.stdout.splitlines()[-1] == "HEAVY ['gemma', 'grain', 'jax']"
  lines = done.stdout.splitlines()[:-1]
  assert lines[0].startswith('model gemma3-270m: 268,098,176 parameters (float32, ')
  assert lines[-9] == 'memory plan per device:'
  assert lines[-2].startswith('  device memory') and 'DOES NOT FIT' in lines[-2]
  assert lines[-1].startswith(
      'does not fit: compute the loss a few positions at a time, never holding the full logits '
      '(--loss_chunk=32); recompute activations in the backward pass (--remat=block)')
  assert not workdir.exists()


@pytest.fixture
def hf_config_only(tmp_path) -> pathlib.Path:
  """A Hugging Face directory of Gemma 3 270M's config and tokenizer (no weights are read
  before these checks)."""
  directory = tmp_path / 'hf-270m'
  directory.mkdir()
  spec = models.get_model_spec('gemma3-270m')
  (directory / 'config.json').write_text(json.dumps(hf.hf_config(spec, 'bfloat16')))
  return directory


@pytest.mark.parametrize('args, message', [
    (['--ckpt=kaggle:google/gemma/flax/2b-it'], 'error: --ckpt=kaggle:google/gemma/flax/2b-it '
     'has no version and Kaggle cannot be asked (ConnectionError): pin it'),
    (['--ckpt={hf}', f'--tokenizer={models.DEMO_TOKENIZER}'],
     'has 1024 pieces but gemma3-270m has 262144 embedding rows: pass the tokenizer'),
])
def test_bad_sources_are_one_line_exit_2_nothing_written(args, message, hf_config_only, tmp_path):
  workdir = tmp_path / 'run'
  env = subprocess_env()
  env['KAGGLEHUB_CACHE'] = str(tmp_path / 'empty-cache')
  args = [a.format(hf=hf_config_only) for a in args]
  done = subprocess.run([sys.executable, '-m', 'gemma_mt.train', f'--workdir={workdir}', *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert message in last, last
  assert 'Traceback' not in done.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('flags, message', [
    (dict(ckpt='{hf}', model='gemma3-1b'), '--model=gemma3-1b (gemma3: 26 layers'),
    (dict(ckpt='{hf}'), 'has no tokenizer.model in it or beside it: pass --tokenizer=PATH'),
    (dict(ckpt='gguf:/nonexistent.gguf'), '--ckpt=gguf:/nonexistent.gguf: no such file'),
    (dict(model='gemma3-270m'), '--model=gemma3-270m is a released model: pass its weights'),
])
def test_bad_sources_stop_the_library_before_anything_is_written(flags, message, hf_config_only,
                                                                 tmp_path):
  from gemma_mt import UserError
  from gemma_mt.train import loop
  from gemma_mt.train.config import TrainConfig
  workdir = tmp_path / 'run'
  flags = {k: v.format(hf=hf_config_only) for k, v in flags.items()}
  with pytest.raises(UserError, match=re.escape(message)):
    loop.train_and_evaluate(TrainConfig(workdir=str(workdir), **flags))
  assert not workdir.exists()


def test_orbax_checkpoint_of_another_shape_names_the_parameter(tmp_path):
  params = models.init_params(models.get_model_spec('tiny').transformer(jnp.float32), 0)
  gm.ckpts.save_params(params, tmp_path / 'ckpt', wait_until_finished=True)
  resolved = sources.resolve(str(tmp_path / 'ckpt'), model='bench',
                             tokenizer=models.DEMO_TOKENIZER)
  with pytest.raises(hf.LayoutError, match=r'parameter embedder/input_embedding has shape '
                     r'\(1024, 128\) in the checkpoint and \(1024, 512\) in the model'):
    resolved.load_params(_abstract(resolved.spec, _mesh()))


def test_gguf_metadata_reader_reads_what_the_gguf_package_reads(tmp_path):
  """``read_gguf`` against ``gguf.GGUFReader``: every value type, string and number arrays, and
  float32, float16 and quantized tensors at a non-default alignment."""
  import gguf as gguf_lib
  path = tmp_path / 'types.gguf'
  writer = gguf_lib.GGUFWriter(str(path), 'gemma3')
  writer.add_custom_alignment(256)
  writer.add_string('general.name', 'Gemma 3 test — é')
  writer.add_bool('a.bool', True)
  writer.add_int8('a.int8', -3)
  writer.add_uint16('a.uint16', 65000)
  writer.add_int64('a.int64', -(1 << 40))
  writer.add_float32('a.float32', 0.25)
  writer.add_float64('a.float64', 1e-300)
  writer.add_array('tokenizer.ggml.tokens', ['<pad>', '▁le', '\n', ''])
  writer.add_array('tokenizer.ggml.scores', [0.0, -1.5, -2.0, 3.25])
  writer.add_array('tokenizer.ggml.token_type', [3, 1, 6, 1])
  rng = np.random.default_rng(0)
  writer.add_tensor('token_embd.weight', rng.standard_normal((4, 32)).astype(np.float32))
  writer.add_tensor('output_norm.weight', rng.standard_normal((32,)).astype(np.float16))
  quantized = gguf_lib.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32),
                                       gguf_lib.GGMLQuantizationType.Q8_0)
  writer.add_tensor('blk.0.ffn_up.weight', quantized, raw_shape=quantized.shape,
                    raw_dtype=gguf_lib.GGMLQuantizationType.Q8_0)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

  fields, tensors = gguf.read_gguf(str(path))
  reader = gguf_lib.GGUFReader(str(path))
  expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith('GGUF.')}
  assert list(fields) == list(expected)
  for key, value in expected.items():
    assert np.asarray(fields[key]).tolist() == np.asarray(value).tolist(), key
  assert isinstance(fields['tokenizer.ggml.tokens'], list) and fields['a.float64'] == 1e-300
  assert list(tensors) == [t.name for t in reader.tensors]
  for theirs in reader.tensors:
    ours = tensors[theirs.name]
    assert ours.tensor_type == theirs.tensor_type and ours.shape == tuple(theirs.shape.tolist())
    assert ours.data.dtype == theirs.data.dtype and np.array_equal(ours.data, theirs.data)
  with pytest.raises(gguf.GGUFError, match='is not a readable GGUF file'):
    path.write_bytes(b'GGUF' + bytes(40))
    gguf.GGUFFile(str(path))


def test_gguf_of_another_architecture_is_refused(tmp_path):
  import gguf as gguf_lib
  path = tmp_path / 'llama.gguf'
  writer = gguf_lib.GGUFWriter(str(path), 'llama')
  writer.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(gguf.GGUFError, match="architecture 'llama' is not supported"):
    sources.resolve(f'gguf:{path}')


@pytest.fixture(scope='module')
def mtnt_splits(mtnt_valid_tsv, tmp_path_factory) -> str:
  """Train and valid files of real MTNT pairs (disjoint slices of the shared validation file)."""
  lines = mtnt_valid_tsv.read_text(encoding='utf-8').splitlines(keepends=True)
  directory = tmp_path_factory.mktemp('mtnt')
  (directory / 'train.tsv').write_text(''.join(lines[200:280]), encoding='utf-8')
  (directory / 'valid.tsv').write_text(''.join(lines[100:108]), encoding='utf-8')  # 1 batch
  return f'tsv:{directory}/{{split}}.tsv'


def _eval_loss(model, params, tokenizer_path: str, dataset: str) -> float:
  """Mean target-token loss over the valid split, as the run's evaluation computes it."""
  from gemma_mt.data import pipeline, records
  from gemma_mt.data import sources as data_sources
  from gemma_mt.train import step

  tokenizer = GemmaTokenizer(tokenizer_path)
  pairs, _ = data_sources.read_pairs(data_sources.DatasetSpec.parse(dataset, tsv_quoting='none'),
                                     'valid')
  examples, _ = pipeline.encode_examples(pairs, tokenizer, records.PromptFormat(), 48)
  eval_fn = jax.jit(lambda p, b: step.eval_step(p, b, model=model, pad_id=0))
  loss_sum = num_tokens = 0.0
  for batch in pipeline.eval_dataset(examples, max_seq_len=48, pad_id=0, global_batch_size=8):
    sums = eval_fn(params, batch)
    loss_sum, num_tokens = loss_sum + float(sums.loss_sum), num_tokens + float(sums.num_tokens)
  return loss_sum / num_tokens


def _metrics(workdir: pathlib.Path) -> dict[int, dict[str, float]]:
  by_step: dict[int, dict[str, float]] = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    by_step.setdefault(record['step'], {}).update(record)
  return by_step


def test_finetune_270m_lowers_eval_loss_and_exports(gemma3, mtnt_splits, tmp_path):
  """The README's fine-tune of the real model, shortened (and with SGD): the CLI from the GGUF
  file lowers the evaluation loss; the trained weights, restored, give the run's evaluation
  loss; transformers reads the Hugging Face export as the trained model. (The other sources load
  the same weights bit for bit, ``test_orbax_kaggle_and_hf_sources_load_back_bit_equal``; exact
  resume is the same code for every model, the demo model's kill tests show it.)"""
  from gemma_mt.export import export_params
  from gemma_mt.train import checkpoint

  resolved, params, model = gemma3
  # SGD, the tutorial's optimizer: no optimizer state to save, a third of Adam's checkpoint (the
  # optimizers themselves are tested on the demo model).
  flags = dict(dataset=mtnt_splits, tsv_quoting='none', batch_size=4, eval_batch_size=8,
               max_seq_len=48, optimizer='sgd', learning_rate=0.05, lr_schedule='constant',
               warmup_steps=0, log_every_n=1, save_every_n=100, num_translations=0,
               bleu_examples=0, max_steps=3, eval_every_n=3, cpu_devices_per_process=1)
  cli = tmp_path / 'cli'
  done = subprocess.run(
      [sys.executable, '-m', 'gemma_mt.train', '--ckpt=gguf:gemma3-270m', f'--workdir={cli}',
       *(f'--{k}={v}' for k, v in flags.items())],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'final eval_loss' in done.stdout
  abstract = models.abstract_params(resolved.spec, jnp.float32)
  trained_params = checkpoint.restore_params(str(cli), abstract)

  metrics = _metrics(cli)
  assert [s for s in metrics if 'train_loss' in metrics[s]] == [1, 2, 3]
  untrained = _eval_loss(model, params, resolved.tokenizer_path, mtnt_splits)
  assert metrics[3]['eval_loss'] < untrained - 0.3, (untrained, metrics)
  assert metrics[3]['eval_loss'] == pytest.approx(
      _eval_loss(model, trained_params, resolved.tokenizer_path, mtnt_splits), rel=1e-5)
  # The run's config records the source; its tokenizer is kept in the workdir.
  saved = json.loads((cli / 'checkpoints' / '3' / 'config' / 'metadata').read_text())
  assert saved['ckpt'] == 'gguf:gemma3-270m' and saved['model'] == 'gemma3-270m'
  assert (cli / 'tokenizer.model').read_bytes() == pathlib.Path(
      resolved.tokenizer_path).read_bytes()

  # The Hugging Face export: transformers reads the trained model. (The gemma library's layout
  # is the same for every model: test_checkpoint's export test reads it with gemma.)
  hf_export = tmp_path / 'export-hf'
  export_params(str(cli), str(hf_export), export_format='hf')
  assert json.loads((hf_export / 'config.json').read_text())['model_type'] == 'gemma3_text'
  ours = _logits(model, trained_params)
  theirs = _reference_logits(str(hf_export), tmp_path)
  assert np.abs(ours - theirs).max() < 1e-4
  assert not np.allclose(ours, _logits(model, params), atol=1e-3)  # it is the trained model


def test_lora_on_270m_matches_peft_and_transformers_and_int8_base_stays_close(
    gemma3, mtnt_splits, tmp_path):
  """Adapters (rank 4, alpha 8, every projection, random non-zero values) on the real model:
  PEFT applying the exported adapter files to the Hugging Face form of the base, and
  transformers reading the merged export, give gemma_mt's adapted logits. An int8 base (zero
  adapters) stays within 0.05 nats of the bfloat16 base's evaluation loss on MTNT."""
  from gemma_mt.export import _write_peft
  from gemma_mt.models import lora
  from gemma_mt.train.config import TrainConfig

  resolved, params, model = gemma3
  config = TrainConfig(workdir=str(tmp_path / 'unused'), ckpt='gguf:gemma3-270m', lora_rank=4,
                       lora_alpha=8.0)
  adapted = lora.adapt(model, config.lora_spec())
  adapters = lora.split(jax.eval_shape(lambda: models.init_params(adapted, 0)))[1]
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  adapters = jax.tree.unflatten(tree, [0.02 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
  ours = np.asarray(adapted.apply({'params': lora.combine(params, adapters)},
                                  jnp.asarray([TOKENS])).logits[0])
  assert np.abs(ours - _logits(model, params)).max() > 0.1  # the adapters change the model

  def hf_dir(name: str, weights) -> str:
    directory = tmp_path / name
    directory.mkdir()
    (directory / 'config.json').write_text(json.dumps(hf.hf_config(resolved.spec, 'float32')))
    hf.write_safetensors(str(directory), hf.hf_tensors(weights, resolved.spec.transformer_config()),
                         np.float32)
    return str(directory)

  base_dir = hf_dir('base', params)
  merged_dir = hf_dir('merged', lora.fold(lora.combine(params, adapters), config.lora_spec(),
                                          True, jnp.float32))
  peft_dir = _write_peft(str(tmp_path / 'peft'), adapters, config)
  theirs = _reference_logits(base_dir, tmp_path, extra=(
      f'--adapter={peft_dir}', f'--model={merged_dir}', '--adapter='))
  assert np.abs(ours - theirs[0]).max() < 1e-4  # PEFT on the base
  assert np.abs(ours - theirs[1]).max() < 1e-4  # transformers on the merged export

  zero = jax.tree.map(jnp.zeros_like, adapters)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  losses = {name: _eval_loss(adapted, lora.combine(base, zero), resolved.tokenizer_path,
                             mtnt_splits)
            for name, base in (('bf16', bf16), ('int8', lora.quantize(params, 'int8', True)),
                               ('int4', lora.quantize(params, 'int4', True)))}
  assert abs(losses['int8'] - losses['bf16']) < 0.05, losses
  assert abs(losses['int4'] - losses['bf16']) > abs(losses['int8'] - losses['bf16']), losses

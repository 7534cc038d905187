"""A model ready to translate: a trained run's checkpoint, or a released model's weights."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from gemma_mt import errors
from gemma_mt import models
from gemma_mt.data import records
from gemma_mt.data.tokenizer import GemmaTokenizer
from gemma_mt.models import sources as model_sources
from gemma_mt.train import checkpoint
from gemma_mt.train import frozen_base


class InferenceError(errors.UserError):
  """A workdir, step or source with nothing to translate with."""


@dataclasses.dataclass(frozen=True)
class InferenceModel:
  """The flax module, its parameters, tokenizer and prompt format, and where they came from."""

  model: Any
  params: Any
  tokenizer: GemmaTokenizer
  prompt_format: records.PromptFormat
  description: str
  step: int | None = None


def _single_device(abstract_params: Any) -> Any:
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      abstract_params)


def from_workdir(workdir: str, step: int | str | None = None) -> InferenceModel:
  """The parameters a run saved at ``step``: its latest checkpoint by default, ``'best'`` for
  its best evaluation (``RunCheckpoints.pick_step``)."""
  directory = os.path.join(workdir, 'checkpoints')
  no_checkpoint = InferenceError(f'--workdir={workdir} holds no checkpoint: train first, or '
                                 'pass a released model with --ckpt')
  if not os.path.isdir(directory):
    raise no_checkpoint
  store = checkpoint.RunCheckpoints.for_reading(directory)
  try:
    if not store.all_steps():  # a run stopped before its first save
      raise no_checkpoint
    step = store.pick_step(step, workdir)
    config = store.saved_config(step)
  finally:
    store.close()
  spec = models.get_model_spec(config.model)
  if config.lora:
    # The base read again from the run's --ckpt, the adapters folded into it: a plain model.
    model = spec.transformer(jnp.float32)
    params = frozen_base.merged_lora_params(workdir, step, config, jnp.float32)
  else:
    model = spec.transformer(jnp.dtype(config.param_dtype))
    abstract = _single_device(models.abstract_params(spec, jnp.dtype(config.param_dtype)))
    params = checkpoint.restore_params(os.path.join(directory, str(step)), abstract,
                                        f'--workdir={workdir} at step {step}')
  tokenizer_path = os.path.join(workdir, 'tokenizer.model')
  if not os.path.isfile(tokenizer_path):
    tokenizer_path = spec.tokenizer_path
  return InferenceModel(model, params, GemmaTokenizer(tokenizer_path),
                        records.PromptFormat.from_template(config.prompt_template),
                        f'{workdir} at step {step} ({config.model})', step)


def from_source(ckpt: str, model: str = '', tokenizer: str = '',
                prompt_template: str = '') -> InferenceModel:
  """A released model as it is (``--ckpt``); its prompts are Gemma's dialog turns if it is
  instruction-tuned, the plain prompt otherwise (or ``prompt_template``)."""
  run_model = model_sources.resolve_run_model(model, ckpt, tokenizer)
  spec = run_model.spec
  abstract = _single_device(models.abstract_params(spec, jnp.float32))
  params = run_model.source.load_params(abstract)
  template = prompt_template or ('gemma_chat' if spec.instruction_tuned else 'plain')
  return InferenceModel(spec.transformer(jnp.float32), params,
                        GemmaTokenizer(run_model.tokenizer_path),
                        records.PromptFormat.from_template(template), f'{ckpt} ({spec.name})')

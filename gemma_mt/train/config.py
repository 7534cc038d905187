"""TrainConfig: every setting of a training run, frozen, validated, JSON-serializable.

It is saved in every checkpoint, so that a resumed run can tell which changes are safe. This
module imports neither jax nor the model code: validating a config is instant and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

from gemma_mt import errors
from gemma_mt import models
from gemma_mt.data import records
from gemma_mt.data import sources
from gemma_mt.models import lora_spec as lora_lib
from gemma_mt.models import sources as model_sources
from gemma_mt.train import mesh_spec

OPTIMIZERS = ('sgd', 'adamw', 'adafactor')
LR_SCHEDULES = ('constant', 'cosine', 'linear')
BEST_METRICS = ('loss', 'bleu')
PARAM_DTYPES = ('float32', 'bfloat16')


class ConfigError(errors.UserError):
  """A setting that cannot run; the message names the flag and the fix."""


def workdir_not_writable(workdir: str, error: OSError) -> ConfigError:
  return ConfigError(f'--workdir={workdir} is not writable ({error.strerror}): choose a directory '
                     'you can write to')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run. Field names are the ``--flag`` names of ``python -m gemma_mt.train``.

  ``batch_size`` is the global batch (all processes together). ``max_steps=0`` trains for
  ``num_epochs`` epochs; ``num_epochs=0`` repeats the data until ``max_steps``.
  """

  workdir: str = 'runs/demo'
  model: str = ''
  ckpt: str = ''
  tokenizer: str = ''
  dataset: str = 'demo'
  tsv_quoting: str = 'csv'
  tfds_data_dir: str = ''
  tfds_manual_dir: str = ''
  train_split: str = 'train'
  eval_split: str = 'valid'
  prompt_template: str = 'plain'
  too_long: str = 'drop'
  packing: bool = False
  max_seq_len: int = 48
  batch_size: int = 32
  eval_batch_size: int = 64
  num_epochs: int = 0
  max_steps: int = 1600
  optimizer: str = 'adamw'
  learning_rate: float = 3e-3
  lr_schedule: str = 'cosine'
  warmup_steps: int = 100
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0
  grad_accum_steps: int = 1
  param_dtype: str = 'float32'
  compute_dtype: str = 'float32'
  remat: str = 'none'
  loss_chunk: int = 0
  mesh: str = ''
  peak_tflops_per_device: float = 0.0
  eval_every_n: int = 200
  save_every_n: int = 400
  save_every_minutes: float = 0.0
  log_every_n: int = 20
  keep_checkpoints: int = 2
  bleu_every_n: int = 0
  bleu_examples: int = -1
  best_metric: str = 'loss'
  early_stopping_patience: int = 0
  num_translations: int = 6
  max_new_tokens: int = 48
  seed: int = 0
  init_from: str = ''
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_targets: str = 'all'
  base_dtype: str = ''
  base_quantization: str = 'none'

  # Fields that fix what the saved parameters are (their shapes and dtypes, and for LoRA runs
  # the function they add to the base): a checkpoint resumes only if they match.
  SHAPE_FIELDS = ('model', 'param_dtype', 'lora_rank', 'lora_alpha', 'lora_targets',
                  'base_dtype', 'base_quantization')

  @property
  def lora(self) -> bool:
    """Whether only LoRA adapters train, on a frozen base."""
    return self.lora_rank > 0

  def lora_spec(self) -> lora_lib.LoraSpec | None:
    """The adapters of a LoRA run (``--lora_alpha=0``: the rank, a scale of 1); else None."""
    if not self.lora:
      return None
    return lora_lib.LoraSpec(self.lora_rank, self.lora_alpha or float(self.lora_rank),
                             lora_lib.parse_targets(self.lora_targets))

  @property
  def frozen_dtype(self) -> str:
    """The dtype the frozen base is held in (before any quantization)."""
    return self.base_dtype or self.param_dtype

  @property
  def model_name(self) -> str:
    """``--model``, or ``tiny`` when neither it nor ``--ckpt`` names one (resolved runs set it)."""
    return model_sources.model_name(self.model, self.ckpt)

  def validate(self) -> TrainConfig:
    """Raises ConfigError naming the first bad flag; returns self when all are fine."""
    if not self.workdir:
      raise ConfigError('--workdir is required: pass a directory for checkpoints and metrics')
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise ConfigError(f'--workdir={self.workdir} is a file: pass a directory path')
    if self.model and self.model not in models.MODELS:
      raise ConfigError(f'--model={self.model!r} is unknown: use one of {", ".join(models.MODELS)}')
    if self.ckpt:
      try:
        model_sources.CheckpointSource.parse(self.ckpt)
      except model_sources.SourceError as e:
        raise ConfigError(str(e)) from None
    if self.tokenizer and not os.path.isfile(self.tokenizer):
      raise ConfigError(f'--tokenizer={self.tokenizer} does not exist: pass a sentencepiece '
                        'tokenizer.model file')
    try:
      self.dataset_spec()
    except sources.SourceError as e:
      raise ConfigError(str(e)) from None
    for name in ('max_seq_len', 'batch_size', 'eval_batch_size', 'grad_accum_steps', 'eval_every_n',
                 'save_every_n', 'log_every_n', 'keep_checkpoints'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'--{name} must be positive, got {getattr(self, name)}')
    for name in ('num_epochs', 'max_steps', 'warmup_steps', 'num_translations',
                 'max_new_tokens', 'seed', 'loss_chunk', 'early_stopping_patience'):
      if getattr(self, name) < 0:
        raise ConfigError(f'--{name} must be zero or positive, got {getattr(self, name)}')
    if self.batch_size % self.grad_accum_steps:
      raise ConfigError(f'--batch_size={self.batch_size} is not divisible by '
                        f'--grad_accum_steps={self.grad_accum_steps}')
    try:
      mesh_spec.MeshSpec.parse(self.mesh)
    except mesh_spec.MeshError as e:
      raise ConfigError(str(e)) from None
    if self.bleu_every_n < 0 or self.bleu_examples < -1:
      raise ConfigError('--bleu_every_n must be 0 (with every evaluation) or positive, and '
                        '--bleu_examples -1 (all), 0 (off) or positive')
    if self.best_metric == 'bleu' and self.bleu_examples == 0:
      raise ConfigError('--best_metric=bleu needs BLEU during training: set --bleu_examples to '
                        '-1 (all validation pairs) or a positive number')
    if self.save_every_minutes < 0:
      raise ConfigError('--save_every_minutes must be 0 (off) or positive')
    if self.peak_tflops_per_device < 0:
      raise ConfigError('--peak_tflops_per_device must be 0 (look it up) or positive')
    if self.packing and self.max_steps == 0:
      raise ConfigError('--packing needs --max_steps: the number of packed batches in an epoch '
                        'is not known in advance')
    if self.num_epochs == 0 and self.max_steps == 0:
      raise ConfigError('--num_epochs=0 and --max_steps=0 would train forever: set one of them')
    if not self.learning_rate > 0:
      raise ConfigError(f'--learning_rate must be positive, got {self.learning_rate}')
    if self.weight_decay < 0 or self.grad_clip_norm < 0:
      raise ConfigError('--weight_decay and --grad_clip_norm must be zero (off) or positive')
    self._validate_lora()
    choices = {
        'optimizer': OPTIMIZERS,
        'lr_schedule': LR_SCHEDULES,
        'param_dtype': PARAM_DTYPES,
        'compute_dtype': PARAM_DTYPES,
        'remat': models.REMAT_POLICIES,
        'prompt_template': records.PROMPT_TEMPLATES,
        'too_long': records.TOO_LONG_POLICIES,
        'best_metric': BEST_METRICS,
    }
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(
            f'--{name}={getattr(self, name)!r} is unknown: use one of {", ".join(allowed)}')
    return self

  def _validate_lora(self) -> None:
    if self.lora_rank < 0:
      raise ConfigError(f'--lora_rank must be 0 (full fine-tuning) or positive, got '
                        f'{self.lora_rank}')
    if self.lora_alpha < 0:
      raise ConfigError(f'--lora_alpha must be 0 (the rank) or positive, got {self.lora_alpha}')
    try:
      lora_lib.parse_targets(self.lora_targets)
    except lora_lib.LoraError as e:
      raise ConfigError(str(e)) from None
    if self.base_dtype and self.base_dtype not in PARAM_DTYPES:
      raise ConfigError(f'--base_dtype={self.base_dtype!r} is unknown: use one of '
                        f'{", ".join(PARAM_DTYPES)} (empty: --param_dtype)')
    if self.base_quantization not in lora_lib.QUANTIZATIONS:
      raise ConfigError(f'--base_quantization={self.base_quantization!r} is unknown: use one of '
                        f'{", ".join(lora_lib.QUANTIZATIONS)}')
    if not self.lora:
      changed = [name for name, default in (('lora_alpha', 0.0), ('lora_targets', 'all'),
                                            ('base_dtype', ''), ('base_quantization', 'none'))
                 if getattr(self, name) != default]
      if changed:
        raise ConfigError(f'--{changed[0]} applies to LoRA runs only: set --lora_rank too, or '
                          'leave it out')

  def check_paths(self) -> None:
    """Raises ConfigError if the run could not write its workdir or read a split's file.

    The checks of a run (a dry run needs neither) that touch only the file system, so that the
    CLI makes them before it imports jax and gemma. Nothing is created: the workdir's nearest
    existing directory takes a uniquely named file, removed at once.
    """
    existing = os.path.abspath(self.workdir)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    try:
      handle, probe = tempfile.mkstemp(prefix='.gemma_mt-write-probe-', dir=existing)
      os.close(handle)
      os.remove(probe)
    except OSError as e:
      raise workdir_not_writable(self.workdir, e) from None
    spec = self.dataset_spec()
    for split in (self.train_split, self.eval_split):
      try:
        sources.check_split_file(spec, split)
      except sources.SourceError as e:
        raise ConfigError(str(e)) from None

  def dataset_spec(self) -> sources.DatasetSpec:
    """The parsed ``--dataset`` with its options."""
    return sources.DatasetSpec.parse(
        self.dataset, tsv_quoting=self.tsv_quoting, tfds_data_dir=self.tfds_data_dir or None,
        tfds_manual_dir=self.tfds_manual_dir or None)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
    """A config from saved values; unknown keys (from a newer version) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

  def changes_from(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (other's value, this value)}`` for every field that differs."""
    return {
        f.name: (getattr(other, f.name), getattr(self, f.name))
        for f in dataclasses.fields(self)
        if getattr(self, f.name) != getattr(other, f.name)
    }

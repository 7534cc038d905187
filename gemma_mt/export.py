"""``python -m gemma_mt.export --workdir=W --out=DIR [--format=gemma|hf]``: a run's parameters.

``--format=gemma`` (default): ``DIR/params`` is an Orbax checkpoint of the parameters as host
arrays (no device sharding recorded) in the gemma library's layout (the nesting
``gm.nn.Transformer`` takes; ``gm.ckpts.load_params`` or
``orbax.checkpoint.PyTreeCheckpointer().restore`` read it), ``DIR/config.json`` the run's config
and ``DIR/tokenizer.model`` its tokenizer.

``--format=hf``: a Hugging Face directory that ``transformers`` loads with
``AutoModelForCausalLM.from_pretrained(DIR)``: ``config.json``, ``model.safetensors`` (or shards
with an index) in the parameters' dtype, ``tokenizer.model``, and the run's config as
``gemma_mt_config.json``.

A LoRA run exports either ``--merge_lora``: its base (read again from the run's ``--ckpt``)
with the adapters folded in, as a full model in either format (in ``--base_dtype``), or
``--adapters_only``: PEFT's ``adapter_model.safetensors`` and ``adapter_config.json``, which
``peft.PeftModel.from_pretrained`` applies to the Hugging Face form of the same base.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from absl import app
from absl import flags
import numpy as np

from gemma_mt import errors
from gemma_mt import tensorflow_startup

FORMATS = ('gemma', 'hf')
RUN_CONFIG_FILE = 'gemma_mt_config.json'


def export_params(workdir: str, out: str, step: int | str | None = None,
                  export_format: str = 'gemma', *, merge_lora: bool = False,
                  adapters_only: bool = False) -> str:
  """Writes the parameters of ``workdir``'s checkpoint ``step`` to ``out`` (default: the latest;
  ``'best'``: the best evaluation, ``RunCheckpoints.pick_step``).

  A LoRA run needs ``merge_lora`` (the full model, base and adapters folded) or
  ``adapters_only`` (PEFT's adapter files). Returns the path written (the parameters' folder,
  or the Hugging Face or PEFT directory). Raises UserError naming the folder when it cannot.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from gemma_mt import models  # pylint: disable=import-outside-toplevel
  from gemma_mt.models import hf  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import checkpoint  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import frozen_base  # pylint: disable=import-outside-toplevel
  from gemma_mt.train import loop  # pylint: disable=import-outside-toplevel

  if export_format not in FORMATS:
    raise errors.UserError(f'--format={export_format!r} is unknown: use one of {", ".join(FORMATS)}')
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise errors.UserError(f'--workdir={workdir} has no checkpoints/: pass a run directory')
  if os.path.exists(out) and os.listdir(out):
    raise errors.UserError(f'--out={out} exists and is not empty: choose a new folder')
  store = checkpoint.RunCheckpoints.for_reading(directory)
  try:
    step = store.pick_step(step, workdir)
    config = store.saved_config(step)
  finally:
    store.close()
  spec = models.get_model_spec(config.model_name)
  tokenizer = os.path.join(workdir, loop.WORKDIR_TOKENIZER)
  if not os.path.isfile(tokenizer):  # runs of gemma_mt before the workdir kept its tokenizer
    tokenizer = spec.tokenizer_path
  if config.lora and merge_lora == adapters_only:
    raise errors.UserError(f'--workdir={workdir} is a LoRA run: pass --merge_lora (the base '
                           'with the adapters folded in) or --adapters_only (PEFT adapters)')
  if not config.lora and (merge_lora or adapters_only):
    raise errors.UserError(f'--workdir={workdir} is not a LoRA run: leave out --merge_lora and '
                           '--adapters_only')
  dtype = config.frozen_dtype if config.lora else config.param_dtype
  if config.lora and adapters_only:
    return _write_peft(out, frozen_base.restore_lora_run(workdir, step, config)[2], config)
  if config.lora:
    params: Any = frozen_base.merged_lora_params(workdir, step, config, jax.numpy.dtype(dtype))
  else:
    abstract = models.abstract_params(spec, jax.numpy.dtype(config.param_dtype))
    params = checkpoint.restore_params(os.path.join(directory, str(step)), abstract,
                                        f'--workdir={workdir} at step {step}')
  os.makedirs(out, exist_ok=True)
  out = os.path.abspath(out)
  shutil.copyfile(tokenizer, os.path.join(out, 'tokenizer.model'))
  if export_format == 'hf':
    with open(os.path.join(out, hf.CONFIG_FILE), 'w', encoding='utf-8') as f:
      json.dump(hf.hf_config(spec, dtype), f, indent=2)
    with open(os.path.join(out, RUN_CONFIG_FILE), 'w', encoding='utf-8') as f:
      f.write(config.to_json())
    hf.write_safetensors(out, hf.hf_tensors(params, spec.transformer_config()),
                         jax.numpy.dtype(dtype))
    return out
  target = os.path.join(out, 'params')
  # Host arrays, whatever the source (a LoRA merge is on the devices): the checkpoint then
  # records no device sharding, and loads as it is on any device count or platform. Rebound,
  # so that the device copies can be freed before the write.
  params = jax.device_get(params)
  ocp.PyTreeCheckpointer().save(target, params)
  with open(os.path.join(out, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json())
  return target


def _write_peft(out: str, adapters: Any, config: Any) -> str:
  """PEFT's adapter files of a LoRA run's ``adapters`` in ``out``."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from gemma_mt.models import hf  # pylint: disable=import-outside-toplevel

  tensors = dict(hf.peft_tensors(adapters))
  os.makedirs(out, exist_ok=True)
  out = os.path.abspath(out)
  lora_spec = config.lora_spec()
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(out, hf.PEFT_WEIGHTS_FILE), metadata={'format': 'pt'})
  with open(os.path.join(out, hf.PEFT_CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(hf.peft_config(lora_spec.rank, lora_spec.alpha, list(tensors), config.ckpt), f,
              indent=2)
  with open(os.path.join(out, RUN_CONFIG_FILE), 'w', encoding='utf-8') as f:
    f.write(config.to_json())
  return out


def main(argv: list[str]) -> None:
  values = flags.FLAGS
  with errors.exit_on_user_error():
    path = export_params(values.workdir, values.out, values.step, values.format,
                         merge_lora=values.merge_lora, adapters_only=values.adapters_only)
  print(f'wrote {path}')


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The run directory.', required=True)
  flags.DEFINE_string('out', None, 'A new (or empty) folder for the export.', required=True)
  flags.DEFINE_string('step', None, 'Checkpoint step to export, or best: the best evaluation '
                      'by the run\'s --best_metric (default: the latest).')
  flags.DEFINE_enum('format', 'gemma', FORMATS, 'gemma: an Orbax checkpoint in the gemma '
                    'library\'s layout; hf: a Hugging Face directory (safetensors).')
  flags.DEFINE_boolean('merge_lora', False, 'A LoRA run: export its base with the adapters '
                       'folded in, as a full model in --format.')
  flags.DEFINE_boolean('adapters_only', False, 'A LoRA run: export the adapters alone as PEFT\'s '
                       'adapter_model.safetensors and adapter_config.json (for the Hugging Face '
                       'form of the same base; --format does not apply).')


if __name__ == '__main__':
  tensorflow_startup.set_environment()  # before main imports gemma
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it reads
  define_flags()
  app.run(main, flags_parser=errors.parse_flags)

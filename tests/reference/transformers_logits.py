"""Float32 logits of a Gemma model by Hugging Face transformers on CPU PyTorch: the independent
reference that gemma_mt's layout conversions are checked against.

Runs in the side environment that ``scripts/setup_reference_env.sh`` makes (Python 3.11, torch
CPU, transformers, gguf), as a subprocess of the tests:

    python transformers_logits.py --model=DIR_OR_GGUF_FILE --tokens=2,818,5279 --out=logits.npy

``--adapter=DIR`` (one per ``--model``, ``''`` for none) applies PEFT LoRA adapters to that model
with ``peft.PeftModel.from_pretrained``. With several ``--model``s the output is ``[models, T, V]``.
"""

import argparse
import os

import numpy as np
import torch
import transformers


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', required=True, action='append',
                      help='a Hugging Face directory or a .gguf file (repeatable)')
  parser.add_argument('--adapter', action='append', default=[],
                      help='a PEFT adapter directory for the --model of the same position')
  parser.add_argument('--tokens', required=True, help='comma-separated token ids, BOS first')
  parser.add_argument('--out', required=True, help='where to write float32 logits [T, V] (.npy)')
  args = parser.parse_args()
  adapters = args.adapter + [''] * (len(args.model) - len(args.adapter))
  tokens = torch.tensor([[int(t) for t in args.tokens.split(',')]])
  outputs = []
  for path, adapter in zip(args.model, adapters):
    model = load(path)
    if adapter:
      import peft  # pylint: disable=import-outside-toplevel
      model = peft.PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
      outputs.append(model(tokens).logits[0].float().numpy())
    print(type(model).__name__, outputs[-1].shape)
  np.save(args.out, outputs[0] if len(outputs) == 1 else np.stack(outputs))


def load(path: str):
  if path.endswith('.gguf'):
    _parse_gguf_once(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _parse_gguf_once(path: str) -> None:
  """transformers parses the file twice, for the config and for the weights (about 13 s each:
  the reader builds the 262,144-piece vocabulary in Python): the second parse gets the first's
  reader (read-only, a memory map). ``load_gguf_checkpoint`` imports ``GGUFReader`` when called."""
  import gguf  # pylint: disable=import-outside-toplevel
  original = gguf.GGUFReader
  reader = original(path)
  gguf.GGUFReader = lambda file, *args, **kwargs: (
      reader if os.path.abspath(file) == os.path.abspath(path) and not args and not kwargs
      else original(file, *args, **kwargs))


if __name__ == '__main__':
  main()

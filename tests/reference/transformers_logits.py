"""Float32 logits of a Gemma model by Hugging Face transformers on CPU PyTorch: the independent
reference that gemma_mt's layout conversions are checked against.

Runs in the side environment that ``scripts/setup_reference_env.sh`` makes (Python 3.11, torch
CPU, transformers, gguf), as a subprocess of the tests:

    python transformers_logits.py --model=DIR_OR_GGUF_FILE --tokens=2,818,5279 --out=logits.npy
"""

import argparse
import os

import numpy as np
import torch
import transformers


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', required=True, help='a Hugging Face directory or a .gguf file')
  parser.add_argument('--tokens', required=True, help='comma-separated token ids, BOS first')
  parser.add_argument('--out', required=True, help='where to write float32 logits [T, V] (.npy)')
  args = parser.parse_args()
  if args.model.endswith('.gguf'):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(args.model), gguf_file=os.path.basename(args.model),
        dtype=torch.float32)
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
  model.eval()
  tokens = torch.tensor([[int(t) for t in args.tokens.split(',')]])
  with torch.no_grad():
    logits = model(tokens).logits[0].float().numpy()
  np.save(args.out, logits)
  print(type(model).__name__, logits.shape)


if __name__ == '__main__':
  main()

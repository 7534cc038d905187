#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs gemma_mt into it (editable).
#   bash scripts/setup_env.sh        the library and its CLIs
#   bash scripts/setup_env.sh test   the same plus the test tools, the Gemma 3 270M GGUF package,
#                                    and .venv-ref (transformers on CPU PyTorch, the reference)
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' >/dev/null 2>&1; then
    echo python3.12; return
  fi
  # pyenv installs whose global version is another Python: ask for a 3.12 explicitly.
  if command -v pyenv >/dev/null 2>&1; then
    local version
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | tail -n 1 || true)
    if [ -n "$version" ]; then
      echo "$(pyenv root)/versions/$version/bin/python3.12"; return
    fi
  fi
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo python3; return
  fi
  echo "error: Python 3.12 not found: install it (python3.12 on PATH, or pyenv install 3.12)" >&2
  exit 1
}

if [ ! -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
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

# Sourced by the set-up scripts: find_python X.Y prints a Python X.Y interpreter or fails.
find_python() {
  local want=$1 major=${1%%.*} minor=${1#*.}
  if command -v "python$want" >/dev/null 2>&1 && "python$want" -c '' >/dev/null 2>&1; then
    echo "python$want"; return
  fi
  # pyenv installs whose global version is another Python: ask for this one explicitly.
  if command -v pyenv >/dev/null 2>&1; then
    local version
    version=$(pyenv versions --bare 2>/dev/null | grep -E "^$major\\.$minor(\\.[0-9]+)?\$" | tail -n 1 || true)
    if [ -n "$version" ]; then
      echo "$(pyenv root)/versions/$version/bin/python$want"; return
    fi
  fi
  if command -v python3 >/dev/null 2>&1 && python3 -c "import sys; sys.exit(sys.version_info[:2] != ($major, $minor))"; then
    echo python3; return
  fi
  echo "error: Python $want not found: install it (python$want on PATH, or pyenv install $want)" >&2
  exit 1
}

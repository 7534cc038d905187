#!/usr/bin/env bash
# The prepared GPU benchmark: one script for a lent GPU machine (an H200: about 6 minutes), whose
# printout replaces the GPU tables of BENCHMARKS.md. `--cpu` runs the same scripts with tiny shapes
# here, in seconds (CI runs it so that it does not rot).
#
#   bash bench/gpu_suite.sh          # on the GPU machine (python3 there has jax with CUDA)
#   bash bench/gpu_suite.sh --cpu    # anywhere: tiny shapes, .venv's python
#
# On the GPU: the training step of the Gemma 2B and Gemma 3 1B architectures (random weights,
# bfloat16, AdamW) at the largest batch of 32/16/8 × 512 whose compiled step fits the device,
# with MFU against the bfloat16 matmul rate measured in the same run and the published peak;
# the loss from full logits against --loss_chunk (Gemma 3 1B shape, 32 × 256); decoding
# throughput (Gemma 3 1B shape, random weights); LoRA rank 16 on the Gemma 2B shape, on a bf16
# and an int8 base.
#
# A machine without network or TensorFlow: put the wheels that BUILD.md ("The GPU benchmark")
# lists in .whl/ (carried with the working tree); this script installs them into a temporary
# folder and serves kauldron's `import tensorflow` with an import-only stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--cpu" ]]; then
  PY=.venv/bin/python
  $PY bench/step_throughput.py --quick
  $PY bench/step_throughput.py --quick --lora_rank=4 --base_quantization=int8
  $PY bench/chunked_loss.py --quick
  $PY bench/decode.py --quick
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "error: unknown argument $1: run with no argument on a GPU machine, or --cpu" >&2
  exit 2
fi

PY=${PYTHON:-python3}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
if [[ -d .whl ]]; then
  $PY -m pip install --quiet --no-index --no-deps --target "$SITE/packages" .whl/*.whl
fi
if ! $PY -c 'import tensorflow' 2>/dev/null; then
  mkdir -p "$SITE/stub/tensorflow"
  cat > "$SITE/stub/tensorflow/__init__.py" <<'EOF'
"""Import-only stand-in: kauldron.typing imports TensorFlow for isinstance checks only."""
import types
class Tensor: pass
class TensorSpec: pass
dtypes = types.SimpleNamespace(DType=type('DType', (), {}))
experimental = types.SimpleNamespace(numpy=types.SimpleNamespace(ndarray=type('ndarray', (), {})))
__internal__ = types.SimpleNamespace(types=types.SimpleNamespace(Tensor=Tensor))
EOF
fi
export PYTHONPATH="$SITE/packages:$SITE/stub:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c 'import jax' 2>/dev/null; then
  echo "error: $PY cannot import jax: set PYTHON to a python with jax (CUDA) and flax" >&2
  exit 2
fi
if ! $PY -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "error: no GPU seen by $PY's jax: run on the GPU machine, or use --cpu for tiny shapes" >&2
  exit 2
fi
# Gemma 3's tokenizer (rebuilt from the GGUF package's vocabulary; BUILD.md says how to bring it).
TOKENIZER=()
if [[ -f .whl/gemma3-tokenizer.model ]]; then TOKENIZER=(--tokenizer=.whl/gemma3-tokenizer.model); fi
$PY bench/step_throughput.py --gpu
$PY bench/chunked_loss.py --model=gemma3-1b --batch=32 --time_batch=32 --seq_len=256 --steps=5
$PY bench/decode.py --model=gemma3-1b --sentences=256 --batch_size=64 "${TOKENIZER[@]}"

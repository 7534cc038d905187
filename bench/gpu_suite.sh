#!/usr/bin/env bash
# The prepared GPU benchmark: one script for a lent GPU machine, whose printout replaces the GPU
# tables of BENCHMARKS.md. On an H200 (2026-12-04, b56de86) it took about 14 minutes, not its 8:
# the training-step part 398 s, decoding over 250 s (mostly compiling), the loss part about
# 190 s. Since then decoding runs 3 of its 5 rows and the step rows draw their weights in one
# program (step_throughput's _random_like), to compile less; not yet timed there.
# `--cpu` runs the same scripts with tiny shapes here, in seconds (CI runs it so that it does not
# rot).
#
#   bash bench/gpu_suite.sh          # on the GPU machine (python3 there has jax with CUDA)
#   bash bench/gpu_suite.sh --cpu    # anywhere: tiny shapes, .venv's python
#
# On the GPU: the training step of the Gemma 2B and Gemma 3 1B architectures (random weights,
# bfloat16, AdamW) and LoRA rank 16 on the Gemma 2B shape, each at the largest batch of 32/16/8 ×
# 512 whose compiled step fits the device, with MFU against the bfloat16 matmul rate measured in
# the same run and the published peak, and where the Gemma 2B step's device time goes (a trace
# of two steps, bench/step_profile.py; kept in $GPU_SUITE_PROFILE_DIR where set); decoding
# throughput (Gemma 3 1B shape, random weights, 16 MTNT sentences; gemma's Sampler one at a time
# against the Translator's batched greedy and beam rows); the loss from full logits
# against --loss_chunk=32 (Gemma 3 1B shape, 32 × 256).
#
# A machine without network or TensorFlow: put the wheels, Gemma 3's tokenizer and MTNT's
# validation file that BUILD.md ("The GPU benchmark") lists in .whl/ (carried with the working
# tree); this script installs the wheels into a temporary folder and, where TensorFlow is missing,
# serves the imports of TensorFlow and TFDS that gemma's modules make with import-only stand-ins.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--cpu" ]]; then
  PY=.venv/bin/python
  PROFILE=$(mktemp -d)
  trap 'rm -rf "$PROFILE"' EXIT
  $PY bench/step_throughput.py --quick --profile_dir="$PROFILE"
  $PY bench/step_throughput.py --quick --lora_rank=4 --base_quantization=int8
  $PY bench/chunked_loss.py --quick
  $PY bench/decode.py --quick --batched_only
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "error: unknown argument $1: run with no argument on a GPU machine, or --cpu" >&2
  exit 2
fi

PY=${PYTHON:-python3}
if ! $PY -c 'import jax' 2>/dev/null; then
  echo "error: $PY cannot import jax: set PYTHON to a python with jax (CUDA) and flax" >&2
  exit 2
fi
if ! $PY -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "error: no GPU seen by $PY's jax: run on the GPU machine, or use --cpu for tiny shapes" >&2
  exit 2
fi
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
if [[ -d .whl ]]; then
  $PY -m pip install --quiet --no-index --no-deps --target "$SITE/packages" .whl/*.whl
fi
# Import-only stand-ins for TensorFlow and TFDS (bench/no_tensorflow/stand_in.py says why).
STAND_INS=
if ! $PY -c 'import tensorflow' 2>/dev/null; then STAND_INS="$PWD/bench/no_tensorflow:"; fi
export PYTHONPATH="$SITE/packages:${STAND_INS}$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Gemma 3's tokenizer (rebuilt from the GGUF package's vocabulary) and MTNT's validation file for
# the decoding rows, where BUILD.md's steps put them (the machine has neither).
DECODE=(--model=gemma3-1b --sentences=16 --batch_size=16 --batched_only)
if [[ -f .whl/gemma3-tokenizer.model ]]; then DECODE+=(--tokenizer=.whl/gemma3-tokenizer.model); fi
if [[ -f .whl/valid.en-fr.tsv ]]; then DECODE+=(--mtnt=.whl/valid.en-fr.tsv); fi
# Each part runs even if one before it failed (a lent machine's minutes are few): its status and
# seconds are printed after it, and the script fails at the end if any part did.
export PYTHONUNBUFFERED=1
failed=0
part() {
  local start=${SECONDS} rc=0
  echo "== $*"
  "$@" || rc=$?
  echo "== exit ${rc}, $(( SECONDS - start )) s: $*"
  (( rc == 0 )) || failed=1
}
part $PY bench/step_throughput.py --gpu --profile_dir="${GPU_SUITE_PROFILE_DIR:-$SITE/profile}"
part $PY bench/decode.py "${DECODE[@]}"
part $PY bench/chunked_loss.py --model=gemma3-1b --batch=32 --time_batch=32 --seq_len=256 \
    --steps=5 --chunks=0,32
exit "${failed}"

"""Throughput accounting: model FLOPs of a step, peak rates of known chips, MFU."""

from __future__ import annotations

from typing import Any

# Dense bfloat16 peak TFLOP/s of one device, by `jax.Device.device_kind` prefix.
PEAK_BF16_TFLOPS = (
    ('NVIDIA H200', 989.0),
    ('NVIDIA H100', 989.0),
    ('NVIDIA A100', 312.0),
    ('NVIDIA L4', 121.0),
    ('TPU v6', 918.0),
    ('TPU v5p', 459.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5e', 197.0),
    ('TPU v4', 275.0),
)


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak TFLOP/s of one device: ``override`` if set, else the table; None if unknown (CPU)."""
  if override > 0:
    return override
  for prefix, value in PEAK_BF16_TFLOPS:
    if device_kind.startswith(prefix):
      return value
  return None


def model_flops_per_step(*, num_params: int, num_layers: int, num_heads: int, head_dim: int,
                         batch_size: int, seq_len: int, num_frozen_params: int = 0) -> float:
  """Training FLOPs of one step by the model's shape (PaLM's MFU definition): 6 per parameter
  per token (forward and backward; the tied embedding counts once, as the output projection)
  plus causal-free attention, 12 · layers · heads · head_dim · seq_len per token.

  Shapes, not the compiled program: recomputation does not count, and XLA's own cost analysis
  misses the matmuls that GPUs run as library calls.
  A frozen parameter (a LoRA run's base) counts 4: forward and the gradient of its input, no
  gradient of its own.
  """
  tokens = batch_size * seq_len
  per_token = (6 * num_params + 4 * num_frozen_params
               + 12 * num_layers * num_heads * head_dim * seq_len)
  return float(per_token * tokens)


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of an XLA-compiled function, from XLA's cost analysis (all devices)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends have no cost model
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])

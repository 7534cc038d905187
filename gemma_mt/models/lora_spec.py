"""The LoRA settings of a run (``--lora_rank``, ``--lora_alpha``, ``--lora_targets``,
``--base_quantization``), parsed without importing jax (like ``train/mesh_spec.py``)."""

from __future__ import annotations

import dataclasses

# --lora_targets groups → the gemma einsums they adapt.
TARGET_GROUPS = {
    'attn': ('q_einsum', 'kv_einsum', 'qkv_einsum', 'attn_vec_einsum'),
    'mlp': ('gating_einsum', 'linear'),
}
QUANTIZATIONS = ('none', 'int8', 'int4')


class LoraError(ValueError):
  """Adapter settings that cannot apply; the message names the flag."""


def parse_targets(text: str) -> tuple[str, ...]:
  """``attn``, ``mlp``, ``attn,mlp`` or ``all`` → the einsum names adapted."""
  groups = [g.strip() for g in text.split(',') if g.strip()]
  if groups == ['all']:
    groups = list(TARGET_GROUPS)
  unknown = [g for g in groups if g not in TARGET_GROUPS]
  if unknown or not groups:
    raise LoraError(f'--lora_targets={text!r}: use attn, mlp, attn,mlp or all')
  return tuple(name for g in TARGET_GROUPS if g in groups for name in TARGET_GROUPS[g])


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Which einsums get adapters, of which rank, with which scale (``alpha / rank``)."""

  rank: int
  alpha: float
  targets: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

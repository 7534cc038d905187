"""Optax optimizers and learning-rate schedules named by the config."""

from __future__ import annotations

import optax

from gemma_mt.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup to ``learning_rate``, then constant, cosine or linear decay to 0 at the end."""
  peak = config.learning_rate
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  if config.lr_schedule == 'constant':
    after = optax.constant_schedule(peak)
  elif config.lr_schedule == 'cosine':
    after = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    after = optax.linear_schedule(peak, 0.0, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(config: TrainConfig, total_steps: int) -> tuple[
    optax.GradientTransformation, optax.Schedule]:
  """The optimizer (with gradient clipping when ``grad_clip_norm > 0``) and its schedule."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.optimizer == 'sgd':
    base = optax.sgd(schedule)
    if config.weight_decay:
      base = optax.chain(optax.add_decayed_weights(config.weight_decay), base)
  elif config.optimizer == 'adamw':
    base = optax.adamw(schedule, weight_decay=config.weight_decay)
  else:
    base = optax.adafactor(schedule, weight_decay_rate=config.weight_decay or None)
  if config.grad_clip_norm:
    base = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), base)
  return base, schedule

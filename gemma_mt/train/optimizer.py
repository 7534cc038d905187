"""Optax optimizers and learning-rate schedules named by the config."""

from __future__ import annotations

import optax

from gemma_mt.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup to ``learning_rate``, then constant, cosine or linear decay to 0 at the end."""
  peak = config.learning_rate
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  if config.lr_schedule == 'constant':
    # optax's warmup of 0 steps would stay at the initial value (0): no warmup, no join.
    return (optax.warmup_constant_schedule(0.0, peak, warmup) if warmup
            else optax.constant_schedule(peak))
  if config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))
  decay = optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


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

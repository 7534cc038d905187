"""Learning-rate schedules: warm up to the peak, decay to zero exactly at the last step."""

import pytest

from gemma_mt.train import optimizer
from gemma_mt.train.config import TrainConfig


@pytest.mark.parametrize('name, warmup', [(n, w) for n in ('constant', 'cosine', 'linear')
                                          for w in (0, 4)])
def test_schedules_peak_after_warmup_and_end_at_the_last_step(name, warmup):
  schedule = optimizer.learning_rate_schedule(
      TrainConfig(lr_schedule=name, warmup_steps=warmup, learning_rate=0.5), 12)
  rates = [float(schedule(i)) for i in range(13)]
  assert rates[warmup] == pytest.approx(0.5)
  if warmup:
    assert rates[0] == 0.0 and rates[warmup // 2] == pytest.approx(0.5 * (warmup // 2) / warmup)
  assert rates[12] == (0.5 if name == 'constant' else 0.0)
  assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))

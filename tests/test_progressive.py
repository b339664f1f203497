"""Progressive metrics: the rolling log loss is River's ``Rolling(LogLoss)``, computed more cheaply."""

from __future__ import annotations

import math
import random

import pytest
from river import metrics, utils

from learner.progressive import ProgressiveMetrics


@pytest.mark.parametrize("window", [1, 7, 100])
def test_rolling_log_loss_equals_rivers_at_every_step(window: int) -> None:
    rnd = random.Random(window)
    ours = ProgressiveMetrics(window=window)
    river = utils.Rolling(metrics.LogLoss, window_size=window)
    assert math.isnan(ours.logloss)
    for step in range(5_000):
        y = 1.0 if rnd.random() < 0.7 else 0.0
        # predictions at the clip edges too: 0 and 1 become 1e-7 and 1 - 1e-7 on both sides
        p = rnd.choice([0.0, 1.0, rnd.random(), rnd.random() ** 8])
        ours.update(y, p)
        river.update(y > 0.5, min(max(p, 1e-7), 1 - 1e-7))
        assert ours.logloss == pytest.approx(river.get(), rel=1e-9, abs=1e-12), step


def test_the_running_sum_does_not_drift_over_many_windows() -> None:
    """After 100,000 large losses, a window of tiny ones: a sum only ever added to and subtracted
    from would carry the large ones' rounding errors, bigger than the tiny mean itself."""
    rnd = random.Random(0)
    pm = ProgressiveMetrics(window=50)
    for _ in range(100_000):
        pm.update(1.0, rnd.uniform(1e-7, 1e-3))  # losses of 7-16, each rounded differently
    for step in range(50):  # one whole window, so it ends at a window boundary
        pm.update(1.0, 1 - 1e-7 * (1 + step % 3))  # losses ~1e-7
    exact = math.fsum(pm._losses) / len(pm._losses)
    assert exact < 1e-6
    assert pm.logloss == pytest.approx(exact, rel=1e-9, abs=0)

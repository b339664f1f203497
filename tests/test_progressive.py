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


def _stream(seed: int, n: int) -> list[tuple[float, float]]:
    rnd = random.Random(seed)
    labels = [1.0 if rnd.random() < 0.6 else 0.0 for _ in range(n)]
    return [(y, rnd.choice([0.0, 1.0, rnd.random(), rnd.random() ** 4])) for y in labels]


@pytest.mark.parametrize(("window", "n"), [(50, 30), (50, 400), (1000, 2500)])
def test_a_restored_window_gives_the_same_metrics_and_goes_on_like_the_original(window: int, n: int) -> None:
    original = ProgressiveMetrics(window=window)
    for y, p in _stream(window + n, n):
        original.update(y, p)
    restored = ProgressiveMetrics.from_window(*original.window_arrays(), count=original.count, window=window)
    updated_first = ProgressiveMetrics.from_window(*original.window_arrays(), count=original.count, window=window)
    assert restored.count == original.count
    assert restored.logloss == pytest.approx(original.logloss, rel=1e-12)
    assert restored.auc == pytest.approx(original.auc, rel=1e-9)
    for step, (y, p) in enumerate(_stream(7, 3 * window)):
        original.update(y, p)
        restored.update(y, p)
        if step < 3:  # a restored window that learns before anyone reads its AUC
            updated_first.update(y, p)
        if step == 2:
            assert updated_first.auc == pytest.approx(original.auc, rel=1e-9, abs=1e-12) or (
                math.isnan(updated_first.auc) and math.isnan(original.auc)
            )
        assert restored.logloss == pytest.approx(original.logloss, rel=1e-9), step
        assert restored.auc == pytest.approx(original.auc, rel=1e-9, abs=1e-12) or (
            math.isnan(restored.auc) and math.isnan(original.auc)
        ), step


def test_a_restored_window_keeps_its_last_events_when_the_window_shrank() -> None:
    original = ProgressiveMetrics(window=300)
    for y, p in _stream(3, 300):
        original.update(y, p)
    smaller = ProgressiveMetrics.from_window(*original.window_arrays(), count=original.count, window=100)
    reference = ProgressiveMetrics(window=100)
    for y, p in _stream(3, 300)[-100:]:
        reference.update(y, p)
    assert smaller.logloss == pytest.approx(reference.logloss, rel=1e-12)
    assert smaller.auc == pytest.approx(reference.auc, rel=1e-9)


def test_the_snapshot_carries_the_window_and_an_older_snapshot_starts_it_empty() -> None:
    from learner import codec
    from learner.online_learner import OnlineLearner

    learner = OnlineLearner()
    rnd = random.Random(1)
    for _ in range(600):
        learner.learn(f"u{rnd.randrange(20)}", f"v{rnd.randrange(30)}", rnd.choice(["like", "skip"]), None, None)
    blob = learner.to_bytes()
    clone = OnlineLearner.from_bytes(blob)
    assert clone.metrics.count == learner.metrics.count == 600
    assert clone.metrics.auc == pytest.approx(learner.metrics.auc, rel=1e-9)
    assert clone.metrics.logloss == pytest.approx(learner.metrics.logloss, rel=1e-12)
    header, arrays = codec.decode(blob)
    older = {k: v for k, v in arrays.items() if not k.startswith("progressive_")}
    header.pop("progressive_count")
    fresh = OnlineLearner.from_parts(header, older)
    assert fresh.metrics.count == 0 and math.isnan(fresh.metrics.logloss)
    assert fresh.model.predict_one("u1", "v1") == learner.model.predict_one("u1", "v1")

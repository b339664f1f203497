"""``metrics.observe_many``: the same histogram as ``observe`` one value at a time."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from recstream.metrics import FEW_OBSERVATIONS, observe_many

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def _exposition(fill: Callable[[Histogram], object]) -> dict[str, float]:
    registry = CollectorRegistry()
    histogram = Histogram("freshness_seconds", "test", buckets=BUCKETS, registry=registry)
    fill(histogram)
    lines = generate_latest(registry).decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name.startswith("freshness_seconds") and "_created" not in name
    }


@pytest.mark.parametrize("seed", range(5))
def test_observe_many_gives_the_histogram_observe_gives(seed: int) -> None:
    rnd = random.Random(seed)
    amounts = [rnd.choice([rnd.uniform(-5, 0), rnd.expovariate(0.5), rnd.uniform(0, 5000)]) for _ in range(2_000)]
    amounts += [*BUCKETS, 0.0, -0.0, 1e9]  # exactly on a bound (it belongs to that bucket), beyond the last
    one_by_one = _exposition(lambda h: [h.observe(max(0.0, a)) for a in amounts])
    at_once = _exposition(lambda h: observe_many(h, amounts))
    assert one_by_one.keys() == at_once.keys()
    for name, value in one_by_one.items():
        assert at_once[name] == pytest.approx(value, rel=1e-12, abs=1e-9), name
    assert one_by_one['freshness_seconds_bucket{le="+Inf"}'] == len(amounts)


@pytest.mark.parametrize("n", [1, 2, FEW_OBSERVATIONS - 1, FEW_OBSERVATIONS, FEW_OBSERVATIONS + 1])
def test_a_few_values_give_the_same_histogram_either_way(n: int) -> None:
    """Below FEW_OBSERVATIONS the values are observed one by one (a chunk of one-event messages), above in one
    update per bucket: the same exposition at and around the switch."""
    rnd = random.Random(n)
    amounts = [rnd.choice([-1.0, 0.0, *BUCKETS, rnd.expovariate(0.5)]) for _ in range(n)]
    one_by_one = _exposition(lambda h: [h.observe(max(0.0, a)) for a in amounts])
    assert _exposition(lambda h: observe_many(h, amounts)) == pytest.approx(one_by_one, rel=1e-12, abs=1e-9)


def test_observe_many_of_nothing_changes_nothing() -> None:
    assert _exposition(lambda h: observe_many(h, [])) == _exposition(lambda _h: None)


def test_observe_many_uses_one_update_per_bucket_not_observe() -> None:
    """The fast path is taken (prometheus_client still has the parts it uses), not the fallback."""
    registry = CollectorRegistry()
    histogram = Histogram("fast_seconds", "test", buckets=BUCKETS, registry=registry)
    calls = []
    histogram.observe = lambda amount, _exemplar=None: calls.append(amount)  # type: ignore[method-assign]
    observe_many(histogram, [0.01, 0.2, 7.0] * FEW_OBSERVATIONS)
    assert calls == []
    assert registry.get_sample_value("fast_seconds_count") == 3 * FEW_OBSERVATIONS


def test_observe_many_falls_back_to_observe_without_those_parts() -> None:
    class Bare:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    bare = Bare()
    observe_many(bare, [-1.0, 0.5] * FEW_OBSERVATIONS)  # type: ignore[arg-type]
    assert bare.seen == [0.0, 0.5] * FEW_OBSERVATIONS

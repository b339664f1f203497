"""``metrics.GcCounts``: each generation's collections added once, as ``gc.get_stats()`` counts them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from recstream.metrics import GcCounts


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    """Only the test's own ``gc.collect()`` calls collect meanwhile (so the counts are known exactly)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _values(counts: GcCounts, generation: int) -> tuple[float, ...]:
    """Each counter's ``_total`` sample for ``generation`` (0 where it has none yet), as an exposition reads it."""
    return tuple(
        next(
            (
                sample.value
                for metric in counter.collect()
                for sample in metric.samples
                if sample.name.endswith("_total") and sample.labels == {"generation": str(generation)}
            ),
            0.0,
        )
        for counter in counts._counters
    )


def _stats(generation: int) -> tuple[int, ...]:
    stats = gc.get_stats()[generation]
    return stats["collections"], stats["collected"], stats["uncollectable"]


@pytest.mark.usefixtures("no_automatic_collections")
def test_publish_adds_what_each_generation_collected_since_the_last_call() -> None:
    counts = GcCounts()
    assert all(_values(counts, g) == (0, 0, 0) for g in range(3))  # nothing before the first publish
    counts.publish()  # everything since the process started
    assert all(_values(counts, g) == _stats(g) for g in range(3))
    before = _stats(2)
    for _ in range(3):
        cycle: list = []
        cycle.append(cycle)  # garbage only a collection frees
        del cycle
        gc.collect()
    counts.publish()
    counts.publish()  # (nothing new: nothing added twice)
    assert _values(counts, 2) == _stats(2)
    assert _stats(2)[0] == before[0] + 3 and _stats(2)[1] >= before[1] + 3

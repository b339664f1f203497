"""Each process's ``/metrics`` holds the families it sets: every process defines every metric (recstream.metrics),
and the API showing the worker's at their first values (``recstream_events_learned_total 0.0``, the writer lease 0)
misled operators and alerts."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from recstream import metrics

ROOT = Path(__file__).resolve().parent.parent


def _defined() -> set[str]:
    """The family of every metric the module defines."""
    found = [value for value in vars(metrics).values() if isinstance(value, Counter | Gauge | Histogram)]
    assert len(found) >= 40, found  # (the module still defines them at its top level)
    return {family.name for metric in found for family in metric.describe()}


def test_every_metric_is_the_workers_the_apis_or_both() -> None:
    assert not metrics.WORKER_ONLY & metrics.API_ONLY
    assert not (metrics.WORKER_ONLY | metrics.API_ONLY) & metrics.SHARED
    missing = _defined() - metrics.WORKER_ONLY - metrics.API_ONLY - metrics.SHARED
    assert not missing, f"say whose these are (recstream.metrics WORKER_ONLY, API_ONLY or SHARED): {sorted(missing)}"


def test_neither_process_uses_the_others_metrics() -> None:
    """By name in the code: a metric of the worker's set in api/, or of the API's set elsewhere, would vanish from
    the /metrics of the process that sets it."""
    names = {name: value for name, value in vars(metrics).items() if isinstance(value, Counter | Gauge | Histogram)}

    def used_in(folders: list[str], name: str) -> list[str]:
        pattern = re.compile(rf"\bmetrics\.{name}\b")
        return [str(p) for f in folders for p in (ROOT / f).rglob("*.py") if pattern.search(p.read_text())]

    for name, metric in names.items():
        family = next(iter(metric.describe())).name
        if family in metrics.WORKER_ONLY:
            assert not used_in(["api"], name), (name, "the worker's, set by the API")
        if family in metrics.API_ONLY:
            assert not used_in(["stream", "store", "learner"], name), (name, "the API's, set by the worker")


def test_each_exposition_leaves_out_the_other_processes_families() -> None:
    api = generate_latest(metrics.exposition_registry()).decode()
    worker = generate_latest(metrics.worker_registry()).decode()
    assert "recstream_events_learned_total" not in api and "recstream_worker_writer_lease" not in api
    assert "recstream_http_request_duration_seconds" in api and "recstream_redis_errors_total" in api
    assert "recstream_events_learned_total" in worker and "recstream_worker_writer_lease" in worker
    assert "recstream_events_ingested_total" not in worker and "recstream_http_request_duration" not in worker
    assert "recstream_redis_errors_total" in worker
    assert "python_gc_objects_collected_total" in api and "python_gc_objects_collected_total" in worker

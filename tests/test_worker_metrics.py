"""The worker's /metrics: every family an operator relies on moves as events flow (not just exists)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import wait_for
from tests.kafka_io import CheckpointReader, produce, produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SAMPLE = re.compile(r"^(recstream_[a-z0-9_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN)$", re.MULTILINE)


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value for every recstream sample."""
    return {name + (labels or ""): float(value) for name, labels, value in SAMPLE.findall(httpx.get(url).text)}


def test_worker_metrics_move_with_the_stream(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    port = local_services.free_port()
    env = {**service_env, "RECSTREAM_WORKER_METRICS_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/metrics"
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    worker = local_services.start_worker(env)
    processes.append(worker)
    try:
        before = wait_for(lambda: scrape(url), 30, "the worker's metrics endpoint")
        assert isinstance(before, dict)

        kinds = ["like", "skip", "view", "share"]
        events = [
            {"event_id": f"m{i}", "user_id": f"u{i % 7}", "item_id": f"v{i % 13}", "type": kinds[i % 4], "ts": iso(i)}
            for i in range(300)
        ]
        for event in events[:8]:  # these came from a served recommendation list
            event["context"] = {"rec_id": "abc123"}
        future = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
        produce_events(broker, topic, events)
        produce_events(broker, topic, events[:20])  # duplicates
        produce_events(broker, topic, [{**events[0], "event_id": "f1", "ts": future}])  # held: future_timestamp
        produce(broker, topic, [(b"u1", b"{not json")])  # rejected by the contract
        total = 300 + 20 + 1 + 1
        wait_for(
            lambda: sum(checkpoints.meta().get("offsets", {}).values()) == total,
            60,
            "the worker to checkpoint every message",
        )
        after = scrape(url)

        def moved(key: str, by: float | None = None) -> None:
            delta = after.get(key, 0.0) - before.get(key, 0.0)
            assert delta > 0 if by is None else delta == by, f"{key}: {before.get(key)} -> {after.get(key)}"

        moved("recstream_events_consumed_total", total)
        moved("recstream_events_learned_total", 300)
        moved("recstream_events_duplicate_total", 20)
        moved('recstream_events_quarantined_total{reason="future_timestamp"}', 1)
        moved('recstream_events_rejected_total{stage="worker"}', 1)
        moved('recstream_checkpoints_total{outcome="ok"}')
        moved("recstream_worker_heap_trims_total")  # the first checkpoint's trim (then at most every 5 s)
        moved("recstream_last_checkpoint_timestamp_seconds")
        moved("recstream_event_to_learned_seconds_count", 300)
        moved('recstream_model_version{component="worker"}')
        # 8 events echoed a recommendation id: 2 of each type (like, skip, view, share).
        moved('recstream_recommended_interactions_total{type="like"}', 2)
        moved('recstream_recommended_interactions_total{type="view"}', 2)
        hit_rate = [v for k, v in after.items() if k.startswith("recstream_progressive_hit_rate_at_10{")]
        assert hit_rate and 0.0 <= hit_rate[0] <= 1.0  # 150 positives: sampled every 20th
        auc = [v for k, v in after.items() if k.startswith("recstream_progressive_auc{")]
        assert auc and 0.0 <= auc[0] <= 1.0

        def caught_up() -> bool:
            lags = [v for k, v in scrape(url).items() if k.startswith("recstream_consumer_lag_messages{")]
            return bool(lags) and all(v == 0 for v in lags)

        wait_for(caught_up, 30, "the lag per partition to be reported, and 0 once the worker has caught up")
    finally:
        checkpoints.close()

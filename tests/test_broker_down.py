"""The broker unreachable: ingest answers 503 and accepts nothing; the worker waits and resumes by itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import (
    COUNTABLE_GATE_ENV,
    Endpoint,
    api_client,
    create_topics,
    current_learner,
    make_env,
    popularity_counts,
    skip_unless_ci,
    start_stack,
    wait_for,
)
from tests.kafka_io import produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_ingest_answers_503_with_retry_after_when_the_broker_is_unreachable(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    dead_port = local_services.free_port()  # nothing listens here
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_BROKER_URL": f"kafka://127.0.0.1:{dead_port}",
        "RECSTREAM_PRODUCE_TIMEOUT_SECONDS": "2",
        "RECSTREAM_RETRY_AFTER_SECONDS": "7",
    }
    api = local_services.start_api(env)
    processes.append(api)
    with api_client(api, timeout=30) as client:
        event = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}
        response = client.post("/v1/events", json=[event])
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "7"
        assert "resend the same events, with the same event_ids" in response.json()["detail"]
        assert str(dead_port) not in response.text  # the broker's error (its address) stays in the API's log
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"
        metrics_text = client.get("/metrics").text
        assert "recstream_ingest_broker_unavailable_total 1.0" in metrics_text
        assert "recstream_events_ingested_total 0.0" in metrics_text
        assert 'recstream_kafka_errors_total{component="api"} 1.0' in metrics_text


def _events(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}{n}",
            "user_id": f"u{n % 40}",
            "item_id": f"v{n % 17}",
            "type": "like",
            "ts": iso(n * 0.1),
        }
        for n in range(count)
    ]


@pytest.mark.chaos
@pytest.mark.timeout(240)
def test_worker_and_api_resume_by_themselves_after_the_broker_restarts(
    redis_endpoint: Endpoint, processes: list[local_services.LocalService], tmp_path: Path
) -> None:
    if not local_services.java_kafka_available():
        skip_unless_ci("needs genuine Kafka (Java + scripts/fetch-kafka.sh): Tansu keeps no data across a restart")
    # An own broker (not the session's), restarted on the same port and log directory.
    kafka_dir, kafka_port = tmp_path / "kafka", local_services.free_port()
    kafka = local_services.start_kafka(kafka_dir, kafka_port)
    processes.append(kafka)
    env = {
        **make_env(redis_endpoint, Endpoint(kafka.url, "own kafka")),
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_PRODUCE_TIMEOUT_SECONDS": "2",
    }
    create_topics(env)
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    stack = start_stack(env, processes, client_timeout=30)
    worker, api, client, checkpoints = stack.worker, stack.api, stack.client, stack.checkpoints
    try:
        first = _events("a", 300)
        produce_events(broker, topic, first)
        wait_for(lambda: checkpoints.learned() == len(first), 90, f"the first events learned (log: {worker.log_path})")

        kafka.kill()  # SIGKILL: the broker's log directory stays
        # The API refuses ingest (nothing accepted) but keeps serving its model, and says it is degraded;
        # the worker notices and keeps retrying.
        r = client.post("/v1/events", json=_events("x", 5))
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert ready.json()["checks"]["broker"] == "unreachable"
        assert client.get("/v1/users/nobody/recommendations").status_code == 200
        assert worker.log_path is not None
        wait_for(lambda: "Unable connect to node" in worker.log_path.read_text(), 30, "the worker to notice")
        assert worker.is_running(), worker.log_tail()

        restarted = local_services.start_kafka(kafka_dir, kafka_port)
        processes.append(restarted)
        # Ingest works again once the API's producer has reconnected (it retries by itself).
        second = _events("b", 300)
        wait_for(lambda: client.post("/v1/events", json=second).status_code == 202, 60, "ingest to work again")
        wait_for(
            lambda: checkpoints.learned() == len(first) + len(second),
            120,
            f"the worker to resume by itself (log: {worker.log_path})",
        )
        assert worker.is_running() and api.is_running()
        learner = current_learner(env)
        assert learner is not None and learner.events_learned == len(first) + len(second)
        expected = Counter(e["item_id"] for e in first + second)
        assert popularity_counts(learner) == dict(expected)
        wait_for(lambda: client.get("/readyz").json()["status"] == "ready", 30, "/readyz to be ready again")
    finally:
        stack.close()

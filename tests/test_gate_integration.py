"""The quality gate with the real broker and Redis: duplicates, quarantine, replay."""

from __future__ import annotations

import httpx
import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import wait_for
from tests.kafka_io import CheckpointReader, produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _gate_counts(client: httpx.Client) -> dict[str, int]:
    return client.get("/v1/gate").json()["counts"]


def test_duplicates_are_learned_once_across_resends_and_restarts(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    broker, topic = service_env["RECSTREAM_BROKER_URL"], service_env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(service_env["RECSTREAM_REDIS_URL"], service_env["RECSTREAM_REDIS_PREFIX"])
    worker = local_services.start_worker(service_env)
    processes.append(worker)
    api = local_services.start_api(service_env)
    processes.append(api)
    client = httpx.Client(base_url=api.url, timeout=10)
    try:
        batch = [
            {
                "event_id": f"d{i}",
                "user_id": f"u{i % 4}",
                "item_id": f"v{i}",
                "type": "like",
                "ts": iso(i),
            }
            for i in range(20)
        ]
        assert client.post("/v1/events", json=batch).status_code == 202
        wait_for(lambda: checkpoints.learned() == 20, 60, "the first 20 events to be learned")

        # The app backend re-sends the same batch (a retry after a timeout, say).
        assert client.post("/v1/events", json=batch).status_code == 202
        wait_for(lambda: _gate_counts(client).get("duplicate") == 20, 30, "20 duplicates to be counted")
        assert checkpoints.learned() == 20

        # After a restart the worker still knows them: the ids live in Redis, not in its memory.
        worker.process.terminate()
        worker.process.wait(30)
        restarted = local_services.start_worker(service_env)
        processes.append(restarted)
        produce_events(broker, topic, batch[:10])  # straight to Kafka this time
        fresh = [{**batch[0], "event_id": "fresh-1"}]
        produce_events(broker, topic, fresh)
        wait_for(lambda: checkpoints.learned() == 21, 60, "the fresh event to be learned after the restart")
        wait_for(lambda: _gate_counts(client).get("duplicate") == 30, 30, "10 more duplicates to be counted")
        assert checkpoints.learned() == 21
        assert client.get("/v1/gate").json()["guard"].get("state") == "learning"
    finally:
        checkpoints.close()
        client.close()

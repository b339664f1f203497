"""When the broker cannot take a batch, ingest answers 503 with Retry-After and accepts nothing."""

from __future__ import annotations

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import Endpoint, api_client, make_env

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
        assert "nothing was accepted" in response.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"
        metrics_text = client.get("/metrics").text
        assert "recstream_ingest_broker_unavailable_total 1.0" in metrics_text
        assert "recstream_events_ingested_total 0.0" in metrics_text
        assert 'recstream_kafka_errors_total{component="api"} 1.0' in metrics_text

"""The core path end to end: real broker, real Redis, the real worker and API as processes."""

from __future__ import annotations

import re

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import api_client, wait_for
from tests.kafka_io import CheckpointReader, produce_events
from tests.taste_stream import GROUP_A, GROUP_B, taste_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_published_events_change_recommendations(
    service_env: dict[str, str], processes: list[local_services.LocalService], checkpoints: CheckpointReader
) -> None:
    worker = local_services.start_worker(service_env)
    processes.append(worker)
    api = local_services.start_api(service_env)
    processes.append(api)
    client = api_client(api)

    # The crowd arrives straight through Kafka, as an app backend producing directly would.
    crowd = taste_events(seed=3)
    produce_events(service_env["RECSTREAM_BROKER_URL"], service_env["RECSTREAM_TOPIC_EVENTS"], crowd)
    wait_for(
        lambda: checkpoints.learned() == len(crowd),
        90,
        f"the worker to learn {len(crowd)} events (log: {worker.log_path})",
    )
    version_before = checkpoints.version()
    assert version_before is not None

    # A new user likes three A items through the HTTP ingest endpoint.
    liked = GROUP_A[:3]
    batch = [
        {"event_id": f"t{n}", "user_id": "target", "item_id": item, "type": "like", "ts": iso(3000 + n)}
        for n, item in enumerate(liked)
    ]
    response = client.post("/v1/events", json=batch)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3

    def target_recommendations() -> dict | None:
        r = client.get("/v1/users/target/recommendations", params={"k": 10})
        body = r.json() if r.status_code == 200 else None
        return body if body and body["source"] == "model" and body["model_version"] > version_before else None

    body = wait_for(target_recommendations, 30, "recommendations for the new user from a newer model version")
    assert isinstance(body, dict)
    assert len(body["recommendation_id"]) == 32  # echoed by clients in context.rec_id
    items = [entry["item_id"] for entry in body["items"]]
    assert len(items) == 10
    assert not set(items) & set(liked), "items the user already saw must be excluded"
    assert checkpoints.learned() == len(crowd) + len(batch)

    # Taste: items liked by people like the target rank above items those people skipped.
    from_a = sum(1 for item in items if item in GROUP_A)
    assert from_a >= 7, f"expected mostly A items in the top 10, got {items}"
    scores = client.post("/v1/scores", json={"user_id": "target", "item_ids": GROUP_A[3:] + GROUP_B}).json()["scores"]
    mean_a = sum(scores[: len(GROUP_A) - 3]) / (len(GROUP_A) - 3)
    mean_b = sum(scores[len(GROUP_A) - 3 :]) / len(GROUP_B)
    assert mean_a > mean_b, (mean_a, mean_b)

    # An unknown user gets popular items, and is told so.
    r = client.get("/v1/users/stranger/recommendations", params={"k": 5})
    assert r.status_code == 200 and r.json()["source"] == "popular" and len(r.json()["items"]) == 5

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    metrics_text = client.get("/metrics").text
    assert "recstream_events_ingested_total 3.0" in metrics_text
    swaps = re.search(r"^recstream_model_swap_delay_seconds_count ([0-9.]+)$", metrics_text, re.MULTILINE)
    # checkpoint -> served, measured on every swap to a newer version after the process's first load (the version
    # with the target's likes at least)
    assert swaps and float(swaps.group(1)) >= 1

"""Model versions through the API with a real worker: list, roll back (served at once), continue learning."""

from __future__ import annotations

import pytest

from tests.clock import iso
from tests.conftest import Stack, metric_value, wait_for
from tests.kafka_io import produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _batch(start: int, n: int) -> list[dict]:
    return [
        {"event_id": f"e{k}", "user_id": f"u{k % 6}", "item_id": f"v{k % 11}", "type": "like", "ts": iso(k)}
        for k in range(start, start + n)
    ]


def test_rollback_through_the_api_is_served_at_once_and_the_worker_continues_from_it(stack: Stack) -> None:
    broker, topic, client, checkpoints = stack.broker, stack.topic, stack.client, stack.checkpoints
    produce_events(broker, topic, _batch(0, 40))
    wait_for(lambda: checkpoints.learned() == 40, 60, "the first 40 events")
    first = checkpoints.version()
    produce_events(broker, topic, _batch(40, 40))
    wait_for(lambda: checkpoints.learned() == 80, 60, "the next 40 events")
    second = checkpoints.version()
    assert first is not None and second is not None and second > first

    listed = client.get("/v1/models").json()
    assert listed["current"] == second and [v["version"] for v in listed["versions"]][-1] == second

    wait_for(lambda: client.get("/v1/stats").json()["model"]["serving"] == second, 10, f"the API to serve v{second}")
    swaps = metric_value(client.get("/metrics").text, "recstream_model_swap_delay_seconds_count")
    rolled = client.post("/v1/models/rollback", json={"reason": "bad batch"})
    assert rolled.status_code == 200, rolled.text
    # an older version served again is not a fresh checkpoint: its age since written is no swap delay
    assert metric_value(client.get("/metrics").text, "recstream_model_swap_delay_seconds_count") == swaps >= 1
    older = rolled.json()["current"]
    assert older < second and rolled.json()["serving"] == older
    assert client.get("/v1/users/u1/recommendations").json()["model_version"] == older
    record = client.get("/v1/models").json()["promotions"][-1]
    assert (record["reason"], record["actor"]) == ("bad batch", "api:test-admin")  # (which key did it)

    # The worker continues from the rolled-back version: its next version is a child of it.
    produce_events(broker, topic, _batch(80, 10))
    wait_for(lambda: (checkpoints.version() or 0) > second, 60, "a new version after the rollback")
    meta = checkpoints.meta()
    assert meta["parent"] == older
    older_learned = next(v for v in listed["versions"] if v["version"] == older)["events_learned"]
    assert meta["events_learned"] == older_learned + 10
    wait_for(
        lambda: client.get("/v1/users/u1/recommendations").json()["model_version"] == checkpoints.version(),
        10,
        "the API to serve the new version",
    )
    assert client.post("/v1/models/999/promote", json={"reason": "x"}).status_code == 404
    assert client.post("/v1/models/1/promote", json={"reason": ""}).status_code == 422
    # the history listed: the latest records, as many as asked
    assert client.get("/v1/models", params={"history": 0}).json()["promotions"] == []
    assert [r["reason"] for r in client.get("/v1/models", params={"history": 1}).json()["promotions"]] == ["bad batch"]
    too_many = client.get("/v1/models", params={"history": 1001})
    assert too_many.status_code == 422 and "history" in too_many.json()["detail"], too_many.text
    # no challenger runs, none is requested
    assert client.get("/v1/models/challengers").json()["requested"] is None

"""Model lifecycle through the API with a real worker, broker and Redis.

* Promotion and rollback on one API process change what *another* API process's recommendations
  return, announced over Redis pub/sub: its polling is set to once an hour here, so only the announcement
  can bring the change within the test's deadline (generous: the test does not time the swap).
* A challenger that ranks better on the live stream replaces the champion automatically, and an
  operator can promote a challenger through the API; both are recorded with their reasons.
"""

from __future__ import annotations

import json

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import COUNTABLE_GATE_ENV, api_client, wait_for
from tests.kafka_io import CheckpointReader, produce_events
from tests.taste_stream import taste_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

#: How long the test waits for the other API process to swap: far below its polling (an hour), so only the
#: announcement can make it, and far above what the swap takes, so a slow machine does not fail the test.
SWAP_DEADLINE_SECONDS = 30.0


def _likes(prefix: str, users: int, items: list[str], start: int) -> list[dict]:
    events = []
    for u in range(users):
        for n, item in enumerate(items):
            k = start + u * len(items) + n
            events.append(
                {"event_id": f"{prefix}{k}", "user_id": f"{prefix}u{u}", "item_id": item, "type": "like", "ts": iso(k)}
            )
    return events


def test_promotion_and_rollback_reach_another_api_process_by_their_announcement(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    env = {**service_env, "RECSTREAM_MODEL_POLL_SECONDS": "3600"}  # only pub/sub can meet the deadlines below
    processes.append(local_services.start_worker(env))
    operator_api = local_services.start_api(env)
    processes.append(operator_api)
    serving_api = local_services.start_api(env)
    processes.append(serving_api)
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    with api_client(operator_api) as operator, api_client(serving_api) as client:

        def served() -> dict:
            # A user nobody has seen: the answer is the model's popular list, which the two phases change.
            return client.get("/v1/users/newcomer/recommendations", params={"k": 5}).json()

        def items(answer: dict) -> list[str]:
            return [entry["item_id"] for entry in answer["items"]]

        # Phase A: a few items are liked; phase B: other items are liked far more often.
        produce_events(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], _likes("a", 4, ["a1", "a2"], 0))
        wait_for(lambda: checkpoints.learned() == 8, 60, "phase A learned")
        version_a = checkpoints.version()
        wait_for(lambda: served()["model_version"] == version_a, 40, "the serving API to load phase A")
        items_a = items(served())
        produce_events(
            env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], _likes("b", 10, ["b1", "b2", "b3"], 100)
        )
        wait_for(lambda: checkpoints.learned() == 38, 60, "phase B learned")
        version_b = checkpoints.version()
        wait_for(lambda: served()["model_version"] == version_b, 40, "the serving API to load phase B")
        items_b = items(served())
        assert items_a[:2] == ["a1", "a2"] and items_b[:3] == ["b1", "b2", "b3"], (items_a, items_b)

        # Promote A on the operator's API process: the other process serves A's answer, told by the announcement.
        assert operator.post(f"/v1/models/{version_a}/promote", json={"reason": "test A"}).status_code == 200
        wait_for(
            lambda: served()["model_version"] == version_a and items(served()) == items_a,
            SWAP_DEADLINE_SECONDS,
            f"the other API process to serve v{version_a} after its promotion",
        )
        # And back to B.
        assert operator.post(f"/v1/models/{version_b}/promote", json={"reason": "test B"}).status_code == 200
        wait_for(
            lambda: served()["model_version"] == version_b and items(served()) == items_b,
            SWAP_DEADLINE_SECONDS,
            f"the other API process to serve v{version_b} again",
        )
        # Roll back: the newest version older than B, announced too.
        rolled = operator.post("/v1/models/rollback", json={"reason": "test rollback"})
        assert rolled.status_code == 200, rolled.text
        target = rolled.json()["current"]
        assert target < version_b
        wait_for(
            lambda: served()["model_version"] == target,
            SWAP_DEADLINE_SECONDS,
            f"the other API process to serve v{target} after the rollback",
        )
        reasons = [record["reason"] for record in operator.get("/v1/models").json()["promotions"]]
        assert reasons == ["test A", "test B", "test rollback"]
    checkpoints.close()


def test_a_better_challenger_takes_over_on_the_live_stream_and_an_operator_can_switch_back(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_MODEL": "popularity",
        "RECSTREAM_CHALLENGERS": json.dumps(["item_cooccurrence"]),
        "RECSTREAM_PROMOTE_WINDOW": "150",
        "RECSTREAM_PROMOTE_MARGIN": "0.05",
        "RECSTREAM_PROMOTE_SAMPLE_EVERY": "1",
    }
    worker = local_services.start_worker(env)
    processes.append(worker)
    api = local_services.start_api(env)
    processes.append(api)
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    events = taste_events(seed=11, users_per_group=100)
    with api_client(api) as client:
        produce_events(broker, topic, events)

        def promotions() -> list[dict]:
            answer = client.get("/v1/models")
            assert answer.status_code == 200, answer.text
            return answer.json()["promotions"]

        # Admin calls are rate limited (RECSTREAM_RATE_LIMIT_ADMIN_*): poll them gently.
        [auto] = wait_for(promotions, 90, "an automatic promotion", interval=0.5)
        assert (auto["actor"], auto["from_model"], auto["to_model"]) == ("auto", "popularity", "item_cooccurrence")
        assert "McNemar" in auto["reason"]
        contest = client.get("/v1/models/challengers").json()
        assert contest.get("champion") == "item_cooccurrence" and list(contest["challengers"]) == ["popularity"]
        # The API serves the promoted model (each response names its version; the version names its model).
        wait_for(
            lambda: client.get("/v1/users/A000/recommendations").json()["model_version"] >= auto["to"],
            10,
            "the API to serve the promoted version",
        )
        served = client.get("/v1/users/A000/recommendations").json()
        assert client.get(f"/v1/models/{served['model_version']}").json()["contestant"] == "item_cooccurrence"

        # The whole stream is in (so that the operator's hold below is not used up by its remaining events).
        checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
        wait_for(lambda: checkpoints.learned() == len(events), 60, "the whole stream learned")
        checkpoints.close()
        # An operator switches back by name; an unknown name is a 404 that lists the real ones.
        missing = client.post("/v1/models/challengers/nope/promote", json={"reason": "typo"})
        assert missing.status_code == 404 and "popularity" in missing.json()["detail"]
        asked = client.post("/v1/models/challengers/popularity/promote", json={"reason": "compare"})
        assert asked.status_code == 202, asked.text
        produce_events(broker, topic, taste_events(seed=12, users_per_group=2, prefix="late"))
        try:
            wait_for(lambda: len(promotions()) == 2, 60, "the operator's promotion", interval=0.5)
        except AssertionError:
            print(worker.log_tail(60))
            raise
        manual = promotions()[-1]
        assert (manual["actor"], manual["reason"], manual["to_model"]) == ("api:test-admin", "compare", "popularity")
        # The operator's choice holds: the automatic rule waits (RECSTREAM_PROMOTE_HOLD_WINDOWS) before it may overrule.
        contest = client.get("/v1/models/challengers").json()
        assert contest["champion"] == "popularity" and list(contest["challengers"]) == ["item_cooccurrence"]
        assert contest["auto_hold_samples"] > 0

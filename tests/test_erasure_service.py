"""Erasing a user through the API and the CLI, with a real worker, broker, Redis and API process: they get a stranger's
list, no stored version names them, the versions before are not promoted again, and their old events are dropped."""

from __future__ import annotations

import os

import pytest

from tests.clock import iso
from tests.conftest import Stack, current_learner, run_cli, wait_for
from tests.kafka_io import produce_events
from tests.test_hidden_items import _fan_of_v0, _items, _personal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


#: Seconds between two looks at an admin endpoint: under its rate limit (2 a second by default), so none is refused.
ADMIN_POLL = 1.0


def _state(stack: Stack, user: str) -> str:
    answer = stack.client.get(f"/v1/users/{user}/erase")
    assert answer.status_code == 200, answer.text
    return answer.json()["state"]


def test_an_erased_user_is_served_as_a_stranger_and_named_by_no_version_after(stack: Stack) -> None:
    client = stack.client
    _fan_of_v0(stack, items=6)
    assert _personal(client, "fan") and "v0" not in _items(client, "fan")  # (v0: seen, left out)
    before = stack.checkpoints.version()
    assert _state(stack, "fan") == "none"

    asked = client.post("/v1/users/fan/erase", json={"reason": "account deleted"})
    assert asked.status_code == 202, asked.text
    assert asked.json()["state"] == "waiting"
    # no event comes: the request alone makes the worker checkpoint
    wait_for(lambda: _state(stack, "fan") == "erased", 30, "the worker to erase fan", interval=ADMIN_POLL)
    status = client.get("/v1/users/fan/erase").json()
    assert status["version"] > before and status["applied"] >= status["requested"]
    wait_for(lambda: client.get("/v1/users/fan/recommendations").json()["model_version"] == status["version"], 20,
             "the erasing version served")  # fmt: skip
    assert not _personal(client, "fan")
    assert _items(client, "fan") == _items(client, "newcomer")  # their seen set is gone too (v0 is back)
    learner = current_learner(stack.env)
    assert "fan" not in list(learner.model.users.ids) and "u1" in list(learner.model.users.ids)

    refused = client.post(f"/v1/models/{before}/promote", json={"reason": "back to before"})
    assert refused.status_code == 409 and "erased users" in refused.json()["detail"], refused.text

    # an event of theirs from before the request (a backlog): dropped, counted, not learned
    produce_events(stack.broker, stack.topic, [{"event_id": "late", "user_id": "fan", "item_id": "v1", "type": "like",
                                                "ts": iso(70)}])  # fmt: skip
    wait_for(lambda: client.get("/v1/gate").json()["counts"].get("user_erased") == 1, 30, "the late event dropped",
             interval=ADMIN_POLL)  # fmt: skip
    assert not _personal(client, "fan")

    # the CLI: the same request and status; u1's seen set (every item) is held by the API process now, and the log
    # the API reads changes from holds only the entry the first erasure started it again with
    assert _items(client, "u1") == []
    env = {**os.environ, **stack.env}
    erased = run_cli("users", "erase", "u1", "--reason", "asked by email", env=env)
    assert erased.returncode == 0, erased.stderr
    wait_for(lambda: _state(stack, "u1") == "erased", 30, "the worker to erase u1", interval=ADMIN_POLL)
    served = stack.client.get("/v1/users/u1/erase").json()["version"]
    wait_for(lambda: client.get("/v1/users/u1/recommendations").json()["model_version"] == served, 20, "it served")
    assert _items(client, "u1") == _items(client, "newcomer")  # the held seen set is dropped
    shown = run_cli("users", "erasure", "u1", env=env)
    assert shown.returncode == 0 and "u1: erased by v" in shown.stdout, shown.stdout + shown.stderr
    none = run_cli("users", "erasure", "nobody", env=env)
    assert none.returncode == 1 and "no erasure" in none.stdout
    bad = run_cli("users", "erase", "bad id!", "--reason", "x", env=env)
    assert bad.returncode == 2 and "is not a user id" in bad.stderr

"""The quality gate with the real broker and Redis: duplicates, quarantine, replay."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from recstream import local_services
from recstream.events import Event
from tests.clock import iso
from tests.conftest import Stack, run_cli, stop_gracefully, wait_for
from tests.kafka_io import produce_events, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _gate_counts(client: httpx.Client) -> dict[str, int]:
    return client.get("/v1/gate").json()["counts"]


def test_duplicates_are_learned_once_across_resends_and_restarts(
    stack: Stack, processes: list[local_services.LocalService]
) -> None:
    service_env, broker, topic = stack.env, stack.broker, stack.topic
    client, checkpoints, worker = stack.client, stack.checkpoints, stack.worker
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
    stop_gracefully(worker)
    restarted = local_services.start_worker(service_env)
    processes.append(restarted)
    produce_events(broker, topic, batch[:10])  # straight to Kafka this time
    fresh = [{**batch[0], "event_id": "fresh-1"}]
    produce_events(broker, topic, fresh)
    wait_for(lambda: checkpoints.learned() == 21, 60, "the fresh event to be learned after the restart")
    wait_for(lambda: _gate_counts(client).get("duplicate") == 30, 30, "10 more duplicates to be counted")
    assert checkpoints.learned() == 21
    assert client.get("/v1/gate").json()["guard"].get("state") == "learning"


def test_held_events_are_quarantined_with_reasons_and_replayed_minus_the_overridden_rule(stack: Stack) -> None:
    service_env, broker, client, checkpoints = stack.env, stack.broker, stack.client, stack.checkpoints
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    good = {"event_id": "ok-1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso(0)}
    from_the_future = {**good, "event_id": "future-1", "item_id": "v2", "ts": future}
    too_long = {
        **good,
        "event_id": "long-1",
        "item_id": "v3",
        "type": "view",
        "watch_seconds": 5000.0,
        "item_duration_seconds": 30.0,
    }
    answer = client.post("/v1/events", json=[good, from_the_future, too_long])
    assert answer.status_code == 202, answer.text
    # the answer names the events the worker's gate will hold: the rules that read only the event and the time
    said = answer.json()["held"]
    assert [(h["index"], h["event_id"], h["reason"]) for h in said] == [
        (1, "future-1", "future_timestamp"),
        (2, "long-1", "watch_exceeds_duration"),
    ], said
    held = [json.loads(v) for v in read_topic(broker, service_env["RECSTREAM_TOPIC_QUARANTINED"], 2, timeout=60)]
    by_id = {h["event"]["event_id"]: h for h in held}
    assert by_id["future-1"]["reason"] == "future_timestamp"
    assert by_id["long-1"]["reason"] == "watch_exceeds_duration"
    assert "5000 s" in by_id["long-1"]["detail"]
    assert said[1]["detail"] == by_id["long-1"]["detail"]  # the worker's own words
    assert Event.model_validate(by_id["long-1"]["event"]) == Event.model_validate(too_long)
    wait_for(lambda: checkpoints.learned() == 1, 30, "the good event to be learned")
    counts = wait_for(
        lambda: _gate_counts(client).get("watch_exceeds_duration") == 1 and _gate_counts(client), 30, "counts"
    )
    assert counts["future_timestamp"] == 1

    # The operator reviews and replays the watch-time holds (a client bug that is now understood).
    env = {**os.environ, **service_env}
    out = run_cli("quarantine", "replay", "--reason", "watch_exceeds_duration", env=env)
    assert out.returncode == 0, out.stderr
    assert "replayed 1 events" in out.stdout
    wait_for(lambda: checkpoints.learned() == 2, 30, "the replayed event to pass the gate minus its rule")
    # Replaying again sends nothing: the replay recorded what it sent (the gate's duplicate check forgets event ids
    # after RECSTREAM_DEDUPE_RETENTION_SECONDS, a record does not).
    again = run_cli("quarantine", "replay", "--reason", "watch_exceeds_duration", env=env)
    assert again.returncode == 0, again.stderr
    assert "replayed 0 events" in again.stdout and "1 replayed before left out (--again" in again.stdout, again.stdout
    # Sent again on purpose, within the retention it is a learned duplicate: learned once all the same.
    forced = run_cli("quarantine", "replay", "--reason", "watch_exceeds_duration", "--again", env=env)
    assert forced.returncode == 0 and "replayed 1 events" in forced.stdout, forced.stdout + forced.stderr
    wait_for(lambda: _gate_counts(client).get("duplicate") == 1, 30, "the forced replay to be a duplicate")
    assert checkpoints.learned() == 2
    # The future event was not replayed and is still held, nothing lost.
    listing = run_cli("quarantine", "list", env=env)
    assert "future_timestamp" in listing.stdout
    # A reason code misspelt: refused, naming the codes, instead of "0 of 0 held events shown" (or a replay of none).
    for action in ("show", "replay"):
        typo = run_cli("quarantine", action, "--reason", "future_timestmp", env=env)
        assert typo.returncode == 1, typo.stdout + typo.stderr
        assert "--reason 'future_timestmp' is no reason an event is held for; the reasons are future_timestamp, " in (
            typo.stderr
        )
    shown = run_cli("quarantine", "show", "--reason", "future_timestamp", env=env)
    assert shown.returncode == 0 and "1 of 1 held events shown" in shown.stdout, shown.stdout + shown.stderr
    none_held = run_cli("quarantine", "show", "--reason", "user_rate", env=env)  # a real code, none held: 0 shown
    assert none_held.returncode == 0 and "0 of 0 held events shown" in none_held.stdout, none_held.stderr
    # A topic not read to its end in time: one line saying how to give it longer, no traceback.
    hurried = run_cli("quarantine", "list", "--timeout", "0", env=env)
    assert hurried.returncode == 1, hurried.stderr
    assert hurried.stderr.strip().endswith("within 0 s; give it longer with --timeout"), hurried.stderr
    assert "Traceback" not in hurried.stderr


def test_a_replayed_event_held_again_keeps_what_was_overridden_for_it(stack: Stack) -> None:
    service_env, broker, client, checkpoints = stack.env, stack.broker, stack.client, stack.checkpoints
    quarantined = service_env["RECSTREAM_TOPIC_QUARANTINED"]
    env = {**os.environ, **service_env}
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    # stamped ahead of the clock and watched far longer than it lasts: two rules hold it, one at a time
    both = {
        "event_id": "both-1",
        "user_id": "u1",
        "item_id": "v9",
        "type": "view",
        "ts": future,
        "watch_seconds": 5000.0,
        "item_duration_seconds": 30.0,
    }
    assert client.post("/v1/events", json=[both]).status_code == 202
    first = [json.loads(v) for v in read_topic(broker, quarantined, 1, timeout=60)]
    assert first[0]["reason"] == "future_timestamp" and "overrides" not in first[0]
    shown = run_cli("quarantine", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "future_timestamp: " in shown.stdout and "event_id=both-1" in shown.stdout, shown.stdout
    assert "1 of 1 held events shown" in shown.stdout, shown.stdout

    # The operator overrides the clock rule; the plausibility rule holds it next, and its record says what was
    # overridden for it already.
    assert "replayed 1 events" in run_cli("quarantine", "replay", "--reason", "future_timestamp", env=env).stdout
    again = [json.loads(v) for v in read_topic(broker, quarantined, 2, timeout=60)][1]
    assert again["reason"] == "watch_exceeds_duration" and again["overrides"] == ["future_timestamp"], again
    shown = run_cli("quarantine", "show", "--reason", "watch_exceeds_duration", "--json", env=env)
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["event"]["event_id"] for r in records] == ["both-1"] and records[0]["_place"].endswith(":1"), records

    # Its replay for the second reason overrides both: learned, nothing held a third time.
    assert "replayed 1 events" in run_cli("quarantine", "replay", "--reason", "watch_exceeds_duration", env=env).stdout
    wait_for(lambda: checkpoints.learned() == 1, 60, "the event replayed twice to be learned")
    assert _gate_counts(client).get("future_timestamp") == 1 and _gate_counts(client).get("watch_exceeds_duration") == 1

"""Bad input gets a clear 4xx naming the field, or a dead letter with its reason; nothing crashes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from recstream import local_services
from stream.processor import DEAD_LETTER_PAYLOAD_BYTES
from tests.clock import iso
from tests.conftest import Endpoint, api_client, make_env, wait_for
from tests.kafka_io import CheckpointReader, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GOOD = {"event_id": "g1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}


@dataclass
class Stack:
    env: dict[str, str]
    client: httpx.Client
    checkpoints: CheckpointReader
    worker: local_services.LocalService


@pytest.fixture(scope="module")
def stack(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> Iterator[Stack]:
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_MAX_BODY_BYTES": "200000",
        "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port()),
    }
    worker = local_services.start_worker(env)
    api = None
    try:
        api = local_services.start_api(env)
        with api_client(api) as client:
            checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
            yield Stack(env, client, checkpoints, worker)
            checkpoints.close()
    finally:
        if api is not None:
            api.stop()
        worker.stop(timeout=20)


def _post(stack: Stack, body: bytes | str) -> httpx.Response:
    return stack.client.post("/v1/events", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ("{not json", 400, "not valid JSON"),
        ('{"event_id": "x"}', 422, "must be a JSON list of events, got an object"),
        ("null", 422, "must be a JSON list of events, got null"),
        ('"x"', 422, "must be a JSON list of events, got a string"),
        ("[]", 422, "empty"),
        (json.dumps([GOOD] * 1001), 422, "at most 1000"),
    ],
    ids=["malformed-json", "an-object", "null", "a-string", "empty-batch", "oversized-batch"],
)
def test_bad_batches_are_refused_with_a_reason(stack: Stack, body: str, status: int, says: str) -> None:
    response = _post(stack, body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


def test_malformed_json_to_the_scores_route_says_where(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/scores", content=b'{"user_id": "u1", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("invalid request: body: not valid JSON (") and detail.endswith("at character 18"), detail


def test_oversized_body_is_refused(stack: Stack) -> None:
    response = _post(stack, json.dumps([{**GOOD, "context": {"k": "x" * 250}}] * 900))
    assert response.status_code == 413
    assert "RECSTREAM_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"type": "love"}, "type", "'view', 'like', 'share' or 'skip'"),
        ({"user_id": 42}, "user_id", "valid string"),
        ({"user_id": "u" * 129}, "user_id", "at most 128"),
        ({"ts": "2026-11-22T10:00:00"}, "ts", "timezone"),
        ({"ts": "1796528600"}, "ts", "ISO-8601 string with a timezone, e.g. 2026-11-22T10:00:00Z (not Unix seconds)"),
        ({"watch_seconds": "long"}, "watch_seconds", "valid number"),
        ({"watch_seconds": -1}, "watch_seconds", "greater than or equal to 0"),
        ({"context": {f"k{i}": i for i in range(17)}}, "context", "at most 16 keys"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"item_id": None}, "item_id", "valid string"),
    ],
    ids=[
        "unknown-type",
        "wrong-type",
        "oversized-field",
        "naive-ts",
        "unix-seconds-ts",
        "string-number",
        "negative",
        "big-context",
        "unknown-field",
        "null-id",
    ],
)
def test_invalid_event_names_its_field(stack: Stack, change: dict, field: str, says: str) -> None:
    bad = {**GOOD, **change}
    response = stack.client.post("/v1/events", json=[bad])
    assert response.status_code == 422, response.text
    errors = response.json()["errors"][0]["errors"]
    assert any(e["field"].startswith(field) and says in e["message"] for e in errors), errors


def test_missing_field_is_named(stack: Stack) -> None:
    bad = {k: v for k, v in GOOD.items() if k != "item_id"}
    response = stack.client.post("/v1/events", json=[bad])
    assert response.status_code == 422
    assert {"field": "item_id", "message": "Field required"} in response.json()["errors"][0]["errors"]


def test_an_event_of_many_unknown_fields_is_answered_in_a_few_errors(stack: Stack) -> None:
    # each unknown field is an error of its own: the answer lists 20 and says how many more (else one request of
    # many such fields would make an answer several times its size); past 64 fields they are not looked at one by one
    some = {**GOOD, "event_id": "f1", **{f"x{k}": k for k in range(30)}}
    many = {**GOOD, "event_id": "f2", **{f"y{k}": k for k in range(5000)}}
    wide = {**GOOD, "event_id": "f3", "context": {f"c{k}": [k] for k in range(5000)}}
    response = stack.client.post("/v1/events", json=[some, many, wide, {**GOOD, "event_id": "f4"}])
    assert response.status_code == 202, response.text
    errors = {e["event_id"]: e["errors"] for e in response.json()["errors"]}
    assert len(errors["f1"]) == 21 and errors["f1"][0] == {"field": "x0", "message": "Extra inputs are not permitted"}
    assert errors["f1"][-1] == {"field": "(more)", "message": "10 more errors not shown"}
    assert errors["f2"] == [
        {
            "field": "(event)",
            "message": "an event has at most 8 fields (event_id, user_id, item_id, type, ts, watch_seconds, "
            "item_duration_seconds, context), got 5005",
        }
    ]
    assert errors["f3"] == [{"field": "context", "message": "context may have at most 16 keys, got 5000"}]
    response = stack.client.post(
        "/v1/scores", json={"user_id": "u1", "item_ids": ["v1"], **{f"z{k}": 0 for k in range(40)}}
    )
    assert response.status_code == 422
    assert len(response.json()["errors"]) == 21 and "20 more errors not shown" in response.json()["detail"]


def test_mixed_batch_accepts_the_valid_events_and_explains_the_rest(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/events", json=[{**GOOD, "event_id": "m1"}, {**GOOD, "event_id": "m2", "type": "nope"}]
    )
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["event_id"] == "m2"


def test_bad_query_parameters_are_refused(stack: Stack) -> None:
    assert stack.client.get("/v1/users/u1/recommendations", params={"k": 0}).status_code == 422
    too_many = stack.client.get("/v1/users/u1/recommendations", params={"k": 101})
    assert too_many.status_code == 422 and "RECSTREAM_K_MAX" in too_many.json()["detail"]
    assert stack.client.get("/v1/users/bad%20id/recommendations").status_code == 422


def _worker_metrics(stack: Stack) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.env['RECSTREAM_WORKER_METRICS_PORT']}/metrics").text
    wanted = {
        "consumed": "recstream_events_consumed_total ",
        "learned": "recstream_events_learned_total ",
        "rejected": 'recstream_events_rejected_total{stage="worker"} ',
    }
    values = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        for key, prefix in wanted.items():
            if line.startswith(prefix):
                values[key] = float(line[len(prefix) :])
    return values


def test_malformed_kafka_messages_are_dead_lettered_and_the_worker_goes_on(stack: Stack) -> None:
    env = stack.env
    wait_for(lambda: _worker_metrics(stack), 30, "the worker's metrics endpoint")
    counted_before = _worker_metrics(stack)
    before = stack.checkpoints.learned()
    produce(
        env["RECSTREAM_BROKER_URL"],
        env["RECSTREAM_TOPIC_EVENTS"],
        [
            (b"u9", b"{this is not json"),
            (b"u9", json.dumps({**GOOD, "event_id": "k1", "type": "explode"}).encode()),
            (b"u9", b"\xff\xfe\x00binary"),
            (b"u9", json.dumps({**GOOD, "event_id": "k2", "user_id": "u9"}).encode()),
        ],
    )
    rejected = [
        json.loads(v) for v in read_topic(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_REJECTED"], 3, timeout=60)
    ]
    assert len(rejected) == 3
    reasons = [r["reason"] for r in rejected]
    assert reasons[0].startswith("malformed JSON")
    assert "type" in reasons[1]
    assert "payload_base64" in rejected[2]
    assert rejected[0]["payload"] == "{this is not json"
    # The valid event after the bad ones is learned: the worker did not stop. (Dead letters reach Kafka
    # before the checkpoint that covers them, so wait for the checkpoint itself.)
    wait_for(
        lambda: stack.checkpoints.meta().get("events_rejected", 0) >= 3 and stack.checkpoints.learned() >= before + 1,
        30,
        "a checkpoint covering the 3 rejected messages and the valid event after them",
    )
    assert stack.worker.is_running()
    # The worker's own metrics moved with the stream.
    counted = _worker_metrics(stack)
    assert counted["consumed"] - counted_before["consumed"] >= 4
    assert counted["rejected"] - counted_before["rejected"] == 3
    assert counted["learned"] - counted_before["learned"] >= 1


def test_a_refused_message_too_large_to_dead_letter_whole_is_cut_and_the_worker_goes_on(stack: Stack) -> None:
    """A refused message's dead letter carries the message's bytes; base64 (or escaped text) makes them larger,
    and the producer refuses a request over 1 MiB. Such a message must not stop the worker: its letter carries
    the first bytes, says so, and names the offset where the whole message stays."""
    env = stack.env
    before = stack.checkpoints.learned()
    huge = b"\xff" * 900_000  # not UTF-8: base64 would make a 1.2 MB letter
    produce(
        env["RECSTREAM_BROKER_URL"],
        env["RECSTREAM_TOPIC_EVENTS"],
        [(b"u8", huge), (b"u8", json.dumps({**GOOD, "event_id": "after-huge", "user_id": "u8"}).encode())],
    )
    wait_for(lambda: stack.checkpoints.learned() >= before + 1, 60, "the valid event after the huge one to be learned")

    def letters_of_the_huge_message() -> list[dict]:  # the topic also holds the other tests' letters
        letters = read_topic(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_REJECTED"], 10_000, timeout=2)
        return [letter for letter in map(json.loads, letters) if letter.get("payload_bytes") == len(huge)]

    # flushed before the checkpoint that covered the valid event after it: there already
    cut = wait_for(letters_of_the_huge_message, 30, "the huge message's dead letter")
    assert len(cut) == 1
    assert cut[0]["payload_truncated"] is True
    assert base64.b64decode(cut[0]["payload_base64"]) == huge[:DEAD_LETTER_PAYLOAD_BYTES]
    assert {"topic", "partition", "offset"} <= cut[0].keys()
    assert stack.worker.is_running()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400"])
def test_a_number_that_is_not_finite_refuses_its_event_alone_naming_the_field(stack: Stack, number: str) -> None:
    """Python's json.dumps writes NaN and Infinity; 1e400 is JSON past a double's range. The batch is not malformed:
    the event holding one is refused naming its field, and the rest of the batch is accepted."""
    good = json.dumps({**GOOD, "event_id": f"finite-{number}"})
    bad = json.dumps({**GOOD, "event_id": f"not-finite-{number}"})[:-1] + f', "watch_seconds": {number}}}'
    response = _post(stack, f"[{good}, {bad}]")
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 1), body
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["event_id"] == f"not-finite-{number}"
    errors = body["errors"][0]["errors"]
    assert errors == [{"field": "watch_seconds", "message": "Input should be a finite number"}], errors


def test_a_kafka_batch_message_with_a_number_that_is_not_finite_dead_letters_that_event_alone(stack: Stack) -> None:
    env = stack.env
    before = stack.checkpoints.learned()
    good = json.dumps({**GOOD, "event_id": "kafka-finite", "user_id": "u7"})
    bad = json.dumps({**GOOD, "event_id": "kafka-nan", "user_id": "u7"})[:-1] + ', "watch_seconds": NaN}'
    produce(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], [(b"u7", f"[{good}, {bad}]".encode())])
    wait_for(lambda: stack.checkpoints.learned() >= before + 1, 60, "the valid event of the message to be learned")

    def its_letters() -> list[dict]:  # the topic also holds the other tests' letters
        letters = read_topic(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_REJECTED"], 10_000, timeout=2)
        return [letter for letter in map(json.loads, letters) if "kafka-nan" in letter.get("payload", "")]

    letters = wait_for(its_letters, 30, "the refused event's dead letter")
    assert len(letters) == 1, letters
    assert letters[0]["index"] == 1, letters
    assert letters[0]["reason"].startswith("watch_seconds: Input should be a finite number"), letters[0]
    assert '"watch_seconds":NaN' in letters[0]["payload"]  # as it was sent, not turned into null

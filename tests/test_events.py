"""The event contract, on plain data."""

from __future__ import annotations

import json

import pytest

from recstream.events import Event, parse_event, parse_message

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": "2026-11-22T10:00:00Z"}


def test_a_full_event_round_trips() -> None:
    raw = {**GOOD, "watch_seconds": 12, "item_duration_seconds": 30.5, "context": {"device": "ios", "wifi": True}}
    event = Event.model_validate(raw)
    assert event.watch_seconds == 12.0 and event.context == {"device": "ios", "wifi": True}
    again = Event.model_validate_json(event.model_dump_json())
    assert again == event


REFUSALS = [
    ({"type": "love"}, "type"),
    ({"ts": "2026-11-22T10:00:00"}, "ts"),
    ({"ts": 1700000000}, "ts"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "has space"}, "user_id"),
    ({"item_id": "x" * 129}, "item_id"),
    ({"watch_seconds": float("nan")}, "watch_seconds"),
    ({"watch_seconds": 86_401}, "watch_seconds"),
    ({"item_duration_seconds": 0}, "item_duration_seconds"),
    ({"context": {"k": {"nested": 1}}}, "context"),
    ({"context": {"k": "x" * 257}}, "context"),
    ({"extra": 1}, "extra"),
    ({"event_id": 5}, "event_id"),
    ({"watch_seconds": "12"}, "watch_seconds"),
    ({"watch_seconds": True}, "watch_seconds"),
    ({"item_duration_seconds": "30"}, "item_duration_seconds"),
]


@pytest.mark.parametrize(("change", "field"), REFUSALS)
def test_invalid_fields_are_refused_by_name(change: dict, field: str) -> None:
    event, reason = parse_event(json.dumps({**GOOD, **change}).encode())
    assert event is None
    assert reason is not None and reason.startswith(field), reason


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b"[1,2]", b"\xff\xfe", b'"just a string"', b"{}" * 1000])
def test_parse_event_never_raises(raw: bytes) -> None:
    event, reason = parse_event(raw)
    assert event is None and reason


def test_malformed_json_is_named_as_such() -> None:
    _, reason = parse_event(b"{oops")
    assert reason is not None and reason.startswith("malformed JSON")


def test_a_batch_of_valid_events_decodes_like_each_event_alone() -> None:
    raws = [{**GOOD, "event_id": f"e{n}", "watch_seconds": n, "context": {"n": n}} for n in range(50)]
    decoded = parse_message(json.dumps(raws).encode())
    assert [(d.event, d.reason, d.index, d.raw) for d in decoded] == [
        (Event.model_validate(raw), None, n, None) for n, raw in enumerate(raws)
    ]


# NaN is not JSON: orjson refuses the whole message (malformed), tested in test_fuzz_contract.
@pytest.mark.parametrize(("change", "field"), [(c, f) for c, f in REFUSALS if "NaN" not in json.dumps(c)])
def test_one_bad_element_of_a_batch_is_refused_by_name_and_the_others_kept(change: dict, field: str) -> None:
    raws = [{**GOOD, "event_id": "before"}, {**GOOD, **change}, {**GOOD, "event_id": "after"}]
    decoded = parse_message(json.dumps(raws).encode())
    assert [d.event.event_id if d.event else None for d in decoded] == ["before", None, "after"]
    assert decoded[1].index == 1 and decoded[1].reason is not None and decoded[1].reason.startswith(field)
    assert decoded[1].raw is not None and json.loads(decoded[1].raw) == raws[1]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("a" * 257, "context.k: String should have at most 256 characters"),
        ([1], "context.k: must be a string (at most 256 characters), a boolean, an integer or a finite number"),
        (None, "context.k: must be a string (at most 256 characters), a boolean, an integer or a finite number"),
    ],
    ids=["long-string", "a-list", "null"],
)
def test_a_bad_context_value_gets_one_message_not_one_per_kind_it_may_be(value: object, says: str) -> None:
    event, reason = parse_event(json.dumps({**GOOD, "context": {"k": value, "ok": "fine"}}).encode())
    assert event is None and reason is not None
    assert reason.endswith(says) and reason.count("context.k") == 1, reason

"""The event contract, on plain data."""

from __future__ import annotations

import json

import pytest

from recstream.events import Event, parse_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": "2026-11-22T10:00:00Z"}


def test_a_full_event_round_trips() -> None:
    raw = {**GOOD, "watch_seconds": 12, "item_duration_seconds": 30.5, "context": {"device": "ios", "wifi": True}}
    event = Event.model_validate(raw)
    assert event.watch_seconds == 12.0 and event.context == {"device": "ios", "wifi": True}
    again = Event.model_validate_json(event.model_dump_json())
    assert again == event


@pytest.mark.parametrize(
    ("change", "field"),
    [
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
    ],
)
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

"""The event contract, on plain data."""

from __future__ import annotations

import asyncio
import calendar
import json
import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from learner import kernels
from recstream import events
from recstream.events import Event, parse_event, parse_message, parse_one_event_messages
from stream.processor import EventProcessor, Record
from tests.conftest import skip_unless_ci

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
    ({"ts": "1700000000"}, "ts"),  # Unix seconds in a string: pydantic alone would read them
    ({"ts": "1700000000.5"}, "ts"),
    ({"ts": "-1"}, "ts"),
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


# NaN is not JSON, but Python's json.dumps writes it: the element holding it is refused, naming its field
@pytest.mark.parametrize(("change", "field"), REFUSALS)
def test_one_bad_element_of_a_batch_is_refused_by_name_and_the_others_kept(change: dict, field: str) -> None:
    raws = [{**GOOD, "event_id": "before"}, {**GOOD, **change}, {**GOOD, "event_id": "after"}]
    decoded = parse_message(json.dumps(raws).encode())
    assert [d.event.event_id if d.event else None for d in decoded] == ["before", None, "after"]
    assert decoded[1].index == 1 and decoded[1].reason is not None and decoded[1].reason.startswith(field)
    assert decoded[1].raw is not None and json.dumps(json.loads(decoded[1].raw)) == json.dumps(raws[1])  # (NaN kept)


def test_a_refused_element_with_an_integer_past_64_bits_keeps_it_in_its_letter() -> None:
    """A NaN elsewhere in the message has it read by pydantic's parser, which keeps such an integer whole (orjson
    reads it as a float): the refused element's bytes for its dead letter must still be made, with it as it was."""
    raws = [{**GOOD, "watch_seconds": float("nan")}, {**GOOD, "type": "nope", "context": {"k": 2**70}}]
    decoded = parse_message(json.dumps(raws).encode())
    assert [d.reason.split(":")[0] if d.reason else None for d in decoded] == ["watch_seconds", "type"]
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


# -- one-event messages decoded together (the worker's _parse) ------------------------------------


def _one_event_messages(count: int) -> list[bytes]:
    # (a context int too large for 64 bits stays an int, as pydantic's JSON parser reads it alone; orjson would make
    # it a float)
    return [
        (
            " " * (n % 3)
            + json.dumps({**GOOD, "event_id": f"e{n}", "context": {"n": n, "big": 10**21}})
            + "\n" * (n % 2)
        ).encode()
        for n in range(count)
    ]


def test_one_event_messages_decode_together_as_each_alone() -> None:
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    raws = _one_event_messages(20)
    together = parse_one_event_messages(raws)
    assert together is not None and together == [parse_message(raw)[0] for raw in raws]
    assert together[7].event is not None and together[7].event.context == {"n": 7, "big": 10**21}
    refused = [*raws[:5], json.dumps({**GOOD, "type": "love"}).encode(), *raws[5:]]
    batch = [*raws[:5], json.dumps([GOOD]).encode(), *raws[5:]]
    assert parse_one_event_messages(refused) is None and parse_one_event_messages(batch) is None


def test_messages_that_are_refused_alone_are_not_decoded_together_even_when_their_join_is_valid() -> None:
    """Two messages, each cut inside a string, whose bytes joined by a comma in a JSON array are two valid events:
    each is refused alone, so they are not decoded together (the kernel checks that each message is one JSON object on
    its own before joining them)."""
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    first = json.dumps({**GOOD, "context": {"x": "},{"}}).encode()
    second = json.dumps({**GOOD, "event_id": "e2"}).encode()
    cut = first.index(b'"},{"') + 2  # the first message ends inside the string "},{"
    pair = [first[:cut], first[cut + 1 :] + b", " + second]
    assert pair[0].endswith(b"}") and pair[1].startswith(b"{") and pair[1].endswith(b"}")
    assert json.loads(b"[" + b",".join(pair) + b"]") == [json.loads(first), json.loads(second)]
    assert [parse_message(raw)[0].event for raw in pair] == [None, None]
    assert parse_one_event_messages(pair) is None


def test_the_workers_decode_of_records_is_each_records_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor decodes one-event messages 500 at a time together; a group holding a refused event or a batch
    message is decoded record by record."""
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    raws = _one_event_messages(1_203)
    raws[600] = json.dumps({**GOOD, "type": "love"}).encode()  # in the second group
    raws[1_100] = json.dumps([GOOD, {**GOOD, "event_id": "e2"}]).encode()  # in the third
    records = [Record("t", 0, n, None, raw) for n, raw in enumerate(raws)]
    alone: list[bytes] = []
    monkeypatch.setattr(events, "parse_message", lambda raw: alone.append(raw) or parse_message(raw))
    parsed = asyncio.run(EventProcessor._parse(records))
    assert [parsed[id(r)] for r in records] == [parse_message(raw) for raw in raws]
    assert alone == raws[500:]  # the first group was decoded together


# -- ts_seconds: ts.timestamp(), compiled ------------------------------------------------------


def _compiled_timestamp() -> Any:  # the kernel's built-in function
    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")
    return kernel.timestamp


def _aware_datetimes() -> list:
    """Aware datetimes as the worker meets them (pydantic's parse of an ISO string) and from Python code."""
    rng = random.Random(7)
    out = []
    for _ in range(3_000):  # any day of years 1-9999, any time, any offset within a day (to the microsecond)
        moment = datetime(1, 1, 1) + timedelta(microseconds=rng.randrange(315_537_897_600_000_000))
        offset = timedelta(microseconds=rng.randrange(-86_399_999_999, 86_400_000_000))
        try:
            out.append(moment.replace(tzinfo=timezone(offset)))
        except ValueError:
            pass
    for text in (
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00.123456+05:30",
        "2024-02-29T23:59:59.999999-08:00",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2000-03-01T00:00:00+23:59",
        "1900-02-28T12:00:00-23:59",
        "2255-06-05T23:47:34.740992Z",
        "2255-06-05T23:47:34.740993Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
    ):
        out.append(Event.model_validate({**GOOD, "ts": text}).ts)
    paris = ZoneInfo("Europe/Paris")  # a zone whose offset depends on the datetime (and on fold)
    for fold in (0, 1):
        out += [datetime(2026, 10, 25, 2, 30, tzinfo=paris, fold=fold)]  # twice that night
        out += [datetime(2026, 3, 29, 2, 30, tzinfo=paris, fold=fold)]  # not that night
    out.append(datetime(2026, 1, 1, tzinfo=UTC))
    return out


def test_the_compiled_timestamp_is_the_methods_float() -> None:
    timestamp = _compiled_timestamp()
    moments = _aware_datetimes()
    assert len(moments) > 2_000
    assert [timestamp(m) for m in moments] == [m.timestamp() for m in moments]
    event = Event.model_validate({**GOOD, "ts": "2026-11-22T10:00:00.5+01:00"})
    expected = calendar.timegm((2026, 11, 22, 9, 0, 0)) + 0.5  # (time's own arithmetic, not datetime's)
    assert event.ts_seconds == expected and event.__dict__["ts_seconds"] == expected


def test_the_compiled_timestamp_gives_other_datetimes_to_the_method() -> None:
    """A naive datetime (local time), a timezone whose offset is not a timedelta within a day: the method's result,
    or its error; a subclass of datetime gets datetime's (as ``datetime.timestamp``, the function without the
    kernels, gives it); anything else a TypeError."""
    timestamp = _compiled_timestamp()

    class Shifted(datetime):
        def timestamp(self) -> float:
            return 42.0

    class Odd(tzinfo):
        def __init__(self, offset: object) -> None:
            self.offset = offset

        def utcoffset(self, dt: object) -> object:  # noqa: ARG002 - a fixed offset
            if isinstance(self.offset, Exception):
                raise self.offset
            return self.offset

    naive = datetime(2026, 11, 22, 10, 0, 0, 250_000)
    assert timestamp(naive) == naive.timestamp()
    shifted = Shifted(2026, 1, 1, 12, tzinfo=Odd(timedelta(hours=-3)))
    assert timestamp(shifted) == datetime.timestamp(shifted) == calendar.timegm((2026, 1, 1, 15, 0, 0))
    assert timestamp(shifted.replace(tzinfo=None)) == datetime.timestamp(shifted.replace(tzinfo=None))
    for offset, error in (
        (timedelta(days=1), ValueError),
        (timedelta(days=-1), ValueError),
        (None, TypeError),
        ("1h", TypeError),
        (LookupError("no offset"), LookupError),
    ):
        moment = datetime(2026, 1, 1, tzinfo=Odd(offset))
        with pytest.raises(error) as method:
            moment.timestamp()
        with pytest.raises(error) as compiled:
            timestamp(moment)
        assert str(compiled.value) == str(method.value)

    class Delta(timedelta):
        pass

    moment = datetime(2026, 1, 1, tzinfo=Odd(Delta(hours=2)))  # a subclass of timedelta: the method decides
    assert timestamp(moment) == moment.timestamp()
    with pytest.raises(TypeError):
        timestamp("2026-01-01T00:00:00Z")

"""Property tests (hypothesis) for the event contract and the worker's decoder ``parse_event``.

* Arbitrary JSON values and arbitrary bytes: ``parse_event`` never raises and answers exactly
  ``(event, None)`` or ``(None, non-empty reason)``.
* Near-valid events (one field replaced by an arbitrary or plausible value, a field dropped, or an
  unknown field added): either accepted, and then the event round-trips through
  ``model_dump_json`` -> ``parse_event`` unchanged, or refused with every error naming that field.

A ``NaN``/``Infinity`` context value used to be accepted and then not round-trip (``model_dump_json``
writes it as ``null``); context floats are now finite only, pinned by
:func:`test_non_finite_context_value_is_refused`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from recstream.events import Event, describe_errors, parse_event, parse_message, parse_one_event_messages

FIELDS = list(Event.model_fields)
REQUIRED = [name for name, info in Event.model_fields.items() if info.is_required()]

VALID: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "u-1",
    "item_id": "v-1",
    "type": "like",
    "ts": "2026-11-22T10:00:00Z",
    "watch_seconds": 12.5,
    "item_duration_seconds": 60.0,
    "context": {"surface": "home", "rank": 3, "autoplay": True, "ratio": 0.5},
}

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
# Only what strict JSON allows (no NaN/Infinity literals), for the JSON-text path.
strict_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

identifiers = st.from_regex(r"\A[A-Za-z0-9._:@\-]{1,130}\Z")
timezones = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60))
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC) | timezones
)
seconds = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 200_000)
context_values = st.text(max_size=300) | st.booleans() | st.integers() | st.floats()
#: Per field, values close to valid (so some are accepted and the round trip is exercised).
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "event_id": identifiers | st.text(max_size=140),
    "user_id": identifiers | st.text(max_size=140),
    "item_id": identifiers | st.text(max_size=140),
    "type": st.sampled_from(["view", "like", "share", "skip", "VIEW", "", "click"]) | st.text(max_size=8),
    "ts": aware_datetimes.map(datetime.isoformat) | st.datetimes().map(datetime.isoformat) | st.text(max_size=30),
    "watch_seconds": seconds,
    "item_duration_seconds": seconds,
    "context": st.dictionaries(st.text(max_size=70), context_values, max_size=18),
}


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event with one change; returns the dict and the name of the changed field."""
    event = dict(VALID)
    action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "add":
        # (a name holding "; " or ": " would make the tests' reading of a reason, "field: message" parts joined by
        # "; ", ambiguous: hypothesis found ": ", whose error reads ": : Extra inputs are not permitted")
        name = draw(
            st.text(min_size=1, max_size=20).filter(lambda n: n not in FIELDS and "; " not in n and ": " not in n)
        )
        event[name] = draw(json_values)
        return event, name
    name = draw(st.sampled_from(FIELDS))
    if action == "drop":
        del event[name]
    else:
        event[name] = draw(PLAUSIBLE[name] | json_values)
    return event, name


# --- helpers ----------------------------------------------------------------------------------


def check_decoded(result: object) -> Event | None:
    """Assert the ``parse_event`` result shape; return the event if accepted."""
    assert isinstance(result, tuple) and len(result) == 2
    event, reason = result
    if event is not None:
        assert isinstance(event, Event)
        assert reason is None
        return event
    assert isinstance(reason, str) and reason.strip(), f"refusal without a reason: {result!r}"
    return None


def assert_round_trips(accepted: Event, *, in_property: bool = True) -> None:
    if in_property:
        note_event("accepted")
    again, reason = parse_event(accepted.model_dump_json().encode())
    assert reason is None, f"accepted event does not round-trip: {reason}"
    assert again == accepted


def names_field(error_field: str, name: str) -> bool:
    return error_field == name or error_field.startswith(name + ".")


# --- (a) arbitrary input never breaks the decoder ---------------------------------------------


@FAST
@given(json_values)
def test_parse_event_total_on_arbitrary_json(value: Any) -> None:
    raw = json.dumps(value).encode()  # may contain NaN/Infinity literals: JSON as Python writes it
    check_decoded(parse_event(raw))


@FAST
@given(st.binary(max_size=512))
def test_parse_event_total_on_arbitrary_bytes(raw: bytes) -> None:
    check_decoded(parse_event(raw))


@FAST
@given(st.lists(json_values, max_size=8) | json_values, st.binary(max_size=64))
def test_parse_message_total_on_lists_and_bytes(value: Any, noise: bytes) -> None:
    """A batch message (a JSON list) or any bytes starting with ``[``: never raises; every element is
    answered (an event, or a reason with its index and bytes)."""
    for raw in (json.dumps(value).encode(), b"[" + noise):
        decoded = parse_message(raw)
        assert decoded
        for item in decoded:
            check_decoded((item.event, item.reason))
        if isinstance(value, list) and 0 < len(value) and raw[:1] == b"[" and decoded[0].index is not None:
            assert [item.index for item in decoded] == list(range(len(value)))
            assert all(item.raw is not None for item in decoded if item.event is None)


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=10))
def test_parse_event_total_on_event_shaped_objects(value: dict[str, Any]) -> None:
    event = check_decoded(parse_event(json.dumps(value).encode()))
    if event is not None:
        assert_round_trips(event)


@FAST
@given(st.binary(max_size=64), st.integers(0, 200))
def test_parse_event_total_on_corrupted_valid_bytes(noise: bytes, at: int) -> None:
    raw = json.dumps(VALID).encode()
    at = min(at, len(raw))
    check_decoded(parse_event(raw[:at] + noise + raw[at + len(noise) :]))


# --- (b) near-valid events: accepted and round-trip, or refused naming the field ---------------


def test_valid_baseline_is_accepted() -> None:
    event, reason = parse_event(json.dumps(VALID).encode())
    assert reason is None and event is not None
    assert_round_trips(event, in_property=False)


@FAST
@given(near_valid())
def test_near_valid_model_validate(case: tuple[dict[str, Any], str]) -> None:
    raw, name = case
    try:
        event = Event.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - must be a ValidationError, checked below
        from pydantic import ValidationError

        assert isinstance(exc, ValidationError), f"{type(exc).__name__}: {exc}"
        fields = [d["field"] for d in describe_errors(exc)]
        assert fields and all(names_field(f, name) for f in fields), (name, fields)
        return
    assert_round_trips(event)


@FAST
@given(near_valid())
def test_near_valid_parse_event(case: tuple[dict[str, Any], str]) -> None:
    raw, name = case
    text = json.dumps(raw)  # NaN/Infinity appear as literals, as a careless producer would send them
    event = check_decoded(parse_event(text.encode()))
    if event is None:
        _, reason = parse_event(text.encode())
        assert reason is not None
        fields = [part.split(": ", 1)[0] for part in reason.split("; ")]
        assert all(names_field(f, name) for f in fields), (name, reason)
        return
    assert_round_trips(event)


@FAST
@given(st.sampled_from(REQUIRED))
def test_dropping_a_required_field_is_refused_by_name(name: str) -> None:
    raw = {k: v for k, v in VALID.items() if k != name}
    event, reason = parse_event(json.dumps(raw).encode())
    assert event is None and reason == f"{name}: Field required"


@FAST
@given(near_valid().filter(lambda c: c[1] != "context"), strict_json_values)
def test_near_valid_strict_json_with_noise_in_context(case: tuple[dict[str, Any], str], extra: Any) -> None:
    """A second, independent change inside ``context`` never hides the first field's error."""
    raw, name = case
    raw = {**raw, "context": {"k": extra}}
    event, reason = parse_event(json.dumps(raw, allow_nan=True).encode())
    if event is None:
        assert reason
        fields = [part.split(": ", 1)[0] for part in reason.split("; ")]
        assert all(names_field(f, name) or names_field(f, "context") for f in fields), (name, reason)


@FAST
@given(
    st.lists(near_valid(), min_size=1, max_size=4),
    st.lists(st.sampled_from(["", " ", "\n", "\t\r\n"]), min_size=2, max_size=2),
)
def test_one_event_messages_decoded_together_are_each_decoded_alone(
    cases: list[tuple[dict[str, Any], str]], spaces: list[str]
) -> None:
    """The worker decodes one-event messages together (``parse_one_event_messages``, one validator call): what it
    returns is what each message alone decodes to, and it decodes together every run of messages that each hold one
    valid event (else None: each is decoded alone, with its reason)."""
    raws = [(spaces[0] + json.dumps(raw) + spaces[1]).encode() for raw, _ in [(VALID, ""), *cases]]
    alone = [parse_message(raw) for raw in raws]
    together = parse_one_event_messages(raws)
    if all(d[0].event is not None for d in alone):
        note_event("all valid")
        assert together == [d[0] for d in alone]
    else:
        assert together is None


# --- known bug --------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_context_value_is_refused(literal: str) -> None:
    text = json.dumps({**VALID, "context": {"x": 0}}).replace('"x": 0', f'"x": {literal}')
    event, reason = parse_event(text.encode())
    assert event is None and reason is not None and reason.startswith("context.x")

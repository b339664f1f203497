"""The event contract: what an app backend publishes, validated strictly (pydantic v2).

Every string and number is bounded. ``ts`` must be an ISO-8601 string with a timezone
(or a timezone-aware ``datetime`` from Python code). Unknown fields are refused, so a typo
in a field name is reported instead of silently ignored.

>>> e = Event.model_validate_json(
...     b'{"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like",'
...     b' "ts": "2026-11-22T10:00:00Z"}')
>>> e.type, e.ts.isoformat()
('like', '2026-11-22T10:00:00+00:00')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import orjson
import pydantic_core
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from learner import kernels

EVENT_TYPES = ("view", "like", "share", "skip")
EventType = Literal["view", "like", "share", "skip"]

ID_PATTERN = r"^[A-Za-z0-9._:@\-]+$"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
ContextValue = Annotated[str, Field(max_length=256)] | bool | int | Annotated[float, Field(allow_inf_nan=False)]

MAX_CONTEXT_KEYS = 16
#: Most events one Kafka message may carry (a JSON list of events: see :func:`parse_message`).
MAX_MESSAGE_EVENTS = 5000
MAX_SECONDS = 86_400.0


class _computed_once:  # a decorator, named like functools.cached_property
    """``functools.cached_property`` without its lock: Python 3.11's takes a lock on every first read (~40% of
    ``Event.ts_seconds``'s cost, read once per event by the worker). An event is read by one task at a time, and
    computing the value twice would give the same float."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.name = func.__name__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)  # found there by the next read
        return value


_kernel = kernels.compiled()
#: ``datetime.timestamp``, or the compiled one (the same float: ``tests/test_events.py``) where the kernels are built.
_timestamp: Callable[[datetime], float] = datetime.timestamp if _kernel is None else _kernel.timestamp


def _iso_string_or_datetime(value: Any) -> Any:
    """``ts`` as given, if it is a datetime or a string that starts as an ISO-8601 date does (``YYYY-``); pydantic then
    parses it. Without the check, pydantic's lax parsing would also read a string of digits as Unix seconds
    (``"1796528600"``), which the contract does not allow and a publisher most likely sent by mistake.

    >>> _iso_string_or_datetime("2026-11-22T10:00:00Z")
    '2026-11-22T10:00:00Z'
    >>> _iso_string_or_datetime("1796528600")
    Traceback (most recent call last):
    ...
    ValueError: ts must be an ISO-8601 string with a timezone, e.g. 2026-11-22T10:00:00Z (not Unix seconds)
    """
    if isinstance(value, str):
        if value[4:5] == "-":
            return value
    elif isinstance(value, datetime):
        return value
    hint = " (not Unix seconds)" if _numeric(value) else ""
    raise ValueError(f"ts must be an ISO-8601 string with a timezone, e.g. 2026-11-22T10:00:00Z{hint}")


def _numeric(value: Any) -> bool:
    """Whether ``value`` reads as a finite number (a ``ts`` given as Unix seconds), a bool not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


class Event(BaseModel):
    """One thing a person did with one item."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, ignored_types=(_computed_once,))

    event_id: Annotated[
        Identifier,
        Field(
            description="Names this event among every user's (a UUID, say; not a per-user counter). Keep it when you "
            "resend the event: one whose id was learned within RECSTREAM_DEDUPE_RETENTION_SECONDS (1 h) is dropped "
            "as a duplicate; a resend later than that is learned again."
        ),
    ]
    user_id: Annotated[Identifier, Field(description="The person (an opaque id, not a name or an email address).")]
    item_id: Annotated[Identifier, Field(description="The video.")]
    type: Annotated[
        EventType, Field(description="What the person did (docs/model-card.md: what the model learns from each).")
    ]
    ts: Annotated[
        AwareDatetime,
        BeforeValidator(_iso_string_or_datetime),
        Field(strict=False, description="When it happened: ISO 8601 with a timezone (not Unix seconds)."),
    ]
    watch_seconds: Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)] | None = Field(
        default=None, description="How long the video was watched."
    )
    item_duration_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)] | None = Field(
        default=None, description="The video's length."
    )
    context: dict[Annotated[str, Field(min_length=1, max_length=64)], ContextValue] = Field(
        default_factory=dict,
        description="Up to 16 flat keys; rec_id names the recommendation list the event came from.",
    )

    @_computed_once
    def ts_seconds(self) -> float:
        """``ts.timestamp()``, computed once and kept in the event's ``__dict__`` (where the worker's compiled views,
        ``kernel.gate_views``, also find or keep it): the worker needs it twice per event (gate and learner). Where
        the kernels are built, :func:`_timestamp` gives the same float in ~0.1 us, where the method costs ~0.8 us
        through pydantic's timezone object."""
        return _timestamp(self.ts)

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"context may have at most {MAX_CONTEXT_KEYS} keys, got {len(value)}")
        return value


#: At most this many errors are described for one event or request, and one more entry says how many were left out:
#: an object of many unknown fields (each one an error) makes an answer or a dead letter no larger than this.
MAX_ERRORS_DESCRIBED = 20
#: More fields than this in one event (or its context) are refused without validating each (:func:`too_many_fields`).
MAX_FIELDS_LOOKED_AT = 64


def too_many_fields(raw: Any) -> list[dict[str, str]] | None:
    """The error of an event object with more than :data:`MAX_FIELDS_LOOKED_AT` fields, or a context with more than
    that many keys, found without validating them one by one (each unknown field would be an error of its own);
    None for anything else (validated as usual)."""
    if not isinstance(raw, dict):
        return None
    if len(raw) > MAX_FIELDS_LOOKED_AT:
        fields = ", ".join(Event.model_fields)
        return [
            {
                "field": "(event)",
                "message": f"an event has at most {len(Event.model_fields)} fields ({fields}), got {len(raw)}",
            }
        ]
    context = raw.get("context")
    if isinstance(context, dict) and len(context) > MAX_FIELDS_LOOKED_AT:
        return [
            {"field": "context", "message": f"context may have at most {MAX_CONTEXT_KEYS} keys, got {len(context)}"}
        ]
    return None


def describe_errors(errors: ValidationError | Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Turn pydantic's errors (a ``ValidationError``, or its ``errors()``: each with ``loc`` and ``msg``) into
    ``{"field": "...", "message": "..."}`` a person can act on: the first :data:`MAX_ERRORS_DESCRIBED`, and then
    one entry saying how many more there were."""
    items = errors.errors(include_url=False) if isinstance(errors, ValidationError) else errors
    described: list[dict[str, str] | tuple[Any, ...]] = []  # a tuple: the place of a context value's message
    unions: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}  # a context value's errors, one per kind it may be
    for e in items:
        loc = tuple(e["loc"])
        if len(loc) == 3 and loc[0] == "context" and loc[2] in _CONTEXT_KINDS:
            if loc[:2] not in unions:
                unions[loc[:2]] = []
                described.append(loc[:2])
            unions[loc[:2]].append(e)
        else:
            described.append(_described(e))
    out = [
        {"field": f"context.{d[1]}", "message": _context_value_message(unions[d])} if isinstance(d, tuple) else d
        for d in described[:MAX_ERRORS_DESCRIBED]
    ]
    if len(described) > MAX_ERRORS_DESCRIBED:
        out.append({"field": "(more)", "message": f"{len(described) - MAX_ERRORS_DESCRIBED} more errors not shown"})
    return out


#: How pydantic names the members of ContextValue's union in an error's location.
_CONTEXT_KINDS = frozenset({"constrained-str", "str", "bool", "int", "float", "constrained-float"})


def _context_value_message(errors: list[Mapping[str, Any]]) -> str:
    """One message for a context value that none of the kinds took: the error of the kind it is (a string too long,
    a number not finite), else what kinds it may be."""
    for e in errors:
        if e.get("type") not in ("string_type", "bool_type", "int_type", "float_type", "bool_parsing", "int_parsing"):
            return str(e["msg"])
    return "must be a string (at most 256 characters), a boolean, an integer or a finite number"


def _described(error: Mapping[str, Any]) -> dict[str, str]:
    loc = tuple(error["loc"])
    if error.get("type") == "json_invalid" and len(loc) == 2 and loc[0] == "body":  # FastAPI: loc is (body, position)
        why = (error.get("ctx") or {}).get("error", "")
        return {"field": "body", "message": f"not valid JSON{f' ({why})' if why else ''} at character {loc[1]}"}
    return {"field": ".".join(str(part) for part in loc) or "(event)", "message": error["msg"]}


def summarize_errors(described: Iterable[Mapping[str, str]]) -> str:
    """:func:`describe_errors`' list in one line: ``field: message; field: message``."""
    return "; ".join(f"{d['field']}: {d['message']}" for d in described)


def parse_event(raw: bytes) -> tuple[Event | None, str | None]:
    """Decode one Kafka message value: ``(event, None)`` or ``(None, reason)``; never raises."""
    try:
        return Event.model_validate_json(raw), None
    except ValidationError as exc:
        details = describe_errors(exc)
        if details and details[0]["message"].startswith("Invalid JSON"):
            return None, f"malformed JSON: {details[0]['message']}"
        return None, summarize_errors(details)
    except Exception as exc:  # noqa: BLE001 - a decoder must never take the worker down
        return None, f"undecodable payload: {type(exc).__name__}: {exc}"


_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class Decoded(NamedTuple):
    """One event of a Kafka message: the event or the reason it was refused, and where it came from."""

    event: Event | None
    reason: str | None
    index: int | None  # position in a batch message; None for a one-event message
    raw: bytes | None  # that element's JSON, for a batch message's refused element (None otherwise)


def parse_message(raw: bytes) -> list[Decoded]:
    """Decode one Kafka message value; never raises.

    A message is one event (a JSON object) or a batch (a JSON list of up to
    :data:`MAX_MESSAGE_EVENTS` events, as the ingest endpoint publishes them). Each element of a
    batch is judged on its own, so one bad event does not take the others down.

    >>> one = b'{"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": "2026-11-22T10:00:00Z"}'
    >>> [(d.event.event_id, d.index) for d in parse_message(one)]
    [('e1', None)]
    >>> batch = parse_message(b"[" + one + b', {"event_id": "e2"}]')
    >>> [(d.event is not None, d.index) for d in batch], batch[1].reason.split(":")[0], batch[1].raw
    ([(True, 0), (False, 1)], 'user_id', b'{"event_id":"e2"}')
    """
    if raw.lstrip()[:1] != b"[":
        event, reason = parse_event(raw)
        return [Decoded(event, reason, None, None)]
    try:
        items = loads_json(raw)
    except orjson.JSONDecodeError as exc:
        return [Decoded(None, f"malformed JSON: {exc}", None, None)]
    if not items or len(items) > MAX_MESSAGE_EVENTS:
        reason = f"a batch message holds 1 to {MAX_MESSAGE_EVENTS} events, this one {len(items)}"
        return [Decoded(None, reason, None, None)]
    try:  # the common case, every element valid: one validator call for the whole list
        events = _EVENT_LIST.validate_python(items)
    except Exception:  # noqa: BLE001 - some element is refused: judge each one on its own (that never raises)
        pass
    else:
        return [Decoded(event, None, index, None) for index, event in enumerate(events)]
    decoded = []
    for index, item in enumerate(items):
        try:
            decoded.append(Decoded(Event.model_validate(item), None, index, None))
        except ValidationError as exc:
            reason = summarize_errors(describe_errors(exc))
            decoded.append(Decoded(None, reason, index, _element_bytes(item)))
        except Exception as exc:  # noqa: BLE001 - a decoder must never take the worker down
            decoded.append(
                Decoded(None, f"undecodable event: {type(exc).__name__}: {exc}", index, _element_bytes(item))
            )
    return decoded


def _element_bytes(item: Any) -> bytes:
    """A refused element of a batch message as JSON again, for its dead letter: a ``NaN`` or ``Infinity`` as such
    (orjson would write ``null``), an integer past 64 bits as it was (orjson would refuse it)."""
    return pydantic_core.to_json(item, inf_nan_mode="constants")


def parse_one_event_messages(raws: list[bytes]) -> list[Decoded] | None:
    """The events of messages that each hold one valid event, decoded together: ``[parse_message(raw)[0] for raw in
    raws]``, or None when one of them is not such a message (a batch message, or one refused): the caller then decodes
    each with :func:`parse_message`, which gives the reasons. None also where the kernels are not built.

    Decoded alone, each message costs a validator call: in process, on the ingest bench's events (their results kept,
    as the worker keeps them), 4.3-4.5 us an event, against 3.6-3.8 decoded here and 2.8-2.9 in one batch message. Here
    the messages are joined into one JSON array (``kernel.json_objects``, which checks that each is one JSON object
    standing alone, so that each element of the array is one message) and validated in one call, with the same JSON
    parser and the same strict rules as each alone.

    >>> one = b'{"event_id": "e%d", "user_id": "u1", "item_id": "v1", "type": "like", "ts": "2026-11-22T10:00:00Z"}'
    >>> [d.event.event_id for d in parse_one_event_messages([one % 1, one % 2])]
    ['e1', 'e2']
    >>> parse_one_event_messages([one % 1, b'{"event_id": "e2"}']) is None
    True
    """
    kernel = _kernel
    joined = kernel.json_objects(raws) if kernel is not None and raws else None
    if joined is None:
        return None
    try:
        events = _EVENT_LIST.validate_json(joined)
    except Exception:  # noqa: BLE001 - one of them is refused: each is decoded alone, with its reason
        return None
    return [Decoded(event, None, None, None) for event in events]


#: One-event messages are decoded this many at a time, in one validator call (:func:`decoded_messages`).
DECODE_GROUP = 500


def decoded_messages(raws: Sequence[bytes]) -> Iterator[list[Decoded]]:
    """Each message's events (:func:`parse_message`), in order, as the worker decodes them: one-event messages
    :data:`DECODE_GROUP` at a time in one validator call (:func:`parse_one_event_messages`), a group holding a batch
    message or a refused event message by message.

    >>> one = b'{"event_id": "e%d", "user_id": "u1", "item_id": "v1", "type": "like", "ts": "2026-11-22T10:00:00Z"}'
    >>> [[d.event.event_id for d in events] for events in decoded_messages([one % 1, one % 2, b"[" + one % 3 + b"]"])]
    [['e1'], ['e2'], ['e3']]
    """
    for start in range(0, len(raws), DECODE_GROUP):
        group = list(raws[start : start + DECODE_GROUP])
        together = parse_one_event_messages(group) if len(group) > 1 else None
        if together is not None:
            for decoded in together:
                yield [decoded]
        else:
            for raw in group:
                yield parse_message(raw)


def loads_json(raw: bytes) -> Any:
    """``raw`` read as JSON by orjson or, where orjson refuses it, by pydantic's parser, which the one-event messages
    are validated with: it also reads the ``NaN``, ``Infinity`` and numbers past a double's range that Python's
    ``json.dumps`` writes, so the event holding one is refused by the contract naming its field (not a finite number)
    instead of its whole body or message being malformed. Raises orjson's error, which says where, when neither
    reads it.

    >>> loads_json(b'[1, NaN]')
    [1, nan]
    >>> loads_json(b'[1,')
    Traceback (most recent call last):
    ...
    orjson.JSONDecodeError: unexpected end of data: line 1 column 4 (char 3)
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        refused = exc
    try:
        return pydantic_core.from_json(raw)
    except ValueError:
        raise refused from None


def encode_batches(events: list[Event], max_bytes: int = 256_000) -> list[tuple[bytes | None, bytes]]:
    """Kafka (key, value) messages for ``events``: JSON lists of events, each under ``max_bytes``.

    One message per batch instead of one per event: the worker's cost per Kafka message is
    then shared by every event in it. The key is the user id when every event of the message is
    that user's (so one user's events keep their order), else None. Order is kept.

    >>> from datetime import UTC
    >>> at = datetime(2026, 11, 22, tzinfo=UTC)
    >>> batch = [Event(event_id=f"e{n}", user_id="u1", item_id="v1", type="like", ts=at) for n in range(3)]
    >>> [(key, len(parse_message(value))) for key, value in encode_batches(batch)]
    [(b'u1', 3)]
    >>> batch.append(Event(event_id="e9", user_id="u2", item_id="v1", type="like", ts=at))
    >>> [(key, len(parse_message(value))) for key, value in encode_batches(batch, max_bytes=400)]
    [(b'u1', 2), (None, 2)]
    """
    messages: list[tuple[bytes | None, bytes]] = []
    chunk: list[bytes] = []
    users: set[str] = set()
    size = 0

    def flush() -> None:
        key = next(iter(users)).encode() if len(users) == 1 else None
        messages.append((key, b"[" + b",".join(chunk) + b"]"))

    for event in events:
        encoded = event.model_dump_json().encode()
        if chunk and (size + len(encoded) + 1 > max_bytes or len(chunk) >= MAX_MESSAGE_EVENTS):
            flush()
            chunk, users, size = [], set(), 0
        chunk.append(encoded)
        users.add(event.user_id)
        size += len(encoded) + 1
    if chunk:
        flush()
    return messages

"""``POST /v1/events``: validate a batch, produce the valid events to Kafka, explain the rest, and name those the
worker's quality gate will hold."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import AUTH_RESPONSES, ApiState, get_state, require_scope
from api.problems import FieldProblem, Problem
from api.producer import BrokerUnavailable
from learner.gate.base import GateEvent
from learner.gate.gate import QualityGate
from recstream import metrics
from recstream.events import Event, describe_errors, encode_batches, loads_json, too_many_fields

router = APIRouter(tags=["events"], dependencies=[Depends(require_scope("ingest"))], responses=AUTH_RESPONSES)

MAX_BATCH = 1000


class EventError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="The event's place in the batch, from 0.")
    event_id: str | None = None
    errors: list[FieldProblem]


class EventHeld(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="The event's place in the batch, from 0.")
    event_id: str
    reason: str = Field(description="The quality gate's reason code (docs/quality-gate.md).")
    detail: str = Field(description="What about the event the rule holds, e.g. how far in the future its ts is.")


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    errors: list[EventError]
    held: list[EventHeld] = Field(
        default_factory=list,
        description="Accepted events the worker's quality gate will hold (quarantine, not learn) whatever else it "
        "sees, by a rule that reads only the event and the time: a clock off, seconds sent as milliseconds (unless "
        "the worker drops one first: a duplicate, an erased user's). An operator can replay them once the rule is "
        "wrong for them (docs/operations.md); fix the sender otherwise.",
    )


class IngestRefused(BaseModel):
    """A 422 of this route: the batch is not a list of 1-1000 events, or none of its events is valid (then
    ``errors`` has each one's, and ``accepted`` is 0)."""

    model_config = ConfigDict(extra="forbid")

    detail: str
    errors: list[EventError] = Field(default_factory=list)
    accepted: int = 0
    rejected: int = 0


def _problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


@router.post(
    "/v1/events",
    status_code=202,
    response_model=IngestResult,
    summary="Publish a batch of 1-1000 events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_BATCH,
                        "items": {"$ref": "#/components/schemas/Event"},
                    }
                }
            },
        }
    },
    responses={
        400: {"model": Problem, "description": "The body is not valid JSON."},
        413: {"model": Problem, "description": "The body is larger than RECSTREAM_MAX_BODY_BYTES."},
        422: {
            "model": IngestRefused,
            "description": "Not a list of 1-1000 events, or no event in it is valid (each error names its field).",
        },
        503: {
            "model": Problem,
            "description": "The broker did not take the whole batch in time; part of it may have been published. "
            "Resend the same events with the same `event_id`s after `Retry-After` s (a resent event already learned "
            "is dropped as a duplicate).",
        },
    },
)
async def ingest_events(request: Request, state: Annotated[ApiState, Depends(get_state)]) -> Any:
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return _problem(413, f"request body is {declared} bytes; the limit is {limit} (RECSTREAM_MAX_BODY_BYTES)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return _problem(413, f"request body is larger than {limit} bytes (RECSTREAM_MAX_BODY_BYTES)")
    try:
        payload = loads_json(bytes(body))
    except orjson.JSONDecodeError as exc:
        return _problem(400, f"body is not valid JSON: {exc}")
    if not isinstance(payload, list):
        return _problem(422, f"body must be a JSON list of events, got {_json_kind(payload)}")
    if not payload:
        return _problem(422, f"batch is empty: send 1 to {MAX_BATCH} events")
    if len(payload) > MAX_BATCH:
        return _problem(422, f"batch has {len(payload)} events; at most {MAX_BATCH} are allowed per request")

    valid: list[Event] = []
    places: list[int] = []  # each valid event's index in the batch
    errors: list[EventError] = []
    for index, raw in enumerate(payload):
        try:
            if (oversized := too_many_fields(raw)) is not None:
                errors.append(EventError(index=index, event_id=_event_id(raw), errors=oversized))
                continue
            valid.append(Event.model_validate(raw))
            places.append(index)
        except ValidationError as exc:
            errors.append(EventError(index=index, event_id=_event_id(raw), errors=describe_errors(exc)))
    if errors:
        metrics.EVENTS_REJECTED.labels("ingest").inc(len(errors))
    if not valid:
        return _problem(
            422,
            f"none of the {len(payload)} events is valid",
            errors=[e.model_dump() for e in errors],
            accepted=0,
            rejected=len(errors),
        )

    try:
        await state.producer.send_batch(encode_batches(valid))
    except BrokerUnavailable:  # (why is in the API's log, not in the answer: the broker's errors name its hosts)
        metrics.INGEST_UNAVAILABLE.inc()
        retry = str(state.settings.retry_after_seconds)
        return _problem(
            503,
            "the event broker did not take the whole batch in time; part of it may have been published: "
            "resend the same events, with the same event_ids, after Retry-After seconds",
            headers={"Retry-After": retry},
        )
    metrics.EVENTS_INGESTED.inc(len(valid))
    return IngestResult(
        accepted=len(valid), rejected=len(errors), errors=errors, held=_held(state.ingest_gate, valid, places)
    )


def _event_id(raw: Any) -> str | None:
    """A refused event's ``event_id`` as sent, if it is a string (its first 128 characters), for its error entry."""
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return event_id[:128] if isinstance(event_id, str) and event_id else None


def _held(gate: QualityGate, events: list[Event], places: list[int]) -> list[EventHeld]:
    """The events ``gate`` (the rules that read only the event and the time) holds now, with their places."""
    views = [
        GateEvent(e.event_id, e.user_id, e.item_id, e.type, e.ts_seconds, e.watch_seconds, e.item_duration_seconds)
        for e in events
    ]
    holds = gate.stateless_holds(views, time.time())
    return [
        EventHeld(index=places[row], event_id=events[row].event_id, reason=hold.reason, detail=hold.detail)
        for row, hold in sorted(holds.items())
    ]


def _json_kind(value: object) -> str:
    """What a decoded JSON value is, in JSON's words: ``an object``, ``a string``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {dict: "an object", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), "a JSON value")

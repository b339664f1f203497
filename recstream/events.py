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

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

EVENT_TYPES = ("view", "like", "share", "skip")
EventType = Literal["view", "like", "share", "skip"]

ID_PATTERN = r"^[A-Za-z0-9._:@\-]+$"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
ContextValue = Annotated[str, Field(max_length=256)] | bool | int | Annotated[float, Field(allow_inf_nan=False)]

MAX_CONTEXT_KEYS = 16
MAX_SECONDS = 86_400.0


def _iso_string_or_datetime(value: Any) -> Any:
    if isinstance(value, (str, datetime)):
        return value
    raise ValueError("ts must be an ISO-8601 string with a timezone, e.g. 2026-11-22T10:00:00Z")


class Event(BaseModel):
    """One thing a person did with one item."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    type: EventType
    ts: Annotated[AwareDatetime, BeforeValidator(_iso_string_or_datetime), Field(strict=False)]
    watch_seconds: Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)] | None = None
    item_duration_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)] | None = None
    context: dict[Annotated[str, Field(min_length=1, max_length=64)], ContextValue] = Field(default_factory=dict)

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"context may have at most {MAX_CONTEXT_KEYS} keys, got {len(value)}")
        return value


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into ``{"field": "...", "message": "..."}`` a person can act on."""
    described = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"]) or "(event)"
        described.append({"field": loc, "message": item["msg"]})
    return described


def parse_event(raw: bytes) -> tuple[Event | None, str | None]:
    """Decode one Kafka message value: ``(event, None)`` or ``(None, reason)``; never raises."""
    try:
        return Event.model_validate_json(raw), None
    except ValidationError as exc:
        details = describe_errors(exc)
        if details and details[0]["message"].startswith("Invalid JSON"):
            return None, f"malformed JSON: {details[0]['message']}"
        return None, "; ".join(f"{d['field']}: {d['message']}" for d in details)
    except Exception as exc:  # noqa: BLE001 - a decoder must never take the worker down
        return None, f"undecodable payload: {type(exc).__name__}: {exc}"

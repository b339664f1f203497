"""The one interface every quality-gate rule follows, and the gate that runs them in order.

A rule looks at one event (plain data, no I/O) and the current time ``now`` (the wall clock
live, the stream's clock in a replay) and either lets it pass (``None``) or holds it with a
:class:`Hold`: a reason code from ``docs/quality-gate.md`` and a sentence a person can act on.
Rules that keep state (rate windows, anomaly models) update it in ``observe``, which the gate
calls only for events that passed every rule, so held traffic never trains the gate itself.
A rule may also offer ``prepare(events, now)``: the gate's caller hands it a batch before
checking its events one by one, and the rule may compute ahead what it can (it must not change
any verdict).

Duplicate detection needs Redis and lives in ``stream/``; everything here is testable on plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GateEvent:
    """What a rule sees of an event. ``ts`` is seconds since the epoch."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    watch_seconds: float | None = None
    item_duration_seconds: float | None = None


@dataclass(frozen=True)
class Hold:
    """Why an event was held: a documented reason code and a human-readable detail."""

    reason: str
    detail: str


@runtime_checkable
class GateRule(Protocol):
    #: every reason code this rule can emit (documented in docs/quality-gate.md)
    codes: tuple[str, ...]

    def check(self, event: GateEvent, now: float) -> Hold | None:
        """``None`` to let the event pass, or a :class:`Hold`. Must not change state."""

    def observe(self, event: GateEvent, now: float) -> None:
        """Update state with an event that passed the whole gate."""

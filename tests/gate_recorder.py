"""A quality-gate rule for tests: holds the events of one item and records what the gate told it."""

from __future__ import annotations

from learner.gate.base import GateEvent, Hold


class Recorder:
    """A stateful rule that holds events whose item is ``hold_if`` and records what it is told."""

    def __init__(self, code: str, hold_if: str) -> None:
        self.codes = (code,)
        self.hold_if = hold_if
        self.observed: list[str] = []
        self.held: list[str] = []

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002
        return Hold(self.codes[0], "test") if event.item_id == self.hold_if else None

    def observe(self, event: GateEvent, now: float) -> None:  # noqa: ARG002
        self.observed.append(event.event_id)

    def observe_held(self, event: GateEvent, now: float, hold: Hold) -> None:  # noqa: ARG002
        self.held.append(event.event_id)

"""Time rules: events stamped too far in the future (``future_timestamp``) or too long ago (``too_late``).

Both compare the event's ``ts`` with ``now``, which the caller chooses: the wall clock live, the
stream's clock in a replay (:class:`StreamClock`), so old data is judged against its own time.
Neither rule keeps state.

>>> rule = FutureTimestampRule(max_skew_seconds=300)
>>> event = GateEvent("e1", "u1", "v1", "like", ts=1_000.0)
>>> rule.check(event, now=900.0) is None          # 100 s ahead: within the clock-skew tolerance
True
>>> rule.check(event, now=0.0).reason
'future_timestamp'
>>> LatenessRule(max_lateness_seconds=3_600).check(event, now=10_000.0).reason
'too_late'
"""

from __future__ import annotations

from collections.abc import Sequence

from learner.gate.base import FUTURE_TIMESTAMP, TOO_LATE, GateEvent, Hold, compiled_rows


class FutureTimestampRule:
    """Holds events stamped more than ``max_skew_seconds`` after ``now``.

    A client clock can be a few minutes off; an event from tomorrow is a broken clock or a forgery,
    and learning it would move the stream clock (and time-decayed models) forward for everyone.
    """

    codes: tuple[str, ...] = ("future_timestamp",)
    stateless = True  # check reads only the event and now; observe does nothing

    def __init__(self, max_skew_seconds: float = 300.0) -> None:
        if max_skew_seconds < 0:
            raise ValueError("max_skew_seconds must be >= 0")
        self.max_skew_seconds = max_skew_seconds

    def check(self, event: GateEvent, now: float) -> Hold | None:
        ahead = event.ts - now
        return self._hold(ahead) if ahead > self.max_skew_seconds else None

    def holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold]:
        """The rows of ``events`` that ``check`` holds at ``now``, in one pass (the gate's chunk path)."""
        skew = self.max_skew_seconds
        rows = compiled_rows(events, FUTURE_TIMESTAMP, now, skew)
        if rows is not None:
            return {row: self._hold(events[row].ts - now) for row in rows}
        return {row: self._hold(e.ts - now) for row, e in enumerate(events) if e.ts - now > skew}

    def _hold(self, ahead: float) -> Hold:
        return Hold(
            "future_timestamp",
            f"ts is {ahead:.0f} s after now; tolerance is {self.max_skew_seconds:.0f} s (client clock wrong?)",
        )

    def observe(self, event: GateEvent, now: float) -> None:
        pass


class LatenessRule:
    """Holds events older than ``max_lateness_seconds`` relative to ``now``.

    Apps buffer events offline and send them late, which is fine for a while; beyond the bound
    an event describes a taste the model has already forgotten (or is a replayed batch).
    """

    codes: tuple[str, ...] = ("too_late",)
    stateless = True  # check reads only the event and now; observe does nothing

    def __init__(self, max_lateness_seconds: float = 7 * 86_400.0) -> None:
        if max_lateness_seconds < 0:
            raise ValueError("max_lateness_seconds must be >= 0")
        self.max_lateness_seconds = max_lateness_seconds

    def check(self, event: GateEvent, now: float) -> Hold | None:
        late = now - event.ts
        return self._hold(late) if late > self.max_lateness_seconds else None

    def holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold]:
        """The rows of ``events`` that ``check`` holds at ``now``, in one pass (the gate's chunk path)."""
        bound = self.max_lateness_seconds
        rows = compiled_rows(events, TOO_LATE, now, bound)
        if rows is not None:
            return {row: self._hold(now - events[row].ts) for row in rows}
        return {row: self._hold(now - e.ts) for row, e in enumerate(events) if now - e.ts > bound}

    def _hold(self, late: float) -> Hold:
        return Hold(
            "too_late",
            f"ts is {late:.0f} s before now; events older than {self.max_lateness_seconds:.0f} s are held",
        )

    def observe(self, event: GateEvent, now: float) -> None:
        pass


class StreamClock:
    """``now`` for a replay: the latest arrival time, or, for events without one, the stream's own time.

    Live, "now" is the worker's wall clock when it reads an event: its arrival at the broker,
    which a client cannot forge. A replay that knows when each event arrived (``arrive``) uses
    the same: the latest arrival so far, moved by every event, passed or held, and never by a
    ``ts``; so an event stamped ahead of its arrival is judged by how far ahead it is, whatever
    the gaps in the data.

    A recorded stream of events alone has only their ``ts``; then (``now`` / ``advance``) the
    clock follows the latest ``ts`` among events that passed, moved forward by plausible gaps.

    A recorded stream has quiet spells far longer than any live clock skew (MovieLens: up to 57
    days between consecutive ratings), so "now" follows an event's own time when it is at most
    ``max_gap_seconds`` after the latest accepted event; an event stamped beyond that is judged
    against the latest accepted time, so the future-timestamp rule sees how far ahead it is.
    Only events that passed move the clock (:meth:`advance`), so a forged far-future event
    cannot make everything after it look late.

    >>> clock = StreamClock(max_gap_seconds=100)
    >>> clock.now(1_000.0)                   # first event: its own time
    1000.0
    >>> clock.advance(1_000.0); clock.now(1_050.0), clock.now(5_000.0), clock.now(900.0)
    (1050.0, 1000.0, 1000.0)
    >>> clock.arrive(1_020.0), clock.arrive(1_010.0)     # arrivals: monotone
    (1020.0, 1020.0)
    """

    def __init__(self, max_gap_seconds: float = 90 * 86_400.0) -> None:
        self.max_gap_seconds = max_gap_seconds
        self.latest: float | None = None

    def now(self, ts: float) -> float:
        latest = self.latest
        if latest is None:
            return ts
        if latest < ts <= latest + self.max_gap_seconds:
            return ts
        return latest

    def advance(self, ts: float) -> None:
        """Call with the ``ts`` of every event without an arrival time that passed the gate."""
        if self.latest is None or ts > self.latest:
            self.latest = ts

    def arrive(self, arrival: float) -> float:
        """``now`` for an event that arrived at ``arrival``: the latest arrival so far (call for every event)."""
        if self.latest is None or arrival > self.latest:
            self.latest = arrival
        return self.latest

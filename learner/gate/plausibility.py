"""Plausibility rules: values the contract allows one by one but that cannot all be true together.

* ``watch_exceeds_duration``: watched far longer than the item lasts. Short videos loop, so some
  excess is normal; ``factor`` × duration + ``slack_seconds`` is not (a milliseconds-for-seconds
  bug, a stuck player, a forged payload).
* ``skip_after_full_watch``: a ``skip`` whose watch time covers the whole item. The target rule
  turns every skip into a negative label, so a client that sends "skip" for "moved on after
  watching to the end" would teach the model that people dislike what they finished.
* ``like_without_view`` (off by default): a like or share of an item the user was not seen viewing
  within ``window_seconds``. Only for apps whose contract says a view always comes first; many
  apps never send views.

>>> rule = WatchExceedsDurationRule(factor=3.0, slack_seconds=60.0)
>>> rule.check(GateEvent("e1", "u1", "v1", "view", 0.0, watch_seconds=100.0, item_duration_seconds=30.0), 0.0) is None
True
>>> rule.check(GateEvent("e1", "u1", "v1", "view", 0.0, watch_seconds=30_000.0, item_duration_seconds=30.0), 0.0).reason
'watch_exceeds_duration'
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from learner.gate.base import SKIP_AFTER_FULL_WATCH, WATCH_EXCEEDS_DURATION, GateEvent, Hold, compiled_rows

POSITIVE_TYPES = frozenset({"like", "share"})


class WatchExceedsDurationRule:
    """Holds events whose ``watch_seconds`` exceed ``factor`` × ``item_duration_seconds`` + ``slack_seconds``."""

    codes: tuple[str, ...] = ("watch_exceeds_duration",)
    stateless = True  # check reads only the event; observe does nothing

    def __init__(self, factor: float = 3.0, slack_seconds: float = 60.0) -> None:
        if factor < 1.0 or slack_seconds < 0:
            raise ValueError("factor must be >= 1 and slack_seconds >= 0")
        self.factor = factor
        self.slack_seconds = slack_seconds

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002 - timeless
        watch, duration = event.watch_seconds, event.item_duration_seconds
        if watch is None or duration is None:
            return None
        limit = self.factor * duration + self.slack_seconds
        return self._hold(watch, duration, limit) if watch > limit else None

    def holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold]:  # noqa: ARG002 - timeless
        """The rows of ``events`` that ``check`` holds, in one pass (the gate's chunk path)."""
        factor, slack = self.factor, self.slack_seconds
        rows = compiled_rows(events, WATCH_EXCEEDS_DURATION, 0.0, factor, slack)
        if rows is not None:
            held = [(row, events[row].watch_seconds, events[row].item_duration_seconds) for row in rows]
            return {row: self._hold(watch, duration, factor * duration + slack) for row, watch, duration in held}
        return {
            row: self._hold(e.watch_seconds, e.item_duration_seconds, factor * e.item_duration_seconds + slack)
            for row, e in enumerate(events)
            if e.watch_seconds is not None
            and e.item_duration_seconds is not None
            and e.watch_seconds > factor * e.item_duration_seconds + slack
        }

    @staticmethod
    def _hold(watch: float, duration: float, limit: float) -> Hold:
        return Hold("watch_exceeds_duration", f"watched {watch:.0f} s of a {duration:.0f} s item (limit {limit:.0f} s)")

    def observe(self, event: GateEvent, now: float) -> None:
        pass


class SkipAfterFullWatchRule:
    """Holds a ``skip`` whose ``watch_seconds`` reach ``full_fraction`` of the item's duration.

    >>> rule = SkipAfterFullWatchRule()
    >>> rule.check(GateEvent("e1", "u1", "v1", "skip", 0.0, watch_seconds=3.0, item_duration_seconds=30.0), 0.0) is None
    True
    >>> rule.check(GateEvent("e1", "u1", "v1", "skip", 0.0, watch_seconds=30.0, item_duration_seconds=30.0), 0.0).reason
    'skip_after_full_watch'
    """

    codes: tuple[str, ...] = ("skip_after_full_watch",)
    stateless = True  # check reads only the event; observe does nothing

    def __init__(self, full_fraction: float = 1.0) -> None:
        if full_fraction <= 0:
            raise ValueError("full_fraction must be > 0")
        self.full_fraction = full_fraction

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002 - timeless
        if event.type != "skip":
            return None
        watch, duration = event.watch_seconds, event.item_duration_seconds
        if watch is None or duration is None:
            return None
        return self._hold(watch, duration) if watch >= self.full_fraction * duration else None

    def holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold]:  # noqa: ARG002 - timeless
        """The rows of ``events`` that ``check`` holds, in one pass (the gate's chunk path)."""
        fraction = self.full_fraction
        rows = compiled_rows(events, SKIP_AFTER_FULL_WATCH, 0.0, fraction)
        if rows is not None:
            return {row: self._hold(events[row].watch_seconds, events[row].item_duration_seconds) for row in rows}
        return {
            row: self._hold(e.watch_seconds, e.item_duration_seconds)
            for row, e in enumerate(events)
            if e.type == "skip"
            and e.watch_seconds is not None
            and e.item_duration_seconds is not None
            and e.watch_seconds >= fraction * e.item_duration_seconds
        }

    @staticmethod
    def _hold(watch: float, duration: float) -> Hold:
        return Hold(
            "skip_after_full_watch",
            f"skip after watching {watch:.0f} s of a {duration:.0f} s item: the client may send skip for 'next'",
        )

    def observe(self, event: GateEvent, now: float) -> None:
        pass


class LikeWithoutViewRule:
    """Holds a like or share when the same user's view of the same item did not pass within ``window_seconds``.

    Memory: one entry per (user, item) view the worker took within the window, at most ``max_pairs`` (least recently
    taken forgotten first, so under pressure the rule errs towards holding, never towards learning).

    >>> rule = LikeWithoutViewRule(window_seconds=600)
    >>> like = GateEvent("e2", "u1", "v1", "like", 100.0)
    >>> rule.check(like, now=100.0).reason
    'like_without_view'
    >>> rule.observe(GateEvent("e1", "u1", "v1", "view", 90.0), now=90.0)
    >>> rule.check(like, now=100.0) is None
    True
    """

    codes: tuple[str, ...] = ("like_without_view",)

    def __init__(
        self,
        window_seconds: float = 3_600.0,
        max_pairs: int = 1_000_000,
        positive_types: frozenset[str] = POSITIVE_TYPES,
    ) -> None:
        self.window_seconds = window_seconds
        self.max_pairs = max_pairs
        self.positive_types = positive_types
        # (user, item) -> (the latest view's ts, when the worker last took a view of it), least recently taken first:
        # the check compares the events' own times, and a view is forgotten ``window_seconds`` after the worker took it
        # (by its ts, a worker behind by more than the window would forget each view at once, and hold its likes)
        self._views: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002 - judged on the event's ts
        if event.type not in self.positive_types:
            return None
        seen = self._views.get((event.user_id, event.item_id))
        if seen is None or event.ts - seen[0] > self.window_seconds:
            return Hold(
                "like_without_view",
                f"{event.type} without a view of the item by the user in the last {self.window_seconds:.0f} s",
            )
        return None

    def observe(self, event: GateEvent, now: float) -> None:
        views = self._views
        if event.type == "view":
            key = (event.user_id, event.item_id)
            previous = views.pop(key, None)
            views[key] = (event.ts if previous is None else max(previous[0], event.ts), now)
        horizon = now - self.window_seconds
        while views:
            key, (_, taken) = next(iter(views.items()))
            if taken >= horizon and len(views) <= self.max_pairs:
                break
            views.popitem(last=False)

    def __len__(self) -> int:
        return len(self._views)

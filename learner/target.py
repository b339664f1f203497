"""The target variable: what "the person liked it" means, as one function of an event.

Default rule (all configurable through settings):

* ``like`` and ``share`` are positive (1.0);
* ``skip`` is negative (0.0);
* a ``view`` watched for less than ``short_watch_fraction`` of the item is negative;
* any other ``view`` has no label: it still counts as "seen" (never recommended again)
  but does not train the model, because a view alone says little about taste.

>>> rule = TargetRule()
>>> rule.label("like", None, None), rule.label("skip", None, None)
(1.0, 0.0)
>>> rule.label("view", 2.0, 30.0), rule.label("view", 25.0, 30.0)
(0.0, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetRule:
    """Maps an event's type and watch time to 1.0 (liked), 0.0 (not liked) or None (no label)."""

    positive_types: frozenset[str] = field(default_factory=lambda: frozenset({"like", "share"}))
    negative_types: frozenset[str] = field(default_factory=lambda: frozenset({"skip"}))
    short_watch_fraction: float = 0.25

    def label(self, event_type: str, watch_seconds: float | None, item_duration_seconds: float | None) -> float | None:
        if event_type in self.positive_types:
            return 1.0
        if event_type in self.negative_types:
            return 0.0
        if watch_seconds is not None and item_duration_seconds:
            if watch_seconds / item_duration_seconds < self.short_watch_fraction:
                return 0.0
        return None

"""How much one event says about a person's taste: the learning weight of likes, shares, views and skips.

:class:`~learner.target.TargetRule` answers "did they like it?" (1, 0 or no label), which is what
pointwise models and the progressive AUC need. Implicit-feedback models (co-occurrence, pairwise
factors, popularity) learn more from a graded signal: a plain view is weak evidence of interest,
a like strong evidence, a share a little more. This is that mapping, as configuration.

A view's weight is scaled by the fraction watched when both the watch time and the item's
duration are known, so a view abandoned after two seconds counts for almost nothing.

>>> w = EventWeights()
>>> w.weight("like", None, None), w.weight("view", None, None), w.weight("skip", None, None)
(1.0, 1.0, 0.0)
>>> w.weight("view", 15.0, 30.0)   # half watched: half the weight
0.5
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventWeights:
    """Learning weight per event type; 0 means "register the ids, learn nothing"."""

    like: float = 1.0
    share: float = 0.5
    view: float = 1.0
    skip: float = 0.0

    def weight(self, event_type: str, watch_seconds: float | None, item_duration_seconds: float | None) -> float:
        if event_type == "view":
            if watch_seconds is not None and item_duration_seconds:
                return self.view * min(max(watch_seconds / item_duration_seconds, 0.0), 1.0)
            return self.view
        if event_type == "like":
            return self.like
        if event_type == "share":
            return self.share
        if event_type == "skip":
            return self.skip
        return 0.0

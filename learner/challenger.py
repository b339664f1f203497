"""Champion / challenger: shadow models scored on the same events, and the rule that promotes one.

The worker learns every accepted event into the champion (the model it serves) and into each
challenger. Every ``sample_every``-th positive event is a *paired sample*: before learning it,
each model ranks the catalogue for that user (the model's own scores, or popularity for a user
it does not know, exactly as serving does) and the sample records whether the event's item was
in each model's top ``k``. A challenger is compared with the champion over its last ``window``
paired samples only (the same events for both).

The rule (:meth:`Contest.verdict`): a challenger is promoted when its window is full and

* its hit rate exceeds the champion's by at least ``margin`` (absolute), and
* the difference is not noise: McNemar's statistic over the samples where exactly one of the
  two hit, ``z = (wins - losses) / sqrt(wins + losses)``, is at least ``min_z``.

After any change of champion every window starts empty, so a new champion is never judged on
samples scored before it served. After an operator's promotion or rollback the rule waits
``hold_windows`` windows of samples before it may overrule the operator's choice.

>>> rule = PromotionRule(window=4, margin=0.25, min_z=1.0)
>>> contest = Contest(rule)
>>> for champion_hit, challenger_hit in [(False, True), (False, True), (True, True), (False, False)]:
...     contest.add(champion_hit, challenger_hit)
>>> contest.verdict() is not None
True
>>> contest.summary()["challenger_hit_rate"], contest.summary()["champion_hit_rate"]
(0.75, 0.25)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from learner.online_learner import OnlineLearner


@dataclass(frozen=True)
class PromotionRule:
    """When a challenger replaces the champion (see the module docstring)."""

    window: int = 500
    margin: float = 0.02
    min_z: float = 2.0
    k: int = 10
    sample_every: int = 10
    auto: bool = True
    hold_windows: int = 10  # after an operator's promotion or rollback, windows before the rule may act


def hit_at_k(learner: OnlineLearner, user: str, item: str, k: int) -> bool:
    """Whether ``item`` is in ``user``'s top ``k`` of this learner right now (ties count against it).

    Ranks like serving: the model's scores when it knows the user, popularity otherwise.
    """
    model = learner.model
    if model.knows_user(user):
        row = model.items.get(item)
        scores = model.score_all(user)
    else:
        row = learner.popularity.items.get(item)
        scores = learner.popularity.counts
    if row is None or row >= len(scores):
        return False
    return int((scores >= scores[row]).sum()) - 1 < k


class Contest:
    """One challenger's paired samples against the champion, over a sliding window."""

    def __init__(self, rule: PromotionRule) -> None:
        self.rule = rule
        self._samples: deque[tuple[bool, bool]] = deque(maxlen=rule.window)

    def add(self, champion_hit: bool, challenger_hit: bool) -> None:
        self._samples.append((champion_hit, challenger_hit))

    def reset(self) -> None:
        self._samples.clear()

    def summary(self) -> dict[str, Any]:
        n = len(self._samples)
        champion = sum(c for c, _ in self._samples)
        challenger = sum(h for _, h in self._samples)
        wins = sum(1 for c, h in self._samples if h and not c)
        losses = sum(1 for c, h in self._samples if c and not h)
        return {
            "samples": n,
            "window": self.rule.window,
            "champion_hit_rate": champion / n if n else None,
            "challenger_hit_rate": challenger / n if n else None,
            "wins": wins,
            "losses": losses,
            "z": (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0,
        }

    def verdict(self) -> str | None:
        """The reason to promote this challenger now, or None."""
        s = self.summary()
        rule = self.rule
        if s["samples"] < rule.window:
            return None
        lead = s["challenger_hit_rate"] - s["champion_hit_rate"]
        if lead < rule.margin or s["z"] < rule.min_z:
            return None
        return (
            f"hit rate@{rule.k} {s['challenger_hit_rate']:.3f} vs champion {s['champion_hit_rate']:.3f} "
            f"over the last {s['samples']} paired samples (lead {lead:+.3f} >= margin {rule.margin}; "
            f"McNemar z {s['z']:.2f} >= {rule.min_z})"
        )

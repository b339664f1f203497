"""Popularity as a recommender: the all-time and the time-decayed baselines every model must beat.

Both rank every user the same way (``personal = False``) and learn from event weights
(``reward = "weight"``), so a view counts a little and a like a lot. The decayed model
halves an item's accumulated weight every ``half_life_days`` of *stream* time (the clock
given to :meth:`DecayedPopularity.advance_clock`), never wall-clock time.

Decay is kept without touching every item on every event: an event at time ``t`` adds
``w * 2 ** ((t - t_ref) / half_life)`` to the item's mass, which ranks items exactly like
the decayed sum; when that factor grows large the masses are rescaled and ``t_ref`` moves.

>>> pop = DecayedPopularity(half_life_days=1.0)
>>> pop.advance_clock(0.0)
>>> pop.learn_one("u1", "old", 1.0)
>>> pop.learn_one("u2", "old", 1.0)
>>> pop.advance_clock(3 * 86_400.0)            # three half-lives later
>>> pop.learn_one("u3", "new", 1.0)
>>> [pop.items.ids[i] for i in np.argsort(-pop.score_all("anyone"))]
['new', 'old']
>>> AllTimePopularity().kind
'popularity'
"""

from __future__ import annotations

import math

import numpy as np

from learner.arrays import ensure_rows
from learner.base import ModelState
from learner.id_index import IdIndex

DAY_SECONDS = 86_400.0
_MAX_EXPONENT = 60.0  # rescale before 2**exponent loses float64 headroom


class DecayedPopularity:
    """Sum of event weights per item, halved every ``half_life_days`` of stream time (0: never)."""

    kind = "decayed_popularity"
    reward = "weight"
    personal = False

    def __init__(self, half_life_days: float = 365.0) -> None:
        if half_life_days < 0:
            raise ValueError("half_life_days must be >= 0 (0 means no decay)")
        self.half_life_days = float(half_life_days)
        self.items = IdIndex()
        self._mass = np.zeros(16, dtype=np.float64)
        self._total = 0.0
        self._clock: float | None = None
        self._t_ref: float | None = None

    # -- River-style interface -------------------------------------------------------

    def advance_clock(self, ts: float) -> None:
        if self._clock is None or ts > self._clock:
            self._clock = float(ts)
        if self._t_ref is None:
            self._t_ref = self._clock

    def learn_one(self, user: str, item: str, y: float) -> None:  # noqa: ARG002 - same ranking for every user
        row, new = self.items.add(item)
        if new:
            self._mass = ensure_rows(self._mass, row)
        if y <= 0:
            return
        factor = self._factor()
        self._mass[row] += y * factor
        self._total += y * factor

    def predict_one(self, user: str, item: str) -> float:  # noqa: ARG002
        """The item's share of all (decayed) weight: a popularity prior, not a calibrated probability."""
        row = self.items.get(item)
        if row is None or self._total <= 0:
            return 0.0
        return float(self._mass[row] / self._total)

    def knows_user(self, user: str) -> bool:  # noqa: ARG002 - it can rank for anyone
        return True

    def score_all(self, user: str) -> np.ndarray:  # noqa: ARG002
        return self._mass[: len(self.items)].copy()

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> ModelState:
        return ModelState(
            kind=self.kind,
            params=self._params(),
            ids={"items": list(self.items.ids)},
            arrays={
                "mass": self._mass[: len(self.items)].copy(),
                "clock": np.array([_nan_if_none(self._clock), _nan_if_none(self._t_ref), self._total]),
            },
        )

    @classmethod
    def from_state(cls, state: ModelState) -> DecayedPopularity:
        if state.kind != cls.kind:
            raise ValueError(f"state is for model kind {state.kind!r}, not {cls.kind!r}")
        model = cls(**{k: float(v) for k, v in state.params.items()})
        model.items = IdIndex(state.ids["items"])
        mass = np.asarray(state.arrays["mass"], dtype=np.float64)
        clock = np.asarray(state.arrays["clock"], dtype=np.float64)
        if mass.shape != (len(model.items),) or clock.shape != (3,):
            raise ValueError("state arrays do not match its id lists")
        model._mass = ensure_rows(mass.copy(), len(model.items))
        model._clock, model._t_ref = _none_if_nan(clock[0]), _none_if_nan(clock[1])
        model._total = float(clock[2])
        return model

    # -- internals -------------------------------------------------------------------

    def _params(self) -> dict[str, float | int | str]:
        return {"half_life_days": self.half_life_days}

    def _factor(self) -> float:
        """2 ** ((now - t_ref) / half_life): the weight of an event now relative to one at ``t_ref``."""
        if not self.half_life_days or self._clock is None or self._t_ref is None:
            return 1.0
        exponent = (self._clock - self._t_ref) / (self.half_life_days * DAY_SECONDS)
        if exponent > _MAX_EXPONENT:
            shrink = math.pow(2.0, -exponent)
            self._mass *= shrink
            self._total *= shrink
            self._t_ref = self._clock
            exponent = 0.0
        return math.pow(2.0, exponent)


class AllTimePopularity(DecayedPopularity):
    """Sum of event weights per item since the beginning: the simplest baseline."""

    kind = "popularity"

    def __init__(self) -> None:
        super().__init__(half_life_days=0.0)

    def _params(self) -> dict[str, float | int | str]:
        return {}


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)

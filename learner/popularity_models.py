"""Popularity as a recommender: the all-time and the time-decayed baselines every model must beat.

Both rank every user the same way (``personal = False``) and learn from event weights
(``reward = "weight"``), so a view counts a little and a like a lot. The decayed model
halves an item's accumulated weight every ``half_life_days`` of *stream* time (the clock
given to ``advance_clock``), never wall-clock time.

Decay is kept without touching every item on every event (:class:`DecayedCounter`): an event
at time ``t`` adds ``w * 2 ** ((t - t_ref) / half_life)`` to the item's mass, which ranks items
exactly like the decayed sum; when that factor grows large the masses are rescaled and
``t_ref`` moves.

>>> pop = DecayedPopularity(half_life_days=1.0)
>>> pop.advance_clock(0.0)
>>> pop.learn_one("u1", "old", 1.0)
>>> pop.learn_one("u2", "old", 1.0)
>>> pop.advance_clock(3 * 86_400.0)            # three half-lives later: "old" now weighs 2/8
>>> pop.learn_one("u3", "new", 1.0)
>>> [pop.items.ids[i] for i in np.argsort(-pop.score_all("anyone"))]
['new', 'old']
>>> AllTimePopularity().kind
'popularity'
"""

from __future__ import annotations

import math

import numpy as np

from learner.arrays import grow_rows, mapped_copy
from learner.base import ModelState, expect_kind
from learner.id_index import IdIndex

DAY_SECONDS = 86_400.0
_MAX_EXPONENT = 60.0  # rescale before 2**exponent eats float64 headroom


class DecayedCounter:
    """Per-row weights that halve every ``half_life_days`` of stream time (0: never), in one array.

    ``mass`` is only proportional to the decayed sums (by a factor common to all rows), which is
    all a ranking needs; ``max`` and ``total`` are kept in the same units.
    """

    def __init__(self, half_life_days: float = 0.0) -> None:
        if half_life_days < 0:
            raise ValueError("half_life_days must be >= 0 (0 means no decay)")
        self.half_life_days = float(half_life_days)
        self.mass = np.zeros(16, dtype=np.float64)
        self.total = 0.0
        self.max = 0.0
        self.clock: float | None = None
        self.t_ref: float | None = None
        self.rescaled = False  # set when every row's mass was rescaled (see _factor); cleared by its owner

    def advance(self, ts: float) -> None:
        if self.clock is None or ts > self.clock:
            self.clock = float(ts)
        if self.t_ref is None:
            self.t_ref = self.clock

    def ensure(self, row: int) -> None:
        grow_rows(self, "mass", row)

    def add(self, row: int, y: float) -> None:
        w = y * self._factor()
        m = self.mass[row] + w
        self.mass[row] = m
        self.total += w
        if m > self.max:
            self.max = float(m)

    def state(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.mass[:n].copy(), np.array([_nan(self.clock), _nan(self.t_ref), self.total, self.max])

    def load(self, mass: np.ndarray, clock: np.ndarray, n: int) -> None:
        mass = np.asarray(mass, dtype=np.float64)
        clock = np.asarray(clock, dtype=np.float64)
        if mass.shape != (n,) or clock.shape != (4,):
            raise ValueError("decayed counts do not match the item list")
        self.mass = mapped_copy(mass, n + 1)
        self.set_clock(clock)

    def set_clock(self, clock: np.ndarray) -> None:
        """The clock, reference time, total and max as :meth:`state` gives them (a delta carries them)."""
        clock = np.asarray(clock, dtype=np.float64)
        if clock.shape != (4,):
            raise ValueError("decayed counts' clock must hold 4 values")
        self.clock, self.t_ref = _none_if_nan(clock[0]), _none_if_nan(clock[1])
        self.total, self.max = float(clock[2]), float(clock[3])

    def _factor(self) -> float:
        """2 ** ((now - t_ref) / half_life): the weight of an event now relative to one at ``t_ref``."""
        if not self.half_life_days or self.clock is None or self.t_ref is None:
            return 1.0
        exponent = (self.clock - self.t_ref) / (self.half_life_days * DAY_SECONDS)
        if exponent > _MAX_EXPONENT:
            shrink = math.pow(2.0, -exponent)
            self.mass *= shrink
            self.total *= shrink
            self.max *= shrink
            self.t_ref = self.clock
            self.rescaled = True
            exponent = 0.0
        return math.pow(2.0, exponent)


class DecayedPopularity:
    """Sum of event weights per item, halved every ``half_life_days`` of stream time (0: never)."""

    kind = "decayed_popularity"
    reward = "weight"
    personal = False

    def __init__(self, half_life_days: float = 365.0) -> None:
        self._counts = DecayedCounter(half_life_days)
        self.half_life_days = self._counts.half_life_days
        self.items = IdIndex()

    # -- River-style interface -------------------------------------------------------

    def advance_clock(self, ts: float) -> None:
        self._counts.advance(ts)

    def learn_one(self, user: str, item: str, y: float) -> None:  # noqa: ARG002 - same ranking for every user
        row, new = self.items.add(item)
        if new:
            self._counts.ensure(row)
        if y > 0:
            self._counts.add(row, y)

    def predict_one(self, user: str, item: str) -> float:  # noqa: ARG002
        """The item's share of all (decayed) weight: a popularity prior, not a calibrated probability."""
        row = self.items.get(item)
        total = self._counts.total
        if row is None or total <= 0:
            return 0.0
        return float(self._counts.mass[row] / total)

    def knows_user(self, user: str) -> bool:  # noqa: ARG002 - it can rank for anyone
        return True

    def score_all(self, user: str) -> np.ndarray:  # noqa: ARG002
        return self._counts.mass[: len(self.items)].copy()

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> ModelState:
        mass, clock = self._counts.state(len(self.items))
        return ModelState(
            kind=self.kind,
            params=self._params(),
            ids={"items": list(self.items.ids)},
            arrays={"mass": mass, "clock": clock},
        )

    @classmethod
    def from_state(cls, state: ModelState) -> DecayedPopularity:
        expect_kind(state, cls.kind)
        model = cls(**{k: float(v) for k, v in state.params.items()})
        model.items = IdIndex(state.ids["items"])
        model._counts.load(state.arrays["mass"], state.arrays["clock"], len(model.items))
        return model

    def _params(self) -> dict[str, float | int | str]:
        return {"half_life_days": self.half_life_days}


class AllTimePopularity(DecayedPopularity):
    """Sum of event weights per item since the beginning: the simplest baseline."""

    kind = "popularity"

    def __init__(self) -> None:
        super().__init__(half_life_days=0.0)

    def _params(self) -> dict[str, float | int | str]:
        return {}


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)

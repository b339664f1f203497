"""The one interface every recommender model in recstream follows (River's, plus what serving needs).

``learn_one`` / ``predict_one`` are River's recommender methods. ``score_all`` ranks the whole
catalogue from arrays (one vectorised pass, never a per-item Python loop), and
``to_state`` / ``from_state`` turn the model into JSON-able parameters plus numpy arrays, so a
snapshot never needs pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from learner.id_index import IdIndex


@dataclass
class ModelState:
    """A model's whole state as JSON-able parameters, id lists and named numpy arrays."""

    kind: str
    params: dict[str, float | int | str]
    ids: dict[str, list[str]]
    arrays: dict[str, np.ndarray]


@runtime_checkable
class Recommender(Protocol):
    kind: str
    items: IdIndex  # row i of every per-item array is the item ``items.ids[i]``

    def learn_one(self, user: str, item: str, y: float) -> None:
        """Learn that ``user`` liked (y=1) or did not like (y=0) ``item``."""

    def predict_one(self, user: str, item: str) -> float:
        """Probability-like score that ``user`` likes ``item``."""

    def knows_user(self, user: str) -> bool:
        """Whether ``score_all`` can personalise for this user (else callers fall back to popularity)."""

    def score_all(self, user: str) -> np.ndarray:
        """A score for every item row, higher is better; same length as ``items``."""

    def to_state(self) -> ModelState: ...

    @classmethod
    def from_state(cls, state: ModelState) -> Recommender: ...

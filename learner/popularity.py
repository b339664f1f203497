"""All-time popularity: how many positive events each item has had, in a growable array.

>>> pop = Popularity()
>>> for item in ["a", "b", "b"]:
...     pop.learn_one(item, 1.0)
>>> pop.ranked_ids(2)
['b', 'a']
"""

from __future__ import annotations

import numpy as np

from learner.id_index import IdIndex


class Popularity:
    """Counts positives per item; the fallback ranking for users the model does not know."""

    def __init__(self) -> None:
        self.items = IdIndex()
        self._counts = np.zeros(16, dtype=np.float64)

    def learn_one(self, item: str, y: float | None) -> None:
        row, _ = self.items.add(item)
        if row >= len(self._counts):
            grown = np.zeros(2 * len(self._counts), dtype=np.float64)
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        if y is not None and y > 0.5:
            self._counts[row] += 1.0

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: len(self.items)]

    def count(self, item: str) -> float:
        row = self.items.get(item)
        return 0.0 if row is None else float(self._counts[row])

    def ranked_ids(self, k: int) -> list[str]:
        order = np.argsort(-self.counts, kind="stable")[:k]
        return [self.items.ids[i] for i in order]

    @classmethod
    def from_arrays(cls, ids: list[str], counts: np.ndarray) -> Popularity:
        pop = cls()
        pop.items = IdIndex(ids)
        pop._counts = np.zeros(max(16, len(ids)), dtype=np.float64)
        pop._counts[: len(ids)] = counts
        return pop

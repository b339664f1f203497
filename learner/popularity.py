"""All-time popularity: how many positive events each item has had, in a growable array.

>>> pop = Popularity()
>>> for item in ["a", "b", "b"]:
...     pop.learn_one(item, 1.0)
>>> pop.ranked_ids(2)
['b', 'a']

It keeps its own :class:`~learner.id_index.IdIndex` of items (as above), or counts over an
index that its owner grows -- a model's, when the model registers every item it is given
before popularity sees it (see :class:`~learner.online_learner.OnlineLearner`). Sharing saves
the second dict slot and list pointer per item (about 30 to 55 bytes an item, see
:mod:`learner.id_index`), and the counts line up with the model's item rows. Either way an
item costs 8 bytes of count (float64, so counts stay exact far beyond float32's 16.7 million).

>>> from learner.id_index import IdIndex
>>> catalogue = IdIndex(["a"])
>>> shared = Popularity(items=catalogue)
>>> catalogue.add("b")   # the owner registers the item, then popularity counts it
(1, True)
>>> shared.learn_one("b", 1.0)
>>> shared.counts.tolist(), shared.items is catalogue
([0.0, 1.0], True)
"""

from __future__ import annotations

import numpy as np

from learner.arrays import grow_rows, mapped_empty
from learner.id_index import IdIndex


class Popularity:
    """Counts positives per item; the fallback ranking for users the model does not know."""

    def __init__(self, items: IdIndex | None = None) -> None:
        self.shared = items is not None  # True: ``items`` is grown by its owner, never here
        self.items = IdIndex() if items is None else items
        self._counts = mapped_empty(max(16, len(self.items)), np.float64)  # zeros, grown in place

    def learn_one(self, item: str, y: float | None) -> None:
        if self.shared:
            row = self.items.get(item)
            if row is None:
                raise ValueError(f"item {item!r} is not in the shared item index: its owner must register it first")
        else:
            row, _ = self.items.add(item)
        if y is not None and y > 0.5:
            if row >= len(self._counts):
                self._grow(row + 1)
            self._counts[row] += 1.0

    @property
    def counts(self) -> np.ndarray:
        """One count per row of ``items`` (a view: do not keep it across learning)."""
        n = len(self.items)
        if n > len(self._counts):
            self._grow(n)
        return self._counts[:n]

    def count(self, item: str) -> float:
        row = self.items.get(item)
        return 0.0 if row is None or row >= len(self._counts) else float(self._counts[row])

    def ranked_ids(self, k: int) -> list[str]:
        order = np.argsort(-self.counts, kind="stable")[:k]
        return [self.items.ids[i] for i in order]

    @classmethod
    def from_arrays(cls, ids: list[str], counts: np.ndarray, items: IdIndex | None = None) -> Popularity:
        """Counts of ``ids`` (from a snapshot), over their own index, or over ``items`` if given.

        ``items`` is shared, so ``ids`` must be exactly its list of ids.
        """
        if len(counts) != len(ids):
            raise ValueError("popularity counts do not match its id list")
        if items is None:
            pop = cls()
            pop.items = IdIndex(ids)
        else:
            if ids != items.ids:
                raise ValueError("popularity ids are not the shared index's ids")
            pop = cls(items=items)
        pop._grow(len(ids))
        pop._counts[: len(ids)] = counts
        return pop

    def _grow(self, size: int) -> None:
        """Make room for ``size`` counts (doubling, in place: learner.arrays)."""
        grow_rows(self, "_counts", size - 1)

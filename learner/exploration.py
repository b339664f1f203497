"""Exploration: give a few of the ``k`` slots to items the system has rarely shown (Thompson sampling).

A recommender that only shows what it already ranks high only learns about what it shows: a
new or niche item that nobody is shown never gets the likes that would lift it. The explorer
keeps, per item, how often it was shown (impressions) and how often it was liked, and fills
``slots(k)`` of the ``k`` places with the rarely shown candidates (fewer than
``max_impressions``) that win a draw from ``Beta(1 + likes, 1 + max(impressions - likes, 0))``,
drawn for at most ``max_draws`` random candidates per list. The other places keep the model's
order.

Offline, a replay can only measure what exploration costs (a slot taken from the model), not
what it earns (the live feedback it unlocks); ``docs/model-card.md`` reports that cost.

>>> import numpy as np
>>> ex = ThompsonExplorer(fraction=0.2, max_impressions=5, seed=0)
>>> neg = -np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])   # negated scores, best first here
>>> final = ex.rerank(np.array([0, 1, 2, 3, 4]), neg, k=5)
>>> final[:4].tolist(), int(final[4]) == 5              # four model picks, one explored item
([0, 1, 2, 3], True)
"""

from __future__ import annotations

import math

import numpy as np

from learner.arrays import grow_rows


class ThompsonExplorer:
    """Reserves ``fraction`` of the slots (at least one when positive) for Thompson-sampled rare items."""

    def __init__(self, fraction: float = 0.1, max_impressions: int = 50, max_draws: int = 256, seed: int = 42) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        self.fraction = float(fraction)
        self.max_impressions = int(max_impressions)
        self.max_draws = int(max_draws)
        self._rng = np.random.default_rng(seed)
        self._impressions = np.zeros(16, dtype=np.float64)
        self._likes = np.zeros(16, dtype=np.float64)

    def slots(self, k: int) -> int:
        return 0 if self.fraction <= 0 or k <= 1 else max(1, math.floor(self.fraction * k + 0.5))

    def rerank(self, best: np.ndarray, neg_scores: np.ndarray, k: int) -> np.ndarray:
        """The final rows: the model's first ``k - slots`` rows, then explored ones.

        ``best`` is the model's list (rows, best first); ``neg_scores`` the negated scores with
        excluded rows at ``+inf``, so only eligible rows are explored.
        """
        n_explore = self.slots(k)
        if n_explore == 0 or not best.size:
            return best
        keep = best[: max(k - n_explore, 0)]
        n = neg_scores.size
        self._ensure(n)
        impressions, likes = self._impressions[:n], self._likes[:n]
        eligible = (impressions < self.max_impressions) & (neg_scores < np.inf)
        eligible[keep] = False
        rows = np.flatnonzero(eligible)
        if rows.size > self.max_draws:  # a random subset keeps the cost flat in catalogue size
            rows = np.unique(rows[self._rng.integers(0, rows.size, size=self.max_draws)])
        if rows.size > n_explore:
            draws = self._rng.beta(1.0 + likes[rows], 1.0 + np.maximum(impressions[rows] - likes[rows], 0.0))
            rows = rows[np.argpartition(-draws, n_explore - 1)[:n_explore]]
        if rows.size < n_explore:  # not enough rare items: give the places back to the model
            rows = np.concatenate([rows, best[keep.size :][: n_explore - rows.size]])
        return np.concatenate([keep, rows]).astype(best.dtype, copy=False)

    def observe_shown(self, rows: np.ndarray) -> None:
        if rows.size:
            self._ensure(int(rows.max()) + 1)
            self._impressions[rows] += 1.0

    def observe_liked(self, row: int) -> None:
        self._ensure(row + 1)
        self._likes[row] += 1.0

    def _ensure(self, n: int) -> None:
        if n > len(self._impressions):
            grow_rows(self, "_impressions", n - 1)
            grow_rows(self, "_likes", n - 1)

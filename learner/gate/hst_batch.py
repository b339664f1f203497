"""Half-Space Trees scores of many points at once, bit-identical to River's ``score_one``.

River's :class:`~river.anomaly.HalfSpaceTrees` scores a point by walking each tree from the root,
adding ``r_mass × 2^depth`` at each node until a node's reference mass falls under the size
limit, then returns ``1 - sum / max_score``. The reference masses only change when a window
ends, so between two windows the scores of a batch of points can be computed together: the
trees flattened into arrays (a complete binary tree, node ``i``'s children at ``2i + 1`` and
``2i + 2``) and walked one level at a time for all points with numpy. The masses are integer
counts, so the sums are exact in any order and the final division is the same floating-point
operation as River's: the scores are equal, not close (a test checks it against ``score_one``).

>>> import random
>>> from river import anomaly
>>> hst = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=20, seed=1)
>>> rnd = random.Random(0)
>>> points = [{"a": rnd.random(), "b": rnd.random()} for _ in range(100)]
>>> for p in points[:60]:
...     hst.learn_one(p)
>>> scorer = BatchScorer(hst, ("a", "b"))
>>> scorer.scores(np.array([[p["a"], p["b"]] for p in points])) == [hst.score_one(p) for p in points]
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import anomaly


class BatchScorer:
    """The reference masses of ``hst``'s trees as they are now (build a new one when a window ends)."""

    def __init__(self, hst: anomaly.HalfSpaceTrees, features: Sequence[str]) -> None:
        if not hst.trees:
            raise ValueError("the trees are built by the first learn_one")
        column = {name: i for i, name in enumerate(features)}
        self.height = hst.height
        size = 2 ** (hst.height + 1) - 1
        self.feature = np.zeros((len(hst.trees), size), dtype=np.intp)
        self.threshold = np.zeros((len(hst.trees), size), dtype=np.float64)
        self.r_mass = np.zeros((len(hst.trees), size), dtype=np.int64)
        for t, root in enumerate(hst.trees):
            level = [root]
            first = 0
            for depth in range(hst.height + 1):
                for offset, node in enumerate(level):
                    i = first + offset
                    self.r_mass[t, i] = node.r_mass
                    if depth < hst.height:
                        self.feature[t, i] = column[node.feature]
                        self.threshold[t, i] = node.threshold
                first += len(level)
                level = [child for node in level for child in node.children] if depth < hst.height else []
        self.size_limit = hst.size_limit
        self.max_score = hst._max_score  # River's own normalisation, to match it exactly

    def scores(self, points: np.ndarray) -> list[float]:
        """Scores of the rows of ``points`` (one column per feature, in the order given at construction)."""
        n = len(points)
        rows = np.arange(n)
        total = np.zeros(n, dtype=np.int64)
        for t in range(len(self.r_mass)):
            r_mass, feature, threshold = self.r_mass[t], self.feature[t], self.threshold[t]
            node = np.zeros(n, dtype=np.intp)
            walking = np.ones(n, dtype=bool)
            for depth in range(self.height):
                r = r_mass[node]
                total += np.where(walking, r << depth, 0)
                walking &= r >= self.size_limit
                node = 2 * node + 1 + (points[rows, feature[node]] >= threshold[node])
            total += np.where(walking, r_mass[node] << self.height, 0)
        return (1 - total.astype(np.float64) / self.max_score).tolist()

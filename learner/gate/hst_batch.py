"""Half-Space Trees on many points at once, bit-identical to River's ``score_one`` and ``learn_one``.

River's :class:`~river.anomaly.HalfSpaceTrees` sends a point down each tree from the root (left
when its value of the node's feature is below the node's threshold), and

* scores it by adding ``r_mass × 2^depth`` at each node until a node's reference mass falls under
  the size limit, then returns ``1 - sum / max_score``;
* learns it by adding 1 to ``l_mass`` at each node of its path; when a window of points ends,
  every node's ``r_mass`` becomes its ``l_mass`` and ``l_mass`` restarts at 0.

The splits never change once the trees are built, so a point's path, hence the leaf it reaches,
is the same in every window, and its score in a tree is a function of that leaf and of the
reference masses (:meth:`FlatTrees.leaf_scores`, once per window). So a batch of points is
walked once, all trees together, with numpy (the trees flattened into arrays: a complete binary
tree, node ``i``'s children at ``2i + 1`` and ``2i + 2``), and scored by a lookup; learning a
batch adds each node's visit count to its ``l_mass``. The masses are integer counts, so the sums
are exact in any order and the final division is the same floating-point operation as River's:
the scores are equal, not close.

>>> import random
>>> from river import anomaly
>>> hst = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=20, seed=1)
>>> rnd = random.Random(0)
>>> points = [{"a": rnd.random(), "b": rnd.random()} for _ in range(100)]
>>> for p in points[:60]:
...     hst.learn_one(p)
>>> trees = FlatTrees(hst, ("a", "b"))
>>> leaves = trees.leaves(np.array([[p["a"], p["b"]] for p in points]))
>>> trees.scores(leaves, trees.leaf_scores()) == [hst.score_one(p) for p in points]
True
>>> twin = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=20, seed=1)
>>> for p in points[:75]:                         # 15 of the 20 points of the window: l_mass only
...     twin.learn_one(p)
>>> trees.learn(np.array([[p["a"], p["b"]] for p in points[60:75]]))
>>> all([n.l_mass for n in a.iter_dfs()] == [n.l_mass for n in b.iter_dfs()] for a, b in zip(hst.trees, twin.trees))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from river import anomaly


class FlatTrees:
    """The splits of ``hst``'s trees as arrays, and its nodes in the same order (the trees must be built)."""

    def __init__(self, hst: anomaly.HalfSpaceTrees, features: Sequence[str]) -> None:
        if not hst.trees:
            raise ValueError("the trees are built by the first learn_one")
        column = {name: i for i, name in enumerate(features)}
        self.hst = hst
        self.height = hst.height
        n_trees, size = len(hst.trees), 2 ** (hst.height + 1) - 1
        inner = 2**hst.height - 1  # nodes above the leaves
        self.size = size
        # River's nodes, tree t's node i at [t][i] (branches, then the leaves); the splits flattened (tree t's
        # node i at t × inner + i) for fancy indexing
        self.nodes: list[list[Any]] = []
        feature = np.zeros((n_trees, inner), dtype=np.intp)
        threshold = np.zeros((n_trees, inner), dtype=np.float64)
        for t, root in enumerate(hst.trees):
            level, nodes = [root], [root]
            for _ in range(hst.height):  # breadth first: node i's children land at 2i + 1 and 2i + 2
                level = [child for node in level for child in node.children]
                nodes.extend(level)
            self.nodes.append(nodes)
            for i in range(inner):
                feature[t, i] = column[nodes[i].feature]
                threshold[t, i] = nodes[i].threshold
        self._feature = feature.ravel()
        self._threshold = threshold.ravel()
        self._offset = (np.arange(n_trees) * inner)[:, None]
        self._tree = np.arange(n_trees)[:, None]

    @property
    def split_features(self) -> np.ndarray:
        """Each inner node's feature (its column), tree ``t``'s node ``i`` at ``t × (2^height - 1) + i``."""
        return self._feature

    @property
    def split_thresholds(self) -> np.ndarray:
        """Each inner node's split (a point goes left when its value is below it), ordered as ``split_features``."""
        return self._threshold

    def leaves(self, points: np.ndarray) -> np.ndarray:
        """The leaf (node index) each row of ``points`` reaches in each tree: shape (trees, rows).

        ``points`` has one column per feature, in the order given at construction. A point goes
        left when its value is below the threshold, right otherwise, as in River.
        """
        n = len(points)
        values = points.T.ravel()  # feature f of row r at f × n + r: 1-d takes, much cheaper than 2-d fancy indexing
        rows = np.arange(n)
        column = self._feature * n
        node = np.zeros((len(self.nodes), n), dtype=np.intp)
        for _ in range(self.height):
            at = self._offset + node
            below = values.take(column.take(at) + rows) < self._threshold.take(at)
            node = 2 * node + 2 - below
        return node

    def leaf_scores(self) -> np.ndarray:
        """Each node's score sum for a walk that ends at or below it, from the reference masses as they are now.

        Shape (trees, nodes); only the leaves' values are used. A walk stops after the first node
        whose reference mass is under the size limit; a leaf always adds its own.
        """
        limit = self.hst.size_limit
        r_mass = np.array([[node.r_mass for node in nodes] for nodes in self.nodes], dtype=np.int64)
        total = np.zeros_like(r_mass)
        stopped = np.zeros(r_mass.shape, dtype=bool)
        total[:, 0] = r_mass[:, 0]
        stopped[:, 0] = r_mass[:, 0] < limit
        for depth in range(1, self.height + 1):
            first, end = 2**depth - 1, 2 ** (depth + 1) - 1
            parents = (np.arange(first, end) - 1) // 2
            mass = r_mass[:, first:end]
            total[:, first:end] = total[:, parents] + np.where(stopped[:, parents], 0, mass << depth)
            stopped[:, first:end] = stopped[:, parents] | (mass < limit)
        return total

    def scores(self, leaves: np.ndarray, leaf_scores: np.ndarray) -> list[float]:
        """River's score of each point that reached ``leaves``, under the masses ``leaf_scores`` were taken from."""
        total = leaf_scores[self._tree, leaves].sum(axis=0)
        return (1 - total.astype(np.float64) / self.hst._max_score).tolist()  # River's own normalisation

    def learn(self, points: np.ndarray) -> None:
        """Add the visits of the rows of ``points`` to the nodes' ``l_mass``, as ``learn_one`` on each would.

        Nothing else: River's window counter is the caller's to move (and a window to end with ``learn_one``).
        """
        if not len(points):
            return
        for nodes, counts in zip(self.nodes, self.visits(points).tolist(), strict=True):
            for node, count in zip(nodes, counts, strict=True):
                node.l_mass += count

    def visits(self, points: np.ndarray) -> np.ndarray:
        """How many of the rows of ``points`` pass each node, tree ``t``'s node ``i`` at ``[t, i]``."""
        visits = np.zeros((len(self.nodes), self.size), dtype=np.int64)
        if not len(points):
            return visits
        leaves = self.leaves(points)
        for t in range(len(self.nodes)):
            visits[t] = np.bincount(leaves[t], minlength=self.size)
        for depth in range(self.height - 1, -1, -1):
            first, end = 2**depth - 1, 2 ** (depth + 1) - 1
            children = 2 * np.arange(first, end) + 1
            visits[:, first:end] = visits[:, children] + visits[:, children + 1]
        return visits

"""Top-K selection over numpy score vectors: one mat-vec product and an argpartition.

>>> import numpy as np
>>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), k=2, exclude=[1])
[(3, 0.7), (2, 0.5)]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def scores_for_user(user_vector: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    """Raw scores (logits) of every item for one user."""
    return item_factors @ user_vector + item_bias


def top_k(scores: np.ndarray, k: int, exclude: Iterable[int] = ()) -> list[tuple[int, float]]:
    """The ``k`` best (row, score) pairs, best first, leaving out the rows in ``exclude``."""
    excluded = np.fromiter(exclude, dtype=np.int64)
    if excluded.size:
        scores = scores.copy()
        scores[excluded] = -np.inf
    n_candidates = int(scores.size - np.unique(excluded).size) if excluded.size else int(scores.size)
    k = min(k, n_candidates)
    if k <= 0:
        return []
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.size)
    best = part[np.argsort(-scores[part], kind="stable")]
    return [(int(row), float(scores[row])) for row in best]

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


# Below this many scores, take the threshold from all of them; above, from a sample first.
_SAMPLED_FROM = 8_192
_SAMPLE_SIZE = 2_048  # about this many scores, evenly spaced, choose the sampled threshold


def top_k(scores: np.ndarray, k: int, exclude: Iterable[int] = ()) -> list[tuple[int, float]]:
    """The ``k`` best (row, score) pairs, best first (equal scores: lower row first), leaving out ``exclude``.

    Over a large catalogue it first takes a threshold from an evenly spaced sample of the scores:
    the sample's ``k``-th best score. At least ``k`` scores (that sample's best) are at or above
    it, so the ``k`` best of all are among the scores at or above it: a few hundred instead of
    the whole catalogue. The result is exact; at 100,000 items it costs about two thirds of an
    argpartition of every score (about a twentieth on random scores, where argpartition is at its
    slowest). NaN scores come after every number.

    >>> top_k(np.array([0.5, 0.9, 0.5, 0.7]), k=3)
    [(1, 0.9), (3, 0.7), (0, 0.5)]
    """
    excluded = np.fromiter(exclude, dtype=np.int64)
    if excluded.size:
        scores = scores.copy()
        scores[excluded] = -np.inf
    n = int(scores.size)
    k = min(k, n - np.unique(excluded).size if excluded.size else n)
    if k <= 0:
        return []
    rows = _at_or_above_sampled_threshold(scores, k) if n >= _SAMPLED_FROM and n >= 64 * k else None
    if rows is None:
        rows = np.arange(n)
    values = scores[rows]
    kth = np.partition(values, values.size - k)[values.size - k]  # the k-th best among the candidates
    if np.isnan(kth):  # fewer than k numbers: every number, then NaN rows in order
        best = rows[np.argsort(-values, kind="stable")[:k]]
    else:
        above = values > kth
        ties = rows[values == kth]  # in row order: the lowest rows are taken first
        if kth == -np.inf and excluded.size:  # scores of -inf tie with the excluded rows: keep those out
            ties = ties[~np.isin(ties, excluded)]
        chosen = np.concatenate([rows[above], ties[: k - int(np.count_nonzero(above))]])
        best = chosen[np.lexsort((chosen, -scores[chosen]))]
    return [(int(row), float(scores[row])) for row in best]


def _at_or_above_sampled_threshold(scores: np.ndarray, k: int) -> np.ndarray | None:
    """Rows scoring at least the ``k``-th best of an evenly spaced sample (None: the sample gives no threshold)."""
    sample = scores[:: max(8, scores.size // _SAMPLE_SIZE)]
    if sample.size < k:
        return None
    threshold = np.partition(sample, sample.size - k)[sample.size - k]
    if not threshold > -np.inf:  # excluded rows (or NaN) among the sample's best: no useful threshold
        return None
    return np.flatnonzero(scores >= threshold)

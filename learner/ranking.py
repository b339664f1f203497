"""Top-K selection over numpy score vectors: one mat-vec product and an argpartition.

>>> import numpy as np
>>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), k=2, exclude=[1])
[(3, 0.7), (2, 0.5)]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from learner import kernels


def scores_for_user(user_vector: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    """Raw scores (logits) of every item for one user."""
    return item_factors @ user_vector + item_bias


# Below this many scores, take the threshold from all of them; above, from a sample first.
_SAMPLED_FROM = 8_192
_SAMPLE_SIZE = 2_048  # about this many scores, evenly spaced, choose the sampled threshold
_NO_ROWS = np.zeros(0, dtype=np.int64)


def top_k(scores: np.ndarray, k: int, exclude: Iterable[int] = (), *, owned: bool = False) -> list[tuple[int, float]]:
    """The ``k`` best (row, score) pairs, best first (equal scores: lower row first), leaving out ``exclude``.

    ``owned``: as for :func:`top_rows`.

    >>> top_k(np.array([0.5, 0.9, 0.5, 0.7]), k=3)
    [(1, 0.9), (3, 0.7), (0, 0.5)]
    """
    return [(int(row), float(scores[row])) for row in top_rows(scores, k, exclude, owned=owned)]


def top_rows(scores: np.ndarray, k: int, exclude: Iterable[int] = (), *, owned: bool = False) -> np.ndarray:
    """The rows of the ``k`` best scores, best first (equal scores: lower row first), leaving out ``exclude``.

    Serving (:func:`top_k`) and the replay (:mod:`learner.evaluation`) both select with it.
    Over a large catalogue it first takes a threshold from an evenly spaced sample of the scores:
    the sample's ``k``-th best score. At least ``k`` scores (that sample's best) are at or above
    it, so the ``k`` best of all are among the scores at or above it: a few hundred instead of
    the whole catalogue. The result is exact; at 100,000 items it costs about half an argpartition
    of every score (about a twentieth on random scores, where argpartition is at its slowest).
    NaN scores come after every number.

    The excluded rows are set to -inf in a copy of ``scores``; with ``owned`` (the caller owns the
    array, as it owns what a model's ``score_all`` returns) in ``scores`` itself, which saves a
    copy of the catalogue's scores per request (and leaves them masked for the caller).

    >>> top_rows(np.array([0.5, 0.9, 0.5, 0.7]), k=3).tolist()
    [1, 3, 0]
    >>> scores = np.array([0.5, 0.9, 0.5, 0.7])
    >>> top_rows(scores, k=2, exclude=[1], owned=True).tolist(), scores.tolist()
    ([3, 0], [0.5, -inf, 0.5, 0.7])
    """
    excluded = (
        exclude.astype(np.int64, copy=False) if isinstance(exclude, np.ndarray) else np.fromiter(exclude, np.int64)
    )
    if excluded.size:
        if not owned:
            scores = scores.copy()
        scores[excluded] = -np.inf  # so that they never set the sampled threshold
    n = int(scores.size)
    if k <= 0 or n == 0:
        return _NO_ROWS
    kernel = kernels.compiled()
    if kernel is not None and scores.dtype == np.float64 and scores.ndim == 1 and scores.flags.c_contiguous:
        best = kernel.top_rows(scores, k)  # one pass; None: fewer than k numbers above -inf (the careful path below)
        if best is not None:
            return np.array(best, dtype=np.intp)
    # candidates: the rows at or above the sampled threshold (never an excluded row: they are -inf,
    # and at least k numbers reach it), or every row that is not excluded
    rows = _at_or_above_sampled_threshold(scores, k) if n >= _SAMPLED_FROM and n >= 64 * k else None
    if rows is None:
        best = _k_best_of_all(scores, min(k, n))
        if best is not None:
            return best
        rows = np.delete(np.arange(n), excluded) if excluded.size else np.arange(n)
        k = min(k, rows.size)
        if k == 0:
            return _NO_ROWS
    values = scores[rows]
    # the k-th best number among the candidates (partition puts NaN last: NaN only if fewer than k numbers)
    kth = -np.partition(-values, k - 1)[k - 1]
    if np.isnan(kth):  # fewer than k numbers: every number, then NaN rows in order
        best = rows[np.argsort(-values, kind="stable")[:k]]
    else:
        above = values > kth
        ties = rows[values == kth]  # in row order: the lowest rows are taken first
        chosen = np.concatenate([rows[above], ties[: k - int(np.count_nonzero(above))]])
        best = chosen[np.lexsort((chosen, -scores[chosen]))]
    return best


def top_rows_and_rank(
    scores: np.ndarray, k: int, exclude: np.ndarray, target: int | None, keep: int | None = None
) -> tuple[np.ndarray, int, int]:
    """:func:`top_rows` of ``scores`` with ``owned`` (the rows ``exclude`` set to -inf in ``scores``, but for the row
    ``keep``, if given), and, for a ``target`` row, how many of the masked scores are above ``scores[target]`` and
    how many equal it (the target among them): what the replay's rank of a target is computed from (``keep``: the
    target, when the user has already seen it). Where the compiled loops are built, one call and one pass over the
    scores for all three; the same numbers with numpy otherwise (``target`` None: 0 and 0).

    >>> scores = np.array([0.5, 0.9, 0.5, 0.7])
    >>> best, greater, equal = top_rows_and_rank(scores, 1, np.array([1]), target=2)
    >>> best.tolist(), greater, equal, scores.tolist()
    ([3], 1, 2, [0.5, -inf, 0.5, 0.7])
    >>> top_rows_and_rank(np.array([0.5, 0.9, 0.5, 0.7]), 1, np.array([1, 2]), target=2, keep=2)[0].tolist()
    [3]
    """
    excluded = np.asarray(exclude, dtype=np.int64)
    kernel = kernels.compiled()
    if (
        kernel is not None
        and k > 0
        and scores.size
        and scores.dtype == np.float64
        and scores.ndim == 1
        and scores.flags.c_contiguous
        and scores.flags.writeable
    ):
        # None: an excluded row or the target outside the scores (numpy's indexing, below)
        fused = kernel.top_rows_rank(
            scores, excluded, k, -1 if target is None else target, -1 if keep is None else keep
        )
        if fused is not None:
            best, greater, equal = fused
            if best is None:  # fewer than k numbers above -inf: top_rows' careful path (masking again changes nothing)
                return top_rows(scores, k, without_row(excluded, keep), owned=True), greater, equal
            return np.array(best, dtype=np.intp), greater, equal
    best = top_rows(scores, k, without_row(excluded, keep), owned=True)
    if target is None:
        return best, 0, 0
    t = scores[target]
    return best, int(np.count_nonzero(scores > t)), int(np.count_nonzero(scores == t))


def without_row(rows: np.ndarray, row: int | None) -> np.ndarray:
    """``rows`` (an int array) without ``row`` (None: all of them): the rows to mask when one of them is kept."""
    return rows if row is None else rows[rows != row]


def _k_best_of_all(scores: np.ndarray, k: int) -> np.ndarray | None:
    """The k best rows of all, when the k-th best is a number above -inf (None: fewer such numbers,
    so NaN rows or rows tying with the excluded ones' -inf come in: the caller's careful path)."""
    neg = np.negative(scores)
    kth = np.partition(neg, k - 1)[k - 1]  # NaN last, the excluded rows (+inf here) just before
    if not kth < np.inf:
        return None
    above = np.flatnonzero(neg < kth)
    chosen = np.concatenate([above, np.flatnonzero(neg == kth)[: k - above.size]])  # ties: lowest rows
    return chosen[np.lexsort((chosen, neg[chosen]))]


def _at_or_above_sampled_threshold(scores: np.ndarray, k: int) -> np.ndarray | None:
    """Rows scoring at least the ``k``-th best number of an evenly spaced sample (None: the sample has
    fewer than ``k`` numbers above -inf). The k best numbers of all are among them."""
    sample = scores[:: max(8, scores.size // _SAMPLE_SIZE)]
    if sample.size < k:
        return None
    threshold = -np.partition(-sample, k - 1)[k - 1]  # the sample's k-th best number (NaN last)
    if not threshold > -np.inf:  # fewer than k numbers above the excluded rows' -inf: no useful threshold
        return None
    return np.flatnonzero(scores >= threshold)  # at least the sample's k best

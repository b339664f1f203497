"""Growable numpy arrays: amortised O(1) appends for per-user and per-item rows.

>>> a = ensure_rows(np.zeros((0, 2), dtype=np.float32), 3)
>>> a.shape[0] >= 4, a.dtype
(True, dtype('float32'))
"""

from __future__ import annotations

import numpy as np


def ensure_rows(array: np.ndarray, row: int) -> np.ndarray:
    """``array`` itself if it has a row ``row``, else a copy grown (doubling, zero-filled) to hold it."""
    if row < len(array):
        return array
    grown = np.zeros((max(16, 2 * len(array), row + 1), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown

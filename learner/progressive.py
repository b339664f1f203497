"""Progressive validation: every labelled event is scored before the model learns from it.

Metrics are over a sliding window so they show the model as it is now, not its history.

>>> pm = ProgressiveMetrics(window=100)
>>> pm.update(1.0, 0.9)
>>> pm.auc  # one class only: undefined
nan
>>> pm.update(0.0, 0.2)
>>> round(pm.auc, 2), pm.count
(1.0, 2)

Memory stays bounded by the window, whatever the labels:

>>> only_likes = ProgressiveMetrics(window=100)
>>> for _ in range(10_000):
...     only_likes.update(1.0, 0.9)
>>> only_likes.pending_updates() <= 100
True
"""

from __future__ import annotations

import math
from collections import deque

from river import metrics, utils


class ProgressiveMetrics:
    """Rolling ROC AUC and log loss of predictions made before learning."""

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._auc = metrics.RollingROCAUC(window_size=window)
        self._logloss = utils.Rolling(metrics.LogLoss, window_size=window)
        self._labels: deque[bool] = deque(maxlen=window)
        self._positives = 0
        self.count = 0

    def update(self, y: float, p: float) -> None:
        p = min(max(p, 1e-7), 1 - 1e-7)
        label = y > 0.5
        if len(self._labels) == self._labels.maxlen:
            self._positives -= self._labels[0]
        self._labels.append(label)
        self._positives += label
        self._auc.update(label, p)
        self._logloss.update(label, p)
        self.count += 1
        if self.count % self.window == 0:
            # River's RollingROCAUC buffers updates until it is read; read it once per window so a
            # stream that never has both classes (only likes, as in a ratings replay) cannot grow it.
            self._auc.get()

    @property
    def auc(self) -> float:
        """NaN until the window holds both a positive and a negative (AUC is undefined before)."""
        if not 0 < self._positives < len(self._labels):
            return math.nan
        return float(self._auc.get())

    def pending_updates(self) -> int:
        """Updates River holds unread (bounded by the window)."""
        return len(self._auc._buf_labels)  # River's buffer: an AttributeError here means River changed

    @property
    def logloss(self) -> float:
        return float(self._logloss.get()) if self.count else math.nan

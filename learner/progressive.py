"""Progressive validation: every labelled event is scored before the model learns from it.

Metrics are over a sliding window so they show the model as it is now, not its history.

>>> pm = ProgressiveMetrics(window=100)
>>> round(pm.update(1.0, 0.9), 4)  # returns the prediction's log loss
0.1054
>>> pm.auc  # one class only: undefined
nan
>>> _ = pm.update(0.0, 0.2)
>>> round(pm.auc, 2), pm.count
(1.0, 2)

The window travels in the snapshot, so a restarted worker (or a rollback) goes on from it:

>>> clone = ProgressiveMetrics.from_window(*pm.window_arrays(), count=pm.count, window=100)
>>> round(clone.auc, 2), round(clone.logloss, 6) == round(pm.logloss, 6), clone.count
(1.0, True, 2)

Memory stays bounded by the window, whatever the labels:

>>> only_likes = ProgressiveMetrics(window=100)
>>> for _ in range(10_000):
...     _ = only_likes.update(1.0, 0.9)
>>> only_likes.pending_updates() <= 100
True
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from river import metrics

_LOW, _HIGH = 1e-7, 1 - 1e-7  # predictions are clipped to [_LOW, _HIGH] (River's LogLoss)


def log_loss(y: float, p: float) -> float:
    """One prediction's log loss (River's ``LogLoss``), ``p`` clipped to [1e-7, 1 - 1e-7].

    >>> round(log_loss(1.0, 0.9), 4), round(log_loss(0.0, 0.9), 4), round(log_loss(1.0, 0.0), 2)
    (0.1054, 2.3026, 16.12)
    """
    p = min(max(p, _LOW), _HIGH)
    return -math.log(p) if y > 0.5 else -math.log(1.0 - p)


class ProgressiveMetrics:
    """Rolling ROC AUC and log loss of predictions made before learning.

    The log loss is the mean of the window's per-event losses (River's ``LogLoss``:
    ``-log(p)`` for a positive, ``-log(1 - p)`` for a negative), kept as a running sum and summed
    afresh once per window so rounding cannot drift: ~0.3 µs an event, where River's
    ``Rolling(LogLoss)`` took ~1.8 µs on the worker's path.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._auc = metrics.RollingROCAUC(window_size=window)
        self._labels: deque[bool] = deque(maxlen=window)
        self._losses: deque[float] = deque(maxlen=window)
        self._predictions: deque[float] = deque(maxlen=window)  # clipped, as River's AUC saw them
        self._loss_sum = 0.0
        self._positives = 0
        self.count = 0
        self._packed: tuple[np.ndarray, np.ndarray] | None = None  # a restored window not yet unpacked

    @classmethod
    def from_window(
        cls, labels: np.ndarray, predictions: np.ndarray, count: int, window: int = 10_000
    ) -> ProgressiveMetrics:
        """The metrics of a window saved by :meth:`window_arrays` (the last ``window`` of it), after
        ``count`` updates in all. The window is unpacked when first needed: a process that only
        serves the snapshot (the API) never pays for it."""
        if len(labels) != len(predictions):
            raise ValueError("progressive window: labels and predictions differ in length")
        metrics_ = cls(window)
        kept = slice(max(0, len(labels) - window), len(labels))
        metrics_._packed = (labels[kept].copy(), predictions[kept].copy())  # not views that keep a snapshot alive
        metrics_.count = int(count)
        return metrics_

    def _unpack(self) -> None:
        """The window restored by :meth:`from_window`, and River's rolling AUC refilled from it."""
        labels, predictions = self._packed  # type: ignore[misc]
        self._packed = None
        for label, p in zip(labels.tolist(), predictions.tolist(), strict=True):
            self._labels.append(bool(label))
            self._predictions.append(p)
            self._losses.append(log_loss(label, p))
            self._auc.update(bool(label), p)
        self._positives = sum(self._labels)
        self._loss_sum = math.fsum(self._losses)
        self._auc.get()  # read once: River buffers updates until then

    def window_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The window as arrays (labels 0/1, predictions as clipped): what a snapshot keeps (int32: a
        dtype every snapshot reader accepts, see :data:`learner.codec.ALLOWED_DTYPES`)."""
        if self._packed is not None:
            return self._packed
        return np.array(self._labels, dtype=np.int32), np.array(self._predictions, dtype=np.float64)

    def update(self, y: float, p: float) -> float:
        """Add one prediction ``p`` made before learning label ``y``; returns its log loss."""
        if self._packed is not None:
            self._unpack()
        # log_loss(y, p), inlined: p clipped once (a NaN stays NaN, as min and max leave it)
        if p < _LOW:
            p = _LOW
        elif p > _HIGH:
            p = _HIGH
        label = y > 0.5
        loss = -math.log(p) if label else -math.log(1.0 - p)
        labels, losses = self._labels, self._losses
        if len(labels) == self.window:
            self._positives -= labels[0]
            self._loss_sum -= losses[0]
        labels.append(label)
        losses.append(loss)
        self._predictions.append(p)
        self._positives += label
        self._loss_sum += loss
        self._auc.update(label, p)
        self.count += 1
        if self.count % self.window == 0:
            # River's RollingROCAUC buffers updates until it is read; read it once per window so a
            # stream that never has both classes (only likes, as in a ratings replay) cannot grow it.
            self._auc.get()
            self._loss_sum = math.fsum(losses)
        return loss

    @property
    def auc(self) -> float:
        """NaN until the window holds both a positive and a negative (AUC is undefined before)."""
        if self._packed is not None:
            self._unpack()
        if not 0 < self._positives < len(self._labels):
            return math.nan
        return float(self._auc.get())

    def pending_updates(self) -> int:
        """Updates River holds unread (bounded by the window)."""
        return len(self._auc._buf_labels)  # River's buffer: an AttributeError here means River changed

    def window_losses(self) -> list[float]:
        """The window's per-event log losses, oldest first (what the model guard of a newly promoted model starts
        from)."""
        if self._packed is not None:
            self._unpack()
        return list(self._losses)

    @property
    def logloss(self) -> float:
        if self._packed is not None:
            self._unpack()
        return self._loss_sum / len(self._losses) if self._losses else math.nan

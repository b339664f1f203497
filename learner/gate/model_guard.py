"""The model guard: pauses learning when the live model's progressive loss degrades against its own history.

Every labelled event is scored before the model learns from it (see :mod:`learner.progressive`);
the guard watches that per-event log loss. It compares the mean over the last ``recent_window``
losses with a reference: an exponentially weighted mean over ~``reference_window`` earlier losses
(each loss joins the reference only once it leaves the recent window, so a degradation is not
averaged into the yardstick it is measured against).

* **Pause** when, after ``min_reference`` losses have built the reference, the recent mean is
  above ``degrade_ratio`` × reference *and* more than ``degrade_margin`` above it (the ratio
  alone would fire on tiny losses, the margin alone on large ones). While paused the reference
  is frozen: the yardstick stays the last good model's.
* **Automatic resume** when the recent mean has stayed within ``resume_ratio`` × reference for
  ``resume_events`` consecutive losses: the stream is healthy again (the attack or the broken
  client stopped), and the frozen model predicts it as well as before.
* **Operator resume** (:meth:`resume`): for a lasting change (tastes moved, a new catalogue) the
  frozen model will never look healthy against the old reference; an operator accepts the new
  level, which becomes the reference.

The caller keeps scoring labelled events while paused (predict, :meth:`update`, do not learn),
or the guard could never see the stream recover.

>>> guard = ModelGuard(recent_window=50, reference_window=500, min_reference=200, resume_events=100)
>>> any(guard.update(0.5) for _ in range(1_000))          # a stable loss: never degraded
False
>>> any(guard.update(3.0) for _ in range(100)), guard.paused   # labels flipped: loss jumps
(True, True)
>>> for _ in range(300):
...     _ = guard.update(0.5)                                # the stream is healthy again
>>> guard.paused, guard.pauses, guard.resumes
(False, 1, 1)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from learner import kernels


class _GuardCore:
    """The guard's state and :meth:`ModelGuard.update`, in Python (``learner._kernels.GuardCore`` is the same
    compiled: the worker calls ``update`` for every labelled event). :class:`ModelGuard` writes only ``paused``,
    ``reference``, ``reference_count`` (an int) and ``healthy_run``; the compiled core's other fields are read-only."""

    def __init__(
        self,
        recent_window: int,
        reference_window: int,
        min_reference: int,
        degrade_ratio: float,
        degrade_margin: float,
        resume_ratio: float,
        resume_events: int,
        loss_cap: float,
    ) -> None:
        self.recent_window = recent_window
        self.reference_window = reference_window
        self.min_reference = min_reference
        self.degrade_ratio = degrade_ratio
        self.degrade_margin = degrade_margin
        self.resume_ratio = resume_ratio
        self.resume_events = resume_events
        self.loss_cap = loss_cap
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.updates = 0
        self.onset: int | None = None
        self.recent_sum = 0.0
        self.reference = 0.0
        self.reference_count = 0
        self.healthy_run = 0
        self._recent: deque[float] = deque()

    @property
    def recent_count(self) -> int:
        return len(self._recent)

    def recent_losses(self) -> list[float]:
        return list(self._recent)

    def clear_recent(self) -> None:
        self._recent.clear()
        self.recent_sum = 0.0

    def update(self, loss: float) -> bool:
        """:meth:`ModelGuard.update`, written out flat (no helper calls, no ``min``/``max``)."""
        if loss != loss:  # NaN
            return self.paused
        if loss < 0.0:
            loss = 0.0
        elif loss > self.loss_cap:
            loss = self.loss_cap
        self.updates = updates = self.updates + 1
        recent = self._recent
        window = self.recent_window
        if len(recent) == window:
            leaving = recent.popleft()
            self.recent_sum -= leaving
            if not self.paused:
                self.reference_count = count = self.reference_count + 1
                # a plain mean until the reference window fills, then an exponential one
                rate = 1.0 / count if count < self.reference_window else 1.0 / self.reference_window
                self.reference += rate * (leaving - self.reference)
        recent.append(loss)
        self.recent_sum += loss
        if updates % window == 0:
            self.recent_sum = math.fsum(recent)  # no rounding drift over a long-lived worker
        if self.reference_count < self.min_reference or len(recent) < window:
            return self.paused
        current = self.recent_sum / len(recent)
        reference = self.reference
        if not self.paused:
            if current > self.degrade_ratio * reference and current - reference > self.degrade_margin:
                self.paused = True
                self.pauses += 1
                self.healthy_run = 0
                self.onset = updates - len(recent) + 1
        elif current <= self.resume_ratio * reference:
            self.healthy_run += 1
            if self.healthy_run >= self.resume_events:
                self.paused = False
                self.resumes += 1
        else:
            self.healthy_run = 0
        return self.paused


class ModelGuard:
    """Watches per-event log loss; ``update`` returns True while learning should stay paused."""

    def __init__(
        self,
        recent_window: int = 1_000,
        reference_window: int = 20_000,
        min_reference: int = 2_000,
        degrade_ratio: float = 1.3,
        degrade_margin: float = 0.15,
        resume_ratio: float = 1.1,
        resume_events: int = 2_000,
        loss_cap: float = 5.0,
    ) -> None:
        if recent_window < 1 or reference_window < 1 or resume_events < 1:
            raise ValueError("recent_window, reference_window and resume_events must be >= 1")
        if degrade_ratio < resume_ratio or resume_ratio < 1.0:
            raise ValueError("need degrade_ratio >= resume_ratio >= 1")
        self.recent_window = recent_window
        self.reference_window = reference_window
        self.min_reference = min_reference
        self.degrade_ratio = degrade_ratio
        self.degrade_margin = degrade_margin
        self.resume_ratio = resume_ratio
        self.resume_events = resume_events
        self.loss_cap = loss_cap
        settings = (
            recent_window,
            reference_window,
            min_reference,
            degrade_ratio,
            degrade_margin,
            resume_ratio,
            resume_events,
            loss_cap,
        )
        kernel = kernels.compiled()
        self._core = _GuardCore(*settings) if kernel is None else kernel.GuardCore(*settings)
        # the worker's call for every labelled event goes straight to the core (compiled: ~0.3 us an update less)
        self.update = self._core.update  # type: ignore[method-assign]

    def update(self, loss: float) -> bool:
        """Add one labelled event's log loss (predicted before learning); True while degraded (paused)."""
        return self._core.update(loss)

    @property
    def paused(self) -> bool:
        return bool(self._core.paused)

    @property
    def pauses(self) -> int:
        """Times learning was paused."""
        return self._core.pauses

    @property
    def resumes(self) -> int:
        """Times it resumed automatically."""
        return self._core.resumes

    @property
    def updates(self) -> int:
        return self._core.updates

    @property
    def onset(self) -> int | None:
        """Number of the first update in the window that triggered the latest pause: a checkpoint taken before it
        has learned none of the losses that triggered it (restore that one, not the latest)."""
        return self._core.onset

    def update_prediction(self, y: float, p: float) -> bool:
        """:meth:`update` with the log loss of predicting ``p`` for label ``y`` (clipped like the metrics)."""
        p = min(max(p, 1e-7), 1 - 1e-7)
        return self.update(-math.log(p if y > 0.5 else 1.0 - p))

    def reference_state(self) -> dict[str, float | int]:
        """The yardstick a paused guard judges recovery against, to carry over a restart."""
        core = self._core
        return {"reference": core.reference, "reference_count": core.reference_count}

    def restore_paused(self, reference: float | None, reference_count: int) -> None:
        """Continue a pause from before a restart, against the reference saved then.

        The recent window starts empty, so the guard resumes by itself only after ``recent_window``
        + ``resume_events`` healthy losses, as it would have without the restart. Without a saved
        reference (``None``) it stays paused until an operator resumes it.
        """
        core = self._core
        core.paused = True
        core.healthy_run = 0
        if reference is None or not math.isfinite(reference) or reference_count <= 0:
            core.reference, core.reference_count = 0.0, 0
        else:
            core.reference, core.reference_count = reference, reference_count

    def restart(self, history: Sequence[float] = ()) -> None:
        """Another model serves (an operator's promotion or rollback, an automatic promotion): its losses are judged
        against its own history only. The recent window starts empty and the reference is ``history``: that model's
        own recent losses (its progressive window, which travels in its snapshot), each capped as :meth:`update` caps
        it. The guard judges again once the recent window is full, and the reference holds ``min_reference`` losses
        (with fewer in ``history``, the ones that then leave the recent window make up the rest). The counts of pauses
        and resumes stay. A paused guard is left as it is (its frozen reference is the last good model's: what a
        rollback during a pause is judged against)."""
        if self._core.paused:
            return
        capped = [min(max(loss, 0.0), self.loss_cap) for loss in history if loss == loss]
        core = self._core
        core.clear_recent()
        core.reference = math.fsum(capped) / len(capped) if capped else 0.0
        core.reference_count = len(capped)
        core.healthy_run = 0

    def resume(self) -> None:
        """Operator action: learn again and take the current loss level as the new reference."""
        core = self._core
        if core.recent_count:
            core.reference = self.recent_loss
            core.reference_count = max(core.reference_count, self.min_reference)
        core.paused = False
        core.healthy_run = 0

    @property
    def recent_loss(self) -> float:
        core = self._core
        return core.recent_sum / core.recent_count if core.recent_count else math.nan

    @property
    def reference_loss(self) -> float:
        return self._core.reference if self._core.reference_count else math.nan

    def status(self) -> dict[str, float | int | bool]:
        """What the API and metrics show: state, both losses, and how often it paused and resumed."""
        return {
            "paused": self.paused,
            "recent_loss": self.recent_loss,
            "reference_loss": self.reference_loss,
            "pauses": self.pauses,
            "automatic_resumes": self.resumes,
            "healthy_run": self._core.healthy_run,
        }

"""A budget that keeps optional work to a share of the worker's time.

The worker's live hit rate ranks the whole catalogue for a sampled positive event, so its cost
grows with the catalogue (about 3 ms at a million items: every 20th positive would then cost more
than learning). The budget accrues ``share`` seconds per second of wall time, up to
``cap_seconds``; a sample is taken only while the budget is positive, and what it took is
spent. Small catalogues never touch the limit; large ones are sampled less often instead of
slowing ingest.

>>> now = [0.0]
>>> budget = ShareBudget(share=0.02, cap_seconds=0.05, clock=lambda: now[0])
>>> budget.affordable(), budget.spend(0.06), budget.affordable()
(True, None, False)
>>> now[0] = 1.0  # 0.02 s accrued: the budget is back above zero
>>> budget.affordable()
True
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ShareBudget:
    def __init__(self, share: float, cap_seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0 < share <= 1 or cap_seconds <= 0:
            raise ValueError("share must be in (0, 1] and cap_seconds > 0")
        self.share = share
        self.cap_seconds = cap_seconds
        self.clock = clock
        self.left = cap_seconds
        self._at = clock()
        #: seconds spent so far (for tests and metrics)
        self.spent = 0.0

    def affordable(self) -> bool:
        now = self.clock()
        self.left = min(self.cap_seconds, self.left + (now - self._at) * self.share)
        self._at = now
        return self.left > 0

    def spend(self, seconds: float) -> None:
        self.left -= seconds
        self.spent += seconds

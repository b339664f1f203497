"""A time budget that keeps recurring work to a share of a process's time, on average.

The budget accrues ``share`` seconds per second of wall time, up to ``cap_seconds`` (what may be
banked); work may start while the budget is not in debt, and what it took is spent. So over any
stretch of T seconds the work takes at most ``share * T + cap_seconds`` plus the piece that started
last (and any debt ``max_wait_seconds`` forgave), while one long piece of
work (a whole snapshot among small deltas) is paid from what the short ones left unused instead of
holding the next one back by its own length.

Three users:

* the worker's live hit rate (:mod:`stream.processor`): a sample ranks the whole catalogue (about
  3 ms at a million items), so a large catalogue is sampled less often instead of slowing ingest;
* the worker's checkpoints (``RECSTREAM_CHECKPOINT_SHARE``): as the model grows, checkpoints get
  longer and then rarer instead of taking ever more of the worker's time;
* an API process's model loads (``RECSTREAM_MODEL_LOAD_SHARE``): a load holds the GIL, so a large
  model serves every few versions instead of slowing requests.

``max_wait_seconds`` bounds the debt: after one very long piece of work (a write stalled by a
Redis failover) the next waits at most that long.

>>> now = [0.0]
>>> budget = ShareBudget(share=0.02, cap_seconds=0.05, clock=lambda: now[0])
>>> budget.affordable(), budget.spend(0.06), budget.affordable()
(True, None, False)
>>> round(budget.wait(), 3)  # 0.06 s spent from 0.05 s banked: 0.01 s to earn back at 0.02 s a second
0.5
>>> now[0] = 1.0  # 0.02 s accrued: the budget is out of debt
>>> budget.affordable()
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class ShareBudget:
    def __init__(
        self,
        share: float,
        cap_seconds: float,
        clock: Callable[[], float] = time.perf_counter,
        max_wait_seconds: float = math.inf,
    ) -> None:
        if not 0 < share <= 1 or cap_seconds <= 0 or max_wait_seconds <= 0:
            raise ValueError("share must be in (0, 1], cap_seconds and max_wait_seconds > 0")
        self.share = share
        self.cap_seconds = cap_seconds
        self.max_wait_seconds = max_wait_seconds
        self.clock = clock
        self.left = cap_seconds
        self._at = clock()
        #: seconds spent so far (for tests and metrics)
        self.spent = 0.0

    def _accrue(self, until: float) -> None:
        if until > self._at:
            self.left = min(self.cap_seconds, self.left + (until - self._at) * self.share)
            self._at = until

    def affordable(self) -> bool:
        """Whether work may start now: the budget is not in debt. (Ask between pieces of work, not during one:
        the cap would then clip what it earns while it runs.)"""
        self._accrue(self.clock())
        return self.left >= 0

    def wait(self) -> float:
        """Seconds until work may start (0: now)."""
        self._accrue(self.clock())
        return 0.0 if self.left >= 0 else -self.left / self.share

    def spend(self, seconds: float) -> None:
        """Record work of ``seconds`` that just ended. The budget kept accruing while it ran (from what was left
        when it began: the cap applies before it, not during it); its debt is kept to ``max_wait_seconds``."""
        now = self.clock()
        began = now - seconds
        self._accrue(began)
        self.left += (now - max(self._at, began)) * self.share - seconds  # uncapped: it only pays for the work
        self._at = max(self._at, now)
        self.left = max(self.left, -self.max_wait_seconds * self.share)
        self.spent += seconds

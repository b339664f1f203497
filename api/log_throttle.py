"""At most one log line a minute for what can happen on every request (a refusal, Redis unreachable)."""

from __future__ import annotations

import math
import time

#: The least time between two lines of one kind.
EVERY_SECONDS = 60.0


class LogThrottle:
    """Whether a line of one kind may be logged now: at most one every ``seconds``; counts those held back.

    >>> throttle = LogThrottle(seconds=3600)
    >>> throttle.ready(), throttle.ready(), throttle.ready()
    (0, None, None)
    >>> throttle._at -= 3600  # an hour later
    >>> throttle.ready()
    2
    """

    def __init__(self, seconds: float = EVERY_SECONDS) -> None:
        self.seconds = seconds
        self._at = -math.inf
        self._held_back = 0

    def ready(self) -> int | None:
        """None while the last line is younger than ``seconds`` (this one is held back); else how many were held
        back since that line (the caller logs now)."""
        now = time.monotonic()
        if now - self._at < self.seconds:
            self._held_back += 1
            return None
        held, self._at, self._held_back = self._held_back, now, 0
        return held

"""Event timestamps for tests: recent enough for the gate's time rules whatever day the tests run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: A fixed point one hour ago, taken when the test session starts.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def iso(seconds_after_base: float = 0.0) -> str:
    """ISO-8601 timestamp ``seconds_after_base`` after :data:`BASE` (keep it under an hour to stay in the past)."""
    return (BASE + timedelta(seconds=seconds_after_base)).isoformat()

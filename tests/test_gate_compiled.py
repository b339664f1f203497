"""The gate's compiled rule cores (learner/_kernels.c) against the Python methods they stand in for.

A rule made while the compiled loops are switched off (``kernels.numpy_only()``) runs its Python
methods; one made with them runs the C core. Both are driven over the same streams, as the gate
drives them (check; then observe, or observe_held with the hold), and after every event their
verdicts (the hold's text, which carries the counts) and their whole tables (every record's
floats, in eviction order) must be equal, bit for bit. The streams cross window boundaries, step
the clock back, repeat timestamps, evict by idleness and by the cap, and hold.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from itertools import pairwise

import pytest

from learner import kernels
from learner.gate.base import GateEvent
from learner.gate.behaviour import UserRateRule
from tests.conftest import skip_unless_ci

T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built (no C compiler at install time)")


def _stream(seed: int, n: int, users: int, steps: list[float], start: float = T0) -> list[tuple[GateEvent, float]]:
    """Events of ``users`` users at the clock ``now``, which moves by ``steps`` and now and then steps back; an
    event's ``ts`` is ``now`` or a little off it (late, early, or exactly on a window boundary)."""
    rnd = random.Random(seed)
    out, now = [], start
    for k in range(n):
        now += rnd.choice(steps)
        if rnd.random() < 0.04:
            now -= rnd.choice([3.0, 11.0, 40.0])  # the clock steps back
        ts = now + rnd.choice([0.0, 0.0, -2.5, 1.0, -30.0])
        if rnd.random() < 0.05:
            ts = math.floor(ts / 7.5) * 7.5  # on a window boundary
        kind = rnd.choice(["view", "view", "like", "share", "skip"])
        user = "u0" if rnd.random() < 0.3 else f"u{rnd.randrange(users)}"  # u0 sends in bursts
        out.append((GateEvent(f"e{k}", user, f"v{rnd.randrange(6)}", kind, ts), now))
    return out


def _bits(values: list[float]) -> bytes:
    return struct.pack(f"{len(values)}d", *values)


def _drive(rule: UserRateRule, events: list[tuple[GateEvent, float]]) -> list[tuple[str | None, list, tuple]]:
    found = []
    for event, now in events:
        hold = rule.check(event, now)
        if hold is None:
            rule.observe(event, now)
        else:
            rule.observe_held(event, now, hold)
        table = [(user, _bits(record)) for user, record in rule._users.items()]
        # the table's oldest entry as the rule remembers it, which decides when the table is scanned
        core = rule._core
        oldest = (rule._oldest, rule._oldest_seen) if core is None else (core.oldest, core.oldest_seen)
        found.append((None if hold is None else hold.detail, table, oldest))
    return found


def _both(make: Callable[[], UserRateRule], events: list[tuple[GateEvent, float]]) -> None:
    with kernels.numpy_only():
        reference = make()
    compiled = make()
    assert reference._core is None and compiled._core is not None
    want = _drive(reference, events)
    got = _drive(compiled, events)
    assert got == want
    # the stream makes the rule hold for both limits, and forget users
    assert sum(" events " in (hold or "") for hold, _, _ in want) >= 5
    assert sum("likes/shares" in (hold or "") for hold, _, _ in want) >= 5
    forgot = sum(bool({u for u, _ in before[1]} - {u for u, _ in after[1]}) for before, after in pairwise(want))
    assert forgot >= 5


@pytest.mark.parametrize(("seed", "start"), [(1, T0), (2, T0), (3, -700.0)])
def test_user_rate_core_is_the_python_rule(seed: int, start: float) -> None:
    """Every verdict and every record after every event: a few users, a window of 7.5 s, small limits, a cap of 6;
    the third stream starts before 1970 and crosses 0 (negative times divide into windows as in Python)."""
    events = _stream(seed, 3_000, users=9, steps=[0.0, 0.25, 1.0, 3.0, 9.0], start=start)
    assert events[0][0].ts < 0 < events[-1][0].ts or start > 0
    _both(lambda: UserRateRule(window_seconds=7.5, max_positives=3, max_events=6, max_users=6), events)


def test_user_rate_core_forgets_idle_users_as_the_python_rule() -> None:
    """Long pauses: every user goes idle beyond two windows, the table empties, users come back as new."""
    events = _stream(4, 2_000, users=4, steps=[0.0, 0.5, 2.0, 20.0, 60.0])
    _both(lambda: UserRateRule(window_seconds=7.5, max_positives=2, max_events=4, max_users=50), events)


def test_user_rate_core_reads_the_rule_s_settings() -> None:
    """The core is made from the rule's settings: other limits give other verdicts, as in Python."""
    events = _stream(5, 1_500, users=8, steps=[0.0, 0.25, 1.0])
    _both(lambda: UserRateRule(window_seconds=30.0, max_positives=10, max_events=25, max_users=6), events)
    positives_only = frozenset({"share"})
    _both(
        lambda: UserRateRule(
            window_seconds=2.0, max_positives=1, max_events=100, max_users=6, positive_types=positives_only
        ),
        events,
    )


def test_user_rate_core_refuses_what_is_not_an_event() -> None:
    rule = UserRateRule()
    with pytest.raises(TypeError, match="GateEvent"):
        rule.check(("e1", "u1"), T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rule.observe(GateEvent("e1", "u1", "v1", "view", "not a time"), T0)  # type: ignore[arg-type]
    assert len(rule) == 0

"""The gate's compiled rule cores (learner/_kernels.c: RateCore, SurgeCore) against the Python methods they stand in
for.

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
from learner.gate.behaviour import ItemSurgeRule, UserRateRule
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


def _step(rule: UserRateRule | ItemSurgeRule, event: GateEvent, now: float) -> str | None:
    """Check the event, then observe it, or observe the held attempt, as the gate does; the hold's text or None."""
    hold = rule.check(event, now)
    if hold is None:
        rule.observe(event, now)
        return None
    rule.observe_held(event, now, hold)
    return hold.detail


def _drive(rule: UserRateRule, events: list[tuple[GateEvent, float]]) -> list[tuple[str | None, list, tuple]]:
    found = []
    for event, now in events:
        hold = _step(rule, event, now)
        table = [(user, _bits(record)) for user, record in rule._users.items()]
        # the table's oldest entry as the rule remembers it, which decides when the table is scanned
        core = rule._core
        oldest = (rule._oldest, rule._oldest_seen) if core is None else (core.oldest, core.oldest_seen)
        found.append((hold, table, oldest))
    return found


def _both(make: Callable[[], UserRateRule], events: list[tuple[GateEvent, float]]) -> list[str | None]:
    """The compiled rule's run equals the Python rule's; returns the verdicts."""
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
    return [hold for hold, _, _ in want]


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
    wide = _both(lambda: UserRateRule(window_seconds=30.0, max_positives=10, max_events=25, max_users=6), events)
    positives_only = frozenset({"share"})
    narrow = _both(
        lambda: UserRateRule(
            window_seconds=2.0, max_positives=1, max_events=100, max_users=6, positive_types=positives_only
        ),
        events,
    )
    assert sum(a != b for a, b in zip(wide, narrow, strict=True)) > 100


@pytest.mark.parametrize(
    ("ts", "window"), [(1.0, 0.1), (0.3, 0.1), (-0.0, 7.5), (-0.3, 0.1), (17.22, 0.3), (-47.46, 0.1), (1e-300, 3.0)]
)
def test_user_rate_core_divides_time_into_windows_as_python(ts: float, window: float) -> None:
    """A record's window index is Python's ``ts // window``, not ``floor(ts / window)`` (1.0 // 0.1 is 9.0, while
    1.0 / 0.1 rounds to 10.0), rounded as Python rounds it (17.22 // 0.3 is 57.0, the division before rounding
    56.99999999999999), and keeps the sign of a zero."""
    with kernels.numpy_only():
        reference = UserRateRule(window_seconds=window)
    compiled = UserRateRule(window_seconds=window)
    for rule in (reference, compiled):
        for k in range(3):  # a new user's record, then a known one's
            rule.observe(GateEvent(f"e{k}", "u1", "v1", "view", ts), 0.0)
    assert _bits(compiled._users["u1"]) == _bits(reference._users["u1"])
    assert _bits([compiled._users["u1"][0]]) == _bits([ts // window])


def test_cores_take_keywords_refuse_bad_calls_and_any_collection_of_types() -> None:
    """The rule protocol's keywords (``check(event, now=...)``), clear errors for calls that do not fit, and
    positive types given as any collection (the rules keep a frozenset)."""
    rate = UserRateRule(window_seconds=60.0, max_positives=1, positive_types=("like",))  # type: ignore[arg-type]
    surge = ItemSurgeRule(new_user_events=2, min_new_positives=1.0, judged_types=["like"], positive_types=["like"])  # type: ignore[arg-type]
    like = GateEvent("e1", "u1", "v1", "like", T0)
    assert rate.check(like, now=T0) is None and surge.check(event=like, now=T0) is not None
    rate.observe(like, now=T0)
    assert rate.check(event=like, now=T0).reason == "user_rate"
    surge.observe_held(like, T0, hold=surge.check(like, T0))
    with pytest.raises(TypeError, match="missing argument 'now'"):
        rate.check(like)
    with pytest.raises(TypeError, match="unexpected or repeated argument 'when'"):
        surge.observe(like, when=T0)
    with pytest.raises(TypeError, match="at most 2"):
        surge.check(like, T0, None)
    for core in (type(rate._core).__new__(type(rate._core)), type(surge._core).__new__(type(surge._core))):
        with pytest.raises(RuntimeError, match="was not initialised"):
            core.check(like, T0)
        assert core.oldest is None
    # a core whose __init__ fails is left empty, never half made
    args = (
        surge._users,
        surge._items,
        surge.established,
        None,
        frozenset({"like"}),
        *[print] * 3,
        *[1.0] * 10,
        1,
        1,
        1,
    )
    with pytest.raises(TypeError, match="must be sets"):
        surge._core.__init__(*args[:4], ["like"], *args[5:])
    assert surge.check(like, T0) is not None  # a refused call leaves the core as it was
    with pytest.raises(AttributeError):
        surge._core.__init__(object(), *args[1:])
    with pytest.raises(RuntimeError, match="was not initialised"):
        surge.check(like, T0)


def test_user_rate_core_refuses_what_is_not_an_event() -> None:
    rule = UserRateRule()
    with pytest.raises(TypeError, match="GateEvent"):
        rule.check(("e1", "u1"), T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rule.observe(GateEvent("e1", "u1", "v1", "view", "not a time"), T0)  # type: ignore[arg-type]
    assert len(rule) == 0


def _surge_stream(seed: int, n: int) -> list[tuple[GateEvent, float]]:
    """Regular users on many items, farms of fresh accounts on one item now and then (likes, or views as
    camouflage), long pauses (users forgotten), the clock stepping back."""
    rnd = random.Random(seed)
    out, now, fresh = [], T0, 0
    for k in range(n):
        now += rnd.choice([0.0, 0.5, 2.0, 5.0]) + (90.0 if rnd.random() < 0.01 else 0.0)
        if rnd.random() < 0.03:
            now -= 20.0
        if rnd.random() < 0.25:  # a farm account: new, on the target item
            fresh += rnd.random() < 0.6
            user, item, kind = f"bot{fresh}", "target", rnd.choice(["like", "like", "share", "view"])
        else:
            user, item = f"u{rnd.randrange(12)}", f"v{rnd.randrange(9)}"
            kind = rnd.choice(["view", "view", "like", "share", "skip"])
        out.append((GateEvent(f"e{k}", user, item, kind, now), now))
    return out


def _drive_surge(rule: ItemSurgeRule, events: list[tuple[GateEvent, float]]) -> list[tuple]:
    found = []
    for event, now in events:
        hold = _step(rule, event, now)
        users = [(user, _bits(record)) for user, record in rule._users.items()]
        items = [(item, _bits(record)) for item, record in rule._items.items()]
        core = rule._core
        if core is None:
            state = (rule._oldest, rule._oldest_seen, rule._passed, list(rule._stream_new))
        else:
            state = (core.oldest, core.oldest_seen, core.passed, core.stream_new)
        share = _bits([rule.stream_new_share])
        bloom = rule.established
        established = (bytes(bloom._current), bytes(bloom._previous), bloom._inserted)
        found.append((hold, users, items, share, rule.clocks, state, established))
    return found


SURGE = {
    "new_user_events": 3,
    "min_new_positives": 2.0,
    "stream_memory": 150,
    "warmup_positives": 50,
    "user_idle_seconds": 60.0,
    "max_items": 4,
    "max_users": 5,
    "established_capacity": 20,
}


@pytest.mark.parametrize(
    "settings",
    [
        SURGE,
        {**SURGE, "item_memory": 7, "cooldown": 5, "max_new_concentration": 0.35, "min_lift": 0.1},
        {**SURGE, "judged_types": frozenset({"like", "share"}), "max_items": 0, "min_new_positives": 1.0},
        {**SURGE, "positive_types": frozenset({"share"}), "min_new_share": 0.5, "warmup_positives": 0},
        # the Bloom filters rotate often and users go idle: a returning established user is refreshed into them
        {**SURGE, "established_capacity": 4, "user_idle_seconds": 8.0},
    ],
    ids=["small", "short-memory", "likes-only-no-items", "shares-positive", "established-rotating"],
)
def test_item_surge_core_is_the_python_rule(settings: dict) -> None:
    """Every verdict, both tables, the stream's counters and the remembered oldest user after every event."""
    events = _surge_stream(7, 3_000)
    with kernels.numpy_only():
        reference = ItemSurgeRule(**settings)
    compiled = ItemSurgeRule(**settings)
    assert reference._core is None and compiled._core is not None
    assert compiled.check == compiled._core.check and compiled.observe_held == compiled._core.observe_held
    want = _drive_surge(reference, events)
    assert _drive_surge(compiled, events) == want
    reasons = [hold.split(":")[0].split(" (")[0] for hold, *_ in want if hold is not None]
    assert len(reasons) >= 20  # the stream makes the rule hold


def test_item_surge_core_holds_for_every_reason() -> None:
    """The streams above reach each kind of hold: cooling down, a skewed audience, concentration of interactions
    (of which an item never seen, with min_new_positives 1) and of likes/shares."""
    kinds: set[str] = set()
    for settings in (
        SURGE,
        {**SURGE, "max_new_concentration": 0.35, "min_lift": 0.1},
        {**SURGE, "max_items": 0, "min_new_positives": 1.0},
        {**SURGE, "max_new_concentration": 0.99, "min_lift": 0.05},
    ):
        rule = ItemSurgeRule(**settings)
        for hold, *_ in _drive_surge(rule, _surge_stream(7, 3_000)):
            if hold is None:
                continue
            if "cooling down" in hold:
                kinds.add("cooling")
            elif "for the stream" in hold:
                kinds.add("share")
            elif "new-user likes/shares" in hold:
                kinds.add("concentration of likes")
            elif "new-user interactions" in hold:
                kinds.add("concentration")
    assert kinds == {"cooling", "share", "concentration of likes", "concentration"}


def test_item_surge_core_holds_at_its_thresholds() -> None:
    """At the thresholds exactly (the lift over the stream's share equal to ``min_lift``, as many passed
    interactions as ``warmup_positives``), a skewed audience is held, in C as in Python."""
    settings = {"new_user_events": 5, "min_new_positives": 1.5, "warmup_positives": 1, "min_new_share": 0.5}
    settings |= {"min_lift": 0.0, "max_new_concentration": 2.0}  # share - stream share is 1.0 - 1.0; never
    for make in (lambda: ItemSurgeRule(**settings), lambda: _python(lambda: ItemSurgeRule(**settings))):
        rule = make()
        first, second = GateEvent("e1", "a", "x", "view", T0), GateEvent("e2", "b", "x", "view", T0)
        assert rule.check(first, T0) is None
        rule.observe(first, T0)
        assert rule.stream_new_share == 1.0 and rule.clocks == [1, 0]
        hold = rule.check(second, T0)
        assert hold is not None and hold.detail.endswith("against 100% for the stream"), hold


@pytest.mark.parametrize(
    "settings",
    [
        # every interaction of the item is a new user's (item_memory 1): new and share at their thresholds exactly
        {"item_memory": 1, "min_new_positives": 1.0, "min_new_share": 1.0, "min_lift": 0.0, "warmup_positives": 0},
        # the channels forget at once (stream_memory 1): the concentration at its threshold exactly
        {"stream_memory": 1, "min_new_positives": 1.0, "min_new_share": 9.0, "max_new_concentration": 1.0},
    ],
    ids=["share", "concentration"],
)
def test_item_surge_core_judges_equality_at_thresholds_as_python(settings: dict) -> None:
    found = []
    for make in (lambda: ItemSurgeRule(**settings), lambda: _python(lambda: ItemSurgeRule(**settings))):
        rule = make()
        first, second = GateEvent("e1", "a", "x", "view", T0), GateEvent("e2", "b", "x", "view", T0)
        rule.observe(first, T0)
        hold = rule.check(second, T0)
        found.append(None if hold is None else hold.detail)
    assert found[0] == found[1] and found[0] is not None, found


def _python(make: Callable[[], ItemSurgeRule]) -> ItemSurgeRule:
    with kernels.numpy_only():
        rule = make()
    assert rule._core is None
    return rule

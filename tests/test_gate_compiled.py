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
from typing import TypeVar

import numpy as np
import pytest

from learner import kernels
from learner.gate.base import (
    FUTURE_TIMESTAMP,
    SKIP_AFTER_FULL_WATCH,
    TOO_LATE,
    WATCH_EXCEEDS_DURATION,
    GateEvent,
    Hold,
    compiled_rows,
)
from learner.gate.behaviour import FEATURES, AnomalousBehaviourRule, ItemSurgeRule, UserRateRule
from learner.gate.hst_batch import FlatTrees
from learner.gate.plausibility import SkipAfterFullWatchRule, WatchExceedsDurationRule
from learner.gate.time_rules import FutureTimestampRule, LatenessRule
from tests.conftest import held_keys, skip_unless_ci

T0 = 1_700_000_000.0
Rule = TypeVar("Rule")


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
        table = [(number, _bits(record)) for number, record in rule._users.in_order()]
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
    """A user's window is Python's ``clock // window``, not ``floor(clock / window)`` (1.0 // 0.1 is 9.0, while
    1.0 / 0.1 rounds to 10.0), rounded as Python rounds it (17.22 // 0.3 is 57.0, the division before rounding
    56.99999999999999): three events at ``ts``, then one half a window later, are counted in the window Python's
    division puts each in (the next one: the three become the previous window's; the same one: four)."""
    with kernels.numpy_only():
        reference = UserRateRule(window_seconds=window, max_events=1)
    compiled = UserRateRule(window_seconds=window, max_events=1)
    later = ts + window / 2
    details = []  # of the check of the fourth event: 3 events counted, or 3 weighted by the previous window's overlap
    for rule in (reference, compiled):
        for k, at in enumerate([ts, ts, ts, later]):  # a new user's record, then a known one's
            event = GateEvent(f"e{k}", "u1", "v1", "view", at)
            if k == 3:
                details.append(rule.check(event, 0.0).detail)
            rule.observe(event, 0.0)
    assert _bits(compiled._users["u1"]) == _bits(reference._users["u1"]) and details[0] == details[1]
    first, then = ts // window, later // window
    assert then in (first, first + 1)
    # the record: clock, then previous and current events (and positives), then when last seen
    assert compiled._users["u1"][1:3] == ([3.0, 1.0] if then == first + 1 else [0.0, 4.0])


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
        2**30,
    )
    with pytest.raises(TypeError, match="must be sets"):
        surge._core.__init__(*args[:4], ["like"], *args[5:])
    for cooldown, span in ((1, 0), (1, 2**30 + 1), (2**30 + 1, 2**30)):  # (an item's clocks are int32: _CLOCK_SPAN)
        with pytest.raises(ValueError, match="span"):
            surge._core.__init__(*args[:-2], cooldown, span)
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
        users = [(number, _bits(record)) for number, record in rule._users.in_order()]
        items = [(number, _bits(record)) for number, record in rule._items.in_order()]
        core = rule._core
        if core is None:
            state = (rule._oldest, rule._oldest_seen, rule._passed, list(rule._stream_new))
        else:
            state = (core.oldest, core.oldest_seen, core.passed, core.stream_new)
        share = _bits([rule.stream_new_share])
        bloom = rule.established
        established = bloom.to_bytes()  # (both generations and the count)
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


def _surge_items_from_the_clocks(rule: ItemSurgeRule) -> list[tuple]:
    """Each item the rule holds, in order: its float32 counts, the cool-down left (0: none) and per channel its clock
    when last updated, read from the channels' bases."""
    (first, likes), (clock, _) = rule.bases, rule.clocks
    return [
        (number, _bits(record[:4]), max(first + record[4] - clock, 0), first + record[5], likes + record[6])
        for number, record in rule._items.in_order()
    ]


@pytest.mark.parametrize("span", [64, 2**30])
@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({**SURGE, "item_memory": 7, "cooldown": 5, "max_new_concentration": 0.35, "min_lift": 0.1}, "cooling down"),
        ({**SURGE, "max_new_concentration": 0.2, "min_lift": 0.5, "cooldown": 0}, "new-user interactions"),
    ],
    ids=["cooling", "concentration"],
)
def test_item_surge_moves_its_clocks_bases_without_changing_a_verdict(
    monkeypatch: pytest.MonkeyPatch, span: int, settings: dict, kind: str
) -> None:
    """An item's clocks are int32 from a base per channel, moved up to the channel's clock once it is a span past
    it (every item's clocks shifted down in one pass). With a span of 64 (each base moved 20 times or more over this
    stream; no item held is idle that long, so none is kept at a span behind) every verdict, count and clock read from
    the bases is that of the default span (never moved here), in C as in Python, record for record; holds of the
    kind that reads the clocks (a cool-down's end, or the channel's decayed attempts) come after the bases moved."""
    from learner.gate import behaviour

    events = _surge_stream(7, 3_000)

    def drive(rule: ItemSurgeRule) -> list[tuple]:
        found = []
        for event, now in events:
            found.append((_step(rule, event, now), _surge_items_from_the_clocks(rule)))
        return found

    want = drive(ItemSurgeRule(**settings))
    monkeypatch.setattr(behaviour, "_CLOCK_SPAN", span)
    rules = [_python(lambda: ItemSurgeRule(**settings)), ItemSurgeRule(**settings)]
    assert [rule._span for rule in rules] == [span, span] and rules[0]._core is None and rules[1]._core is not None
    assert drive(rules[0]) == want and drive(rules[1]) == want
    clocks = rules[0].clocks  # each base moved to the clock at each span: a whole number of spans
    assert rules[0].bases == rules[1].bases == [clock - clock % span for clock in clocks]
    assert clocks[1] > 20 * 64 and clocks == rules[1].clocks
    fresh = [_python(lambda: ItemSurgeRule(**settings)), ItemSurgeRule(**settings)]
    assert _drive_surge(fresh[1], events) == _drive_surge(fresh[0], events)  # the records themselves, bit for bit
    assert any(hold is not None and kind in hold for hold, _ in want[64:])


def test_item_surge_keeps_a_long_idle_items_clocks_a_span_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """An item idle for more than a span of interactions: once a base moves past it, its clocks are kept a span
    behind the new base (int32 never overflows), and its attempts then decay as a gap of a span or more decays them;
    with a span of 2**30 that is to 0.0 for any stream memory the rule accepts (at most 1,000,000), in float64."""
    from learner.gate import behaviour

    monkeypatch.setattr(behaviour, "_CLOCK_SPAN", 16)
    for make in (lambda: ItemSurgeRule(**SURGE), lambda: _python(lambda: ItemSurgeRule(**SURGE))):
        rule = make()
        _step(rule, GateEvent("e0", "a", "idle", "like", T0), T0)
        for k in range(100):  # another item's interactions, likes: both channels' bases move 6 times
            _step(rule, GateEvent(f"e{k + 1}", f"u{k % 3}", "busy", "like", T0 + k), T0 + k)
        assert rule.bases == [96, 96] and rule.clocks == [101, 101]
        idle = rule._items["idle"]
        assert idle[4:] == [-16.0, -16.0, -16.0]  # a span before the bases: no cool-down, both clocks
    assert (1 - 1 / 1_000_000) ** 2**30 == 0.0
    with pytest.raises(ValueError, match="stream_memory"):
        ItemSurgeRule(stream_memory=1_000_001)
    for cooldown in (2**30 + 1, -1, 2.5):
        with pytest.raises(ValueError, match="cooldown"):
            ItemSurgeRule(cooldown=cooldown)  # type: ignore[arg-type]


def _python(make: Callable[[], Rule]) -> Rule:
    with kernels.numpy_only():
        rule = make()
    assert rule._core is None
    return rule


# -- the anomaly rule (AnomalyCore) ------------------------------------------------------------------------------

#: (watch_seconds, item_duration_seconds): known, unknown, capped at twice the duration, a zero or unknown duration
#: (no watch ratio), whole numbers (Python's int division), a mix, and a watch that is not a number
_WATCHES = [
    (12.0, 30.0),
    (None, 30.0),
    (80.0, 30.0),
    (5.0, 0.0),
    (3.0, None),
    (12, 30),
    (7, 30.0),
    (math.nan, 30.0),
    (0.0, 45.5),
]


def _anomaly_stream(seed: int, n: int) -> list[tuple[GateEvent, float]]:
    """A dozen users at a human pace, one heavy user (a history past the features' cap), bots in bursts (a rate past
    its cap), users seen once, pauses of minutes and of over an hour (gaps past their cap), the clock stepping back
    and events stamped before their user's clock."""
    rnd = random.Random(seed)
    out, now = [], T0
    for k in range(n):
        now += rnd.choice([0.0, 0.2, 1.0, 5.0, 30.0]) + (4_000.0 if rnd.random() < 0.005 else 0.0)
        if rnd.random() < 0.03:
            now -= rnd.choice([5.0, 60.0])
        roll = rnd.random()
        if roll < 0.05:
            user = f"once{k}"
        elif roll < 0.15:
            user = f"bot{rnd.randrange(2)}"
        elif roll < 0.5:
            user = "heavy"
        else:
            user = f"u{rnd.randrange(12)}"
        ts = now - rnd.choice([0.0, 0.0, 0.0, 2.0, 600.0])
        watch, duration = rnd.choice(_WATCHES)
        kind = rnd.choice(["view", "view", "like", "share", "skip"])
        out.append((GateEvent(f"e{k}", user, f"v{rnd.randrange(9)}", kind, ts, watch, duration), now))
    return out


ANOMALY = {
    "quantile": 0.9,
    "warmup_events": 100,
    "n_trees": 3,
    "height": 5,
    "window_size": 20,
    "learn_every": 1,
    "idle_seconds": 400.0,
    "max_users": 8,
    "rate_cap": 5.0,
}


#: Users remembered through the pauses: the heavy user's history reaches its cap
LONG_MEMORY = {
    **ANOMALY,
    "positive_types": frozenset({"share"}),
    "rate_cap": 60.0,
    "idle_seconds": 5_000.0,
    "max_users": 100,
    "n_trees": 1,
}


def _memo(rule: AnomalousBehaviourRule) -> tuple | None:
    """The rule's last check as bits: (event id, features, score, the user's next record), or None."""
    memo = rule._memo
    if memo is None:
        return None
    event, x, score, nxt = memo
    return event.event_id, _bits(list(x)), _bits([score]), _bits(list(nxt))


def _drive_anomaly(rule: AnomalousBehaviourRule, events: list[tuple[GateEvent, float]], judge: bool) -> list[tuple]:
    """Each event as the gate gives it to its last rule (``judge``), or as it gives it to any rule: check, then
    observe or observe_held; now and then a check with neither after it (a later rule held the event), an
    observe without a check first, or an observe_held of another rule's hold (a user's first event included).
    After every event: the verdict, the last check, the table, the remembered oldest user, the counters and the
    quantile; at the end, the trees' masses and the points of their window."""
    rnd = random.Random(3)
    found = []
    for event, now in events:
        memo = None
        if judge:
            hold = rule.judge(event, now)
        elif rnd.random() < 0.03:
            hold = None
            rule.observe(event, now)
        else:
            hold = rule.check(event, now)
            memo = _memo(rule)
            roll = rnd.random()
            if roll < 0.05:
                pass  # a later rule held it: this rule neither observes it nor its hold
            elif roll < 0.08:
                rule.observe_held(event, now, hold or Hold("other", "held by another rule"))
            elif hold is None:
                rule.observe(event, now)
            else:
                rule.observe_held(event, now, hold)
        table = [(number, _bits(record)) for number, record in rule._users.in_order()]
        core = rule._core
        oldest = (rule._oldest, rule._oldest_seen) if core is None else (core.oldest, core.oldest_seen)
        threshold = rule.threshold.get()
        counters = (rule.passed, rule.learned, rule._scored, None if threshold is None else _bits([threshold]))
        found.append((None if hold is None else hold.detail, memo, table, oldest, counters))
    found.append(_learned_trees(rule))
    return found


def _learned_trees(rule: AnomalousBehaviourRule) -> tuple[list, int, bool]:
    """The trees as learned (breadth first): each node's (l_mass, r_mass), the window's counter, whether a window has
    ended (River scores 0 until one has). The Python rule
    adds the points of a window to River's l_mass and counter when the window ends (``_to_learn`` until then): they
    are counted here; the core has none."""
    trees = rule.trees
    flat = FlatTrees(trees, FEATURES)
    pending = np.array(rule._to_learn, dtype=np.float64).reshape(-1, len(FEATURES))
    visits = flat.visits(pending).tolist()
    masses = [
        [(node.l_mass + seen, node.r_mass) for node, seen in zip(nodes, counts, strict=True)]
        for nodes, counts in zip(flat.nodes, visits, strict=True)
    ]
    return masses, trees.counter + len(pending), trees._first_window


def _both_anomaly(settings: dict, events: list[tuple[GateEvent, float]], judge: bool) -> list[tuple]:
    """The compiled rule's run equals the Python rule's; returns the Python rule's."""
    with kernels.numpy_only():
        reference = AnomalousBehaviourRule(**settings)
    compiled = AnomalousBehaviourRule(**settings)
    assert reference._core is None and compiled._core is not None
    want = _drive_anomaly(reference, events, judge)
    got = _drive_anomaly(compiled, events, judge)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"event {k}: {events[k][0] if k < len(events) else 'end'}"
    return want


@pytest.mark.parametrize("judge", [False, True], ids=["check-observe", "judge"])
@pytest.mark.parametrize(
    "settings",
    [
        ANOMALY,
        {**ANOMALY, "learn_every": 3, "height": 8, "window_size": 7, "quantile": 0.7},
        LONG_MEMORY,
    ],
    ids=["small", "learn-every-3", "long-memory-shares-positive"],
)
def test_anomaly_core_is_the_python_rule(settings: dict, judge: bool) -> None:
    """Every verdict, every check's features, score and next record, the table, the counters and the quantile after
    every event, and the trees at the end, bit for bit. Users are forgotten by idleness (the pauses, but for the
    long memory) and by the cap (the users seen once)."""
    events = _anomaly_stream(8, 4_000)
    want = _both_anomaly(settings, events, judge)
    holds = [hold for hold, *_ in want[:-1] if hold is not None]
    assert len(holds) >= 50 and all(hold.startswith("behaviour anomaly score") for hold in holds)
    forgot = sum(bool({u for u, _ in a[2]} - {u for u, _ in b[2]}) for a, b in pairwise(want[:-1]))
    assert forgot >= 20  # users forgotten, by idleness and by the cap
    assert want[-2][4][1] // settings["window_size"] >= 10  # the trees went through many windows


def test_anomaly_core_stream_reaches_every_feature_s_cap() -> None:
    """The stream above caps the gap, the rate and the history, and has users with no watch ratio, ones whose
    ratio is capped, and a ratio that is not a number (so the comparisons above cover each branch)."""
    with kernels.numpy_only():
        rule = AnomalousBehaviourRule(**{**LONG_MEMORY, "rate_cap": 5.0})
    checks = [memo for _, memo, *_ in _drive_anomaly(rule, _anomaly_stream(8, 4_000), judge=False)[:-1] if memo]
    features = [struct.unpack("6d", x) for _, x, _, _ in checks]
    assert any(x[0] == 1.0 for x in features) and any(0.0 < x[0] < 1.0 for x in features)  # gap
    assert any(x[1] == 1.0 for x in features) and any(0.0 < x[1] < 1.0 for x in features)  # rate
    assert any(x[5] == 1.0 for x in features) and any(0.0 < x[5] < 1.0 for x in features)  # history
    assert any(x[4] == 0.5 for x in features) and any(x[4] == 1.0 for x in features)  # watch: unknown, capped
    assert any(math.isnan(x[4]) for x in features)


def test_anomaly_core_holds_on_the_quantile_as_python() -> None:
    """A score is held only when it is above the quantile, not at it. Two users act in lockstep (the same times
    and watches), so the second's features and score are the first's; right after the trees' first window, the
    quantile holds that one score, and the second user's event is scored exactly at it: passed, in C as in Python."""
    rnd = random.Random(1)
    events, ts = [], T0
    for _ in range(30):
        ts += rnd.choice([1.0, 10.0, 100.0])
        watch = rnd.choice([None, 5.0, 20.0])
        events += [GateEvent(f"e{len(events)}", user, "v", "view", ts, watch, 30.0) for user in ("u0", "u1")]
    settings = {**ANOMALY, "warmup_events": 0}
    found = []
    for rule in (_python(lambda: AnomalousBehaviourRule(**settings)), AnomalousBehaviourRule(**settings)):
        checks = []
        for event in events:
            before = rule.threshold.get()
            hold = rule.check(event, event.ts)
            checks.append((hold, rule._memo[2], before))
            if hold is None:
                rule.observe(event, event.ts)
            else:
                rule.observe_held(event, event.ts, hold)
        found.append(checks)
    assert found[0] == found[1]
    hold, score, quantile = found[1][21]  # the first window ends with the 20th event
    assert score == quantile and score > 0 and hold is None


def test_anomaly_core_takes_keywords_and_refuses_bad_calls() -> None:
    """The rule protocol's keywords, clear errors for calls and events that do not fit (the table left as it was), a
    core never initialised, or whose re-init failed, raises instead of crashing."""
    rule = AnomalousBehaviourRule(**{**ANOMALY, "positive_types": ["like"]})  # type: ignore[arg-type]
    like = GateEvent("e1", "u1", "v1", "like", T0)
    assert rule.check(event=like, now=T0) is None
    rule.observe(like, now=T0)
    assert rule.judge(GateEvent("e2", "u1", "v1", "like", T0 + 1), now=T0 + 1) is None
    rule.observe_held(GateEvent("e3", "u1", "v1", "view", T0 + 2), T0 + 2, hold=None)
    assert rule.passed == 2 and rule._users["u1"][4] == 3.0  # events: the last of the float32 fields
    with pytest.raises(TypeError, match="missing argument 'now'"):
        rule.judge(like)
    with pytest.raises(TypeError, match="unexpected or repeated argument 'when'"):
        rule.observe(like, when=T0)
    with pytest.raises(TypeError, match="GateEvent"):
        rule.check(("e4", "u1", "v1", "like", T0), T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rule.judge(GateEvent("e5", "u2", "v1", "like", "not a time"), T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rule.judge(GateEvent("e6", "u2", "v1", "like", T0, "5", 30.0), T0)  # type: ignore[arg-type]
    assert held_keys(rule._users, ["u1", "u2"]) == ["u1"] and rule.passed == 2
    core = rule._core
    assert rule.check == core.check and rule.judge == core.judge and rule.observe_held == core.observe_held
    with pytest.raises(RuntimeError, match="was not initialised"):
        type(core).__new__(type(core)).judge(like, T0)
    args = [rule._users, frozenset({"like"}), rule.threshold, rule._estimator, print, print, print, 1, 1, 1, 1, 1]
    args += [1.0, 1, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="must be a set"):
        core.__init__(*args[:1], ["like"], *args[2:])
    assert rule.judge(GateEvent("e7", "u1", "v1", "view", T0 + 3), T0 + 3) is None  # a refused call changed nothing
    with pytest.raises(AttributeError):
        core.__init__(object(), *args[1:])
    with pytest.raises(RuntimeError, match="was not initialised"):
        rule.check(like, T0)


def test_anomaly_core_sends_a_value_on_a_split_right_as_river_does() -> None:
    """River goes left when a point's value is below a node's split, right otherwise (at it included): a core given
    one tree whose root splits the watch ratio at 0.5, the ratio of a user whose watches are unknown, sends that
    user's event right."""
    # the first event (watch ratio 0.5) is learned, and ends a window of one point: masses root 1, left 0, right 1;
    # a walk adds mass << depth at each node, so a leaf's score sum is 1 + 0 on the left, 1 + 2 on the right
    leaf = {"left": 1, "right": 3}
    max_score = 40.0

    def trees() -> tuple[bytes, bytes, float]:  # one tree of height 1: the root, its two leaves
        return struct.pack("q", 4), struct.pack("d", 0.5), max_score  # FEATURES[4]: watch_ratio, split at 0.5

    rule = AnomalousBehaviourRule()
    settings = [1_000, 1, 1, 1, 1, 1e9, 10, 60.0, 1.0, 1.0, 60.0]  # warmup, learn every event, window of 1, ...
    core = type(rule._core)(
        rule._users, frozenset({"like"}), rule.threshold, rule._estimator, len, trees, print, *settings
    )
    core.observe(GateEvent("e1", "u1", "v1", "view", T0), T0)  # learned: a window of the tree, so events are scored
    for k, (watch, side) in enumerate([(None, "right"), (14.0, "left"), (16.0, "right")]):
        core.check(
            GateEvent(f"e{k + 2}", f"new{k}", "v1", "view", T0, watch, 15.0), T0
        )  # watch ratio: 0.5, below, above
        assert core.memo[2] == 1 - leaf[side] / max_score, (watch, side)


def test_anomaly_core_refuses_trees_it_cannot_walk() -> None:
    """The splits the core takes when River has drawn them (at the first point learned) must be one int64 feature and
    one float64 split per inner node, features among the rule's: otherwise the learn that took them raises, and the
    core holds no trees (``masses`` None)."""
    rule = AnomalousBehaviourRule()
    settings = [1_000, 1, 1, 1, 1, 1e9, 10, 60.0, 1.0, 1.0, 60.0]  # one tree of height 1, learning every event
    cases = [
        ((struct.pack("q", 4), struct.pack("d", 0.5), 40.0, 0), TypeError, "must return 3 values"),
        ((struct.pack("q", 4), struct.pack("2d", 0.5, 0.5), 40.0), ValueError, "wrong size"),
        ((struct.pack("q", 6), struct.pack("d", 0.5), 40.0), ValueError, "unknown feature"),
        ((struct.pack("q", 4), struct.pack("d", 0.5), "40"), TypeError, "must be real number"),
    ]
    for given, error, message in cases:
        core = type(rule._core)(
            rule._users, frozenset({"like"}), rule.threshold, rule._estimator, len, lambda g=given: g, print, *settings
        )
        with pytest.raises(error, match=message):
            core.observe(GateEvent("e1", "u1", "v1", "view", T0), T0)
        assert core.masses is None
    splits = cases[0][0][:3]
    core = type(rule._core)(
        rule._users, frozenset({"like"}), rule.threshold, rule._estimator, len, lambda: splits, print, *settings
    )
    core.observe(GateEvent("e1", "u1", "v1", "view", T0), T0)
    assert core.masses == (0, bytes(24), struct.pack("3q", 1, 0, 1))  # the window of one point ended: r_mass


def test_anomaly_rule_takes_the_same_settings_on_both_paths() -> None:
    """Counts given as floats and types as any collection work on both paths, impossible settings are refused on
    both, and a check that fails leaves the last one for its observe, as in Python."""
    for settings in ({"warmup_events": 1e4, "max_users": 1e6, "learn_every": 2.0}, {"positive_types": ("share",)}):
        rules = (_python(lambda s=settings: AnomalousBehaviourRule(**s)), AnomalousBehaviourRule(**settings))
        assert rules[0].positive_types == rules[1].positive_types and rules[1]._core is not None
    for bad in ({"rate_cap": 0.0}, {"height": 31}, {"height": 0}, {"n_trees": 0}, {"window_size": 0}):
        for make in (
            lambda b=bad: _python(lambda: AnomalousBehaviourRule(**b)),
            lambda b=bad: AnomalousBehaviourRule(**b),
        ):
            with pytest.raises(ValueError):
                make()
    found = []
    settings = {**ANOMALY, "idle_seconds": 4e6}
    for rule in (_python(lambda: AnomalousBehaviourRule(**settings)), AnomalousBehaviourRule(**settings)):
        first, second = GateEvent("e1", "u", "v", "view", T0), GateEvent("e2", "u", "v", "view", T0 + 10)
        rule.check(first, T0)
        rule.observe(first, T0)
        rule.check(second, T0 + 10)
        with pytest.raises(TypeError):
            rule.check(GateEvent("e3", "u", "v", "view", "not a time"), T0 + 11)  # type: ignore[arg-type]
        rule.observe(second, T0 + 500)  # the check of e2 is still the last: the user last seen at T0 + 10
        found.append((rule._users["u"], rule._users.seen("u")))
    assert found[0] == found[1] and found[1][1] == T0 + 10
    with pytest.raises(TypeError, match="missing argument 'hold'"):
        AnomalousBehaviourRule().observe_held(GateEvent("e1", "u", "v", "view", T0), T0)  # type: ignore[call-arg]


def test_a_users_table_keeps_an_idle_user_at_most_a_stamps_span() -> None:
    """A seen stamp is within a span (2**30 ticks of 1/256 s, ~48.5 days) of its base, and one kept a span before a
    moved base must read as past any horizon: the rules refuse an idle horizon of more than a span less a tick. At the
    longest taken, a user idle that long is forgotten when the base moves (helper-75's review: at a whole span, the
    stamp kept a span before the base read as exactly the horizon, and the user stayed)."""
    from learner.gate.behaviour import MAX_IDLE_SECONDS

    assert MAX_IDLE_SECONDS == 2**30 / 256 - 1
    for make in (
        lambda: UserRateRule(window_seconds=MAX_IDLE_SECONDS / 2 + 0.5),
        lambda: ItemSurgeRule(user_idle_seconds=MAX_IDLE_SECONDS + 1),
        lambda: AnomalousBehaviourRule(idle_seconds=MAX_IDLE_SECONDS + 1),
    ):
        with pytest.raises(ValueError, match="idle limit"):
            make()
    later = MAX_IDLE_SECONDS + 1_000.0  # ticks past the base (0: the first stamp's) by more than a span
    for make in (
        lambda: ItemSurgeRule(user_idle_seconds=MAX_IDLE_SECONDS),
        lambda: _python(lambda: ItemSurgeRule(user_idle_seconds=MAX_IDLE_SECONDS)),
    ):
        rule = make()
        _step(rule, GateEvent("e0", "old", "v", "view", 0.0), 0.0)
        _step(rule, GateEvent("e1", "new", "v", "view", later), later)
        assert "old" not in rule._users and rule._users.seen("new") == later
        assert rule._users.index.seen_base == later * 256


def test_preparing_a_batch_moves_no_seen_base() -> None:
    """The Python anomaly rule's prepare (the compiled core's does nothing) computes a batch's next states without
    stamping now: a batch none of whose events then reach the rule leaves its table as the compiled rule's
    (helper-75's review: it moved the base, and a clock stepping back later kept users the core forgot)."""
    rule = _python(lambda: AnomalousBehaviourRule(**ANOMALY))
    for k in range(30):  # the trees' first window: prepare works from then on
        event = GateEvent(f"e{k}", f"u{k % 4}", "v", "view", T0 + k)
        rule.check(event, T0 + k)
        rule.observe(event, T0 + k)
    base = rule._users.index.seen_base
    later = T0 + 60 * 86_400.0  # more than a span of stamps past the base
    rule.prepare([GateEvent(f"x{k}", f"u{k % 4}", "v", "view", later) for k in range(5)], later)
    assert rule._ahead_rows and rule._users.index.seen_base == base


def test_a_time_that_cannot_be_stamped_changes_no_table() -> None:
    """A now that is not a finite time (within 1e15 s) is refused before a rule changes a table: no record added, no
    count taken, in C as in Python (helper-75's review: the record was added and counted first)."""
    makes = [
        lambda: UserRateRule(),
        lambda: ItemSurgeRule(**SURGE),
        lambda: AnomalousBehaviourRule(**ANOMALY),
    ]
    for make in [*makes, *(lambda m=m: _python(m) for m in makes)]:
        rule = make()
        for now in (math.nan, math.inf, -2e15):
            with pytest.raises(ValueError, match="finite"):
                rule.observe(GateEvent("e1", "u1", "v1", "like", T0), now)
        assert len(rule._users) == 0 and len(getattr(rule, "_items", ())) == 0, type(rule).__name__


def test_the_users_tables_move_their_seen_stamps_base_as_the_python_rules_do() -> None:
    """A user's record keeps when they were last seen as an int32 stamp, ticks of 1/256 s from a base the table's
    index keeps, moved up to now once now is ~48.5 days past it. Streams that jump 60 days half-way (every user then
    idle, the base moved, every stamp shifted down) give the same verdicts, records and remembered oldest users in C
    as in Python, for the three rules."""
    jump = 60 * 86_400.0

    def jumping(events: list[tuple[GateEvent, float]]) -> list[tuple[GateEvent, float]]:
        half = len(events) // 2
        later = [(event._replace(ts=event.ts + jump), now + jump) for event, now in events[half:]]
        return events[:half] + later

    rate = jumping(_stream(6, 2_000, users=6, steps=[0.0, 0.5, 2.0]))
    _both(lambda: UserRateRule(window_seconds=7.5, max_positives=3, max_events=6, max_users=6), rate)
    surge = jumping(_surge_stream(9, 2_000))
    with kernels.numpy_only():
        reference = ItemSurgeRule(**SURGE)
    compiled = ItemSurgeRule(**SURGE)
    assert _drive_surge(compiled, surge) == _drive_surge(reference, surge)
    bases = [rule._users.index.seen_base for rule in (reference, compiled)]  # moved with the jump
    assert bases[0] == bases[1] and bases[0] / 256 >= T0 + jump
    _both_anomaly({**ANOMALY, "idle_seconds": 3_600.0}, jumping(_anomaly_stream(8, 2_000)), judge=True)


@pytest.mark.parametrize(
    ("rule_name", "exported"),
    [(name, "data") for name in ("user_rate", "anomalous_behaviour")]  # (float64 fields)
    + [(name, "narrow") for name in ("user_rate", "item_surge users", "item_surge items", "anomalous_behaviour")]
    + [(name, "whole") for name in ("user_rate", "item_surge users", "item_surge items")],  # (int32: written last)
)
def test_a_core_that_cannot_write_a_new_record_changes_nothing(rule_name: str, exported: str) -> None:
    """The compiled cores add a new id's record themselves (the index's insert, then the fields appended to the
    table's arrays). If an array cannot grow (its buffer exported: BufferError) the event fails and leaves the table
    as it was: no number for the id, the other arrays not grown either; once the buffer is released the same event
    adds the record, as the Python rule (through Records.add) does."""
    make, table = {
        "user_rate": (lambda: UserRateRule(), "_users"),
        "item_surge users": (lambda: ItemSurgeRule(), "_users"),
        "item_surge items": (lambda: ItemSurgeRule(), "_items"),
        "anomalous_behaviour": (lambda: AnomalousBehaviourRule(**ANOMALY), "_users"),
    }[rule_name]
    first, new = GateEvent("e1", "u1", "v1", "like", T0), GateEvent("e2", "u2", "v2", "like", T0 + 1)
    rules = [_python(make), make()]
    for rule in rules:
        _step(rule, first, T0)
    records = getattr(rules[1], table)
    assert {"data": records.width, "narrow": records.narrow_width, "whole": records.ints}[exported] > 0
    lengths = (len(records), len(records.data), len(records.narrow), len(records.whole))
    view = memoryview(getattr(records, exported))
    with pytest.raises(BufferError):
        _step(rules[1], new, T0 + 1)
    assert (len(records), len(records.data), len(records.narrow), len(records.whole)) == lengths
    assert "u2" not in records and "v2" not in records
    view.release()
    for rule in rules:
        _step(rule, new, T0 + 1)
    tables = [getattr(rule, table) for rule in rules]
    assert [_bits(r) for _, r in tables[1].in_order()] == [_bits(r) for _, r in tables[0].in_order()]
    assert len(tables[1]) == lengths[0] + 1


# -- the stateless rules (kernels.gate_rows) ----------------------------------------------------------------------

#: Times and watch/duration values at and around the rules' limits, and the floats that compare oddly
_EDGES = [0.0, -0.0, 1.0, 29.999999999999996, 30.0, 89.99999999999999, 90.0, 90.00000000000001, 150.0, 1e308]
_ODD = [math.inf, -math.inf, math.nan, None]


def _stateless_stream(n: int) -> list[GateEvent]:
    rnd = random.Random(11)
    offsets = [-1e9, -3600.0000000005, -3600.0, -3599.9999999995, 0.0, 300.0, 300.0000000005, 299.9999999995]
    values = [*_EDGES, *_ODD]
    return [
        GateEvent(
            f"e{k}",
            "u1",
            "v1",
            rnd.choice(["view", "skip", "like", "skip "]),
            T0 + rnd.choice([*offsets, math.nan, math.inf]),
            rnd.choice(values),
            rnd.choice(values),
        )
        for k in range(n)
    ]


@pytest.mark.parametrize(
    "rule",
    [
        FutureTimestampRule(300.0),
        LatenessRule(3_600.0),
        WatchExceedsDurationRule(3.0, 60.0),
        WatchExceedsDurationRule(1.0, 0.0),
        SkipAfterFullWatchRule(1.0),
        SkipAfterFullWatchRule(0.5),
    ],
    ids=["future", "late", "watch", "watch-tight", "skip", "skip-half"],
)
def test_stateless_rules_hold_the_same_rows_compiled(rule: object) -> None:
    """The compiled loop (``kernels.gate_rows``) holds the rows each stateless rule's Python holds, with the same
    holds, at and around its limits, infinities, NaNs and missing values included; a chunk with a value that is
    not a float (an int, compared exactly in Python) is left to Python."""
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built (no C compiler at install time)")
    events = _stateless_stream(4_000)
    with kernels.numpy_only():
        want = rule.holds(events, T0)  # type: ignore[attr-defined]
    code, settings = {  # the rule's number in kernels.gate_rows, and the settings it compares with
        FutureTimestampRule: lambda r: (FUTURE_TIMESTAMP, (r.max_skew_seconds, 0.0)),
        LatenessRule: lambda r: (TOO_LATE, (r.max_lateness_seconds, 0.0)),
        WatchExceedsDurationRule: lambda r: (WATCH_EXCEEDS_DURATION, (r.factor, r.slack_seconds)),
        SkipAfterFullWatchRule: lambda r: (SKIP_AFTER_FULL_WATCH, (r.full_fraction, 0.0)),
    }[type(rule)](rule)
    rows = compiled_rows(events, code, T0, *settings)
    assert rows is not None and rows == sorted(want)  # the compiled loop judged the chunk, the same rows
    assert rule.holds(events, T0) == want  # type: ignore[attr-defined]
    assert 0 < len(want) < len(events)
    for odd in (GateEvent("x", "u1", "v1", "skip", 10**6, 10**4, 10), ("x", "u1", "v1", "skip", 1.0)):
        mixed = [*events[:50], odd]
        assert compiled_rows(mixed, code, T0, *settings) is None  # type: ignore[arg-type]
        with kernels.numpy_only():
            python = _holds_or_error(rule, mixed)
        assert _holds_or_error(rule, mixed) == python
    assert compiled_rows(events, code, int(T0), *settings) is None  # an int now: Python's exact comparisons


def _holds_or_error(rule: object, events: list) -> object:
    try:
        return rule.holds(events, T0)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, IndexError) as exc:
        return type(exc)

"""The quality gate's rules on plain data, and the default gate on a real, clean stream (MovieLens).

Each rule is shown holding what it is for and passing what a person does; the MovieLens replay
checks the defaults hold at most 1% of a clean stream, and that a bot farm mixed into it (new
users, 20% of all events, liking one item) is held.
"""

from __future__ import annotations

import csv
import itertools
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from river import anomaly

from bench.common import MOVIELENS_RATINGS
from learner.gate.base import GateEvent, GateRule, Hold
from learner.gate.behaviour import (
    FEATURES,
    AnomalousBehaviourRule,
    EstablishedUsers,
    ItemSurgeRule,
    UserRateRule,
    _rate_hold,
)
from learner.gate.gate import GateConfig, QualityGate, default_gate, default_stream_clock
from learner.gate.hst_batch import FlatTrees
from learner.gate.plausibility import LikeWithoutViewRule, SkipAfterFullWatchRule, WatchExceedsDurationRule
from learner.gate.time_rules import FutureTimestampRule, LatenessRule, StreamClock
from tests.conftest import held_keys, loops
from tests.gate_recorder import Recorder

MOVIELENS = MOVIELENS_RATINGS  # in the repository: these tests never skip
T0 = 1_700_000_000.0
#: Every user and item the forgetting tests use (their tables are read back by record number: tests.conftest.held_keys).
USERS, ITEMS = "abcde", ["i1", "i2", "i3"]


_ids = itertools.count()


def ev(
    user: str, item: str, kind: str, ts: float, watch: float | None = None, duration: float | None = None
) -> GateEvent:
    return GateEvent(f"e{next(_ids)}", user, item, kind, ts, watch, duration)


def run(rule: GateRule, events: list[GateEvent]) -> list[Hold | None]:
    """Drive one rule the way the gate does: check, then observe what passed and let it count its holds."""
    results = []
    for e in events:
        hold = rule.check(e, e.ts)
        if hold is None:
            rule.observe(e, e.ts)
        elif hasattr(rule, "observe_held"):
            rule.observe_held(e, e.ts, hold)
        results.append(hold)
    return results


# -- time ----------------------------------------------------------------------------------


def test_future_timestamp_beyond_skew_is_held_within_skew_passes() -> None:
    rule = FutureTimestampRule(max_skew_seconds=300)
    assert rule.check(ev("u", "v", "like", T0 + 299), T0) is None
    hold = rule.check(ev("u", "v", "like", T0 + 301), T0)
    assert hold is not None and hold.reason == "future_timestamp"
    assert rule.check(ev("u", "v", "like", T0 - 10 * 86_400), T0) is None  # old is not this rule's business


def test_too_late_beyond_lateness_bound() -> None:
    rule = LatenessRule(max_lateness_seconds=7 * 86_400)
    assert rule.check(ev("u", "v", "like", T0 - 6 * 86_400), T0) is None
    hold = rule.check(ev("u", "v", "like", T0 - 8 * 86_400), T0)
    assert hold is not None and hold.reason == "too_late"
    assert rule.check(ev("u", "v", "like", T0 + 10_000), T0) is None


def test_stream_clock_replay_is_not_moved_by_a_held_future_event() -> None:
    """A replay judges each event by the stream's own time, and a forged far-future event is caught, not followed."""
    gate = QualityGate([FutureTimestampRule(300), LatenessRule(7 * 86_400)])
    clock = StreamClock(max_gap_seconds=30 * 86_400)
    years_ago = T0 - 5 * 365 * 86_400
    stream = [ev("u1", "v1", "view", years_ago + 3_600 * k) for k in range(5)]
    stream.insert(2, ev("u9", "v9", "like", years_ago + 400 * 86_400))  # stamped a year ahead of the replay
    stream.append(ev("u1", "v2", "view", years_ago + 10 * 86_400))  # a quiet week and a half: a natural gap
    reasons = []
    for e in stream:
        hold = gate.check(e, clock.now(e.ts))
        if hold is None:
            clock.advance(e.ts)
        reasons.append(None if hold is None else hold.reason)
    assert reasons == [None, None, "future_timestamp", None, None, None, None]
    assert clock.latest == years_ago + 10 * 86_400


# -- plausibility --------------------------------------------------------------------------


def test_watch_exceeding_duration_by_a_wide_margin_is_held() -> None:
    rule = WatchExceedsDurationRule(factor=3.0, slack_seconds=60)
    assert rule.check(ev("u", "v", "view", T0, watch=120.0, duration=30.0), T0) is None  # a short clip on loop
    hold = rule.check(ev("u", "v", "view", T0, watch=151.0, duration=30.0), T0)
    assert hold is not None and hold.reason == "watch_exceeds_duration"
    assert rule.check(ev("u", "v", "view", T0, watch=30_000.0), T0) is None  # no duration: nothing to compare


def test_skip_after_watching_the_whole_item_is_held() -> None:
    rule = SkipAfterFullWatchRule(full_fraction=1.0)
    assert rule.check(ev("u", "v", "skip", T0, watch=29.0, duration=30.0), T0) is None
    hold = rule.check(ev("u", "v", "skip", T0, watch=30.0, duration=30.0), T0)
    assert hold is not None and hold.reason == "skip_after_full_watch"
    assert rule.check(ev("u", "v", "view", T0, watch=30.0, duration=30.0), T0) is None
    assert rule.check(ev("u", "v", "skip", T0), T0) is None


def test_like_without_view_needs_a_recent_view_and_is_off_by_default() -> None:
    rule = LikeWithoutViewRule(window_seconds=600)
    results = run(
        rule,
        [
            ev("u1", "v1", "like", T0),  # no view at all
            ev("u1", "v1", "view", T0 + 1),
            ev("u1", "v1", "like", T0 + 2),
            ev("u1", "v1", "share", T0 + 3),
            ev("u1", "v2", "like", T0 + 4),  # viewed another item
            ev("u1", "v1", "like", T0 + 700),  # the view is too old now
            ev("u2", "v3", "view", T0 + 701),
        ],
    )
    assert [None if h is None else h.reason for h in results] == [
        "like_without_view",
        None,
        None,
        None,
        "like_without_view",
        "like_without_view",
        None,
    ]
    assert len(rule) == 1  # only the latest view: the old one left the window and its memory was released
    # A worker behind by more than the window (a backlog after an outage) judges by the events' own times: a like 5 s
    # after its view passes, though both were taken two hours after they happened; a view is forgotten once the
    # worker has not taken one of that item by that user for the window.
    late = T0 + 7_200
    rule.observe(ev("u3", "v4", "view", T0 + 10), late)
    assert rule.check(ev("u3", "v4", "like", T0 + 15), late) is None
    assert rule.check(ev("u3", "v4", "like", T0 + 10 + 601), late) is not None  # (its own time: past the window)
    rule.observe(ev("u9", "v9", "view", T0 + 20), late + 601)
    assert rule.check(ev("u3", "v4", "like", T0 + 15), late + 601) is not None and len(rule) == 1
    assert "like_without_view" not in default_gate().codes
    assert "like_without_view" in default_gate(GateConfig(like_without_view_enabled=True)).codes


# -- user rate -----------------------------------------------------------------------------


def test_user_rate_passes_a_person_and_holds_a_bot_for_as_long_as_it_keeps_going() -> None:
    rule = UserRateRule(window_seconds=60, max_positives=30, max_events=120)
    person = [ev("ann", f"v{k}", "like" if k % 3 else "share", T0 + 3 * k) for k in range(400)]  # 20/min for 20 min
    assert run(rule, person) == [None] * 400
    bot = [ev("bot", f"v{k}", "like", T0 + 0.5 * k) for k in range(2_400)]  # 120 likes/min for 20 min
    held = sum(h is not None for h in run(rule, bot))
    assert held >= 2_400 - 35  # the first ~30 pass, then the bot stays over the limit
    slow_again = [ev("bot", f"w{k}", "like", T0 + 1_200 + 120 + 5 * k) for k in range(20)]
    assert run(rule, slow_again) == [None] * 20  # once it slows to a human pace it passes again


def test_user_rate_counts_all_events_too_and_windows_run_on_the_users_clock() -> None:
    rule = UserRateRule(window_seconds=60, max_positives=1_000, max_events=120)
    views = [ev("u", f"v{k}", "view", T0 + 0.2 * k) for k in range(300)]  # 300 views/min
    reasons = Counter(None if h is None else h.reason for h in run(rule, views))
    assert reasons["user_rate"] >= 170
    # stamping a batch in the past does not open a fresh window: the user's clock never goes back
    backdated = [ev("u", f"x{k}", "view", T0 - 86_400 + k) for k in range(50)]
    assert all(h is not None for h in run(rule, backdated))


def test_user_rate_memory_is_released_for_idle_users() -> None:
    rule = UserRateRule(window_seconds=60, max_users=1_000)
    run(rule, [ev(f"u{k}", "v", "view", T0 + k * 0.01) for k in range(5_000)])
    assert len(rule) == 1_000  # the hard cap
    run(rule, [ev("late", "v", "view", T0 + 500)])
    assert len(rule) == 1  # everyone else was idle for more than two windows


def test_user_rate_window_counts_carry_over_one_window_and_reset_after_two() -> None:
    rule = UserRateRule(window_seconds=60, max_positives=100, max_events=5)
    w0 = 60.0 * 28_333_334  # a window starts here
    first = run(rule, [ev("u", f"v{k}", "view", w0 + k) for k in range(6)])
    assert first[:5] == [None] * 5 and first[5] is not None  # the 6th of the window: 5 counted + 1 > 5
    # the next window: the previous one (6 attempts, the held one counted) weighs by its overlap, 59/60
    late = ev("u", "w", "view", w0 + 61)
    hold = rule.check(late, late.ts)
    # 6 × 59/60 = 5.9, and this event: 6.9 (a whole number would hide that it is over the limit)
    assert (
        hold is not None and hold.detail == "this event would make 6.9 events from this user in the last 60 s (limit 5)"
    )
    rule.observe_held(late, late.ts, hold)
    # carried over into the new window: 6 × 58/60 + 1 (the held attempt) = 6.8
    hold = rule.check(ev("u", "w2", "view", w0 + 62), w0 + 62)
    assert hold is not None and "would make 7.8 events" in hold.detail
    # near the end of that window the previous one barely overlaps: 6 × 1/60 + 1 (the held attempt) = 1.1
    assert run(rule, [ev("u", f"x{k}", "view", w0 + 119) for k in range(3)]) == [None] * 3
    # two windows later nothing carries over: 5 pass again, then the 6th is held
    fresh = run(rule, [ev("u", f"y{k}", "view", w0 + 200 + k) for k in range(6)])
    assert fresh[:5] == [None] * 5 and fresh[5] is not None
    # a user never seen passes even at a limit of one; their second event in the window does not
    strict = UserRateRule(window_seconds=60, max_positives=1, max_events=1)
    assert [h is None for h in run(strict, [ev("n", "v", "like", w0), ev("n", "v2", "like", w0 + 1)])] == [True, False]


def test_a_user_rate_hold_never_reads_at_or_under_its_limit() -> None:
    # held when the weighted count with this event passes the limit, by however little: shown rounded up to a tenth
    assert _rate_hold(60, "events", 5, 4.02).detail == (
        "this event would make 5.1 events from this user in the last 60 s (limit 5)"
    )
    assert "would make 6.9 events" in _rate_hold(60, "events", 5, 5.9).detail  # (exact tenths stay as they are)


def test_user_rate_forgets_the_least_recently_seen_user_first() -> None:
    rule = UserRateRule(window_seconds=60, max_users=3)
    run(rule, [ev(u, "v", "view", T0 + k) for k, u in enumerate(["a", "b", "c", "a", "d"])])
    assert held_keys(rule._users, USERS) == [
        "c",
        "a",
        "d",
    ]  # over the cap: b, seen least recently, went (not a, seen first)
    assert rule._users["a"][2] == 2.0  # a's two events (the current window's count), in its one record
    run(rule, [ev("e", "v", "view", T0 + 4 + 120.5)])  # two windows after d: everyone else is idle
    assert held_keys(rule._users, USERS) == ["e"]


# -- item surge ----------------------------------------------------------------------------


def background(users: int, items: int, per_user: int, seed: int, start: float, prefix: str = "p") -> list[GateEvent]:
    """Ordinary users spreading views and likes over a catalogue, interleaved in time."""
    rnd = random.Random(seed)
    events = []
    for k in range(users * per_user):
        kind = "like" if rnd.random() < 0.35 else "view"
        events.append(ev(f"{prefix}{rnd.randrange(users)}", f"i{rnd.randrange(items)}", kind, start + k))
    return events


def test_item_surge_holds_a_bot_farm_of_new_users_liking_one_item() -> None:
    rule = ItemSurgeRule(new_user_events=20, warmup_positives=2_000)
    assert run(rule, background(300, 400, 40, seed=1, start=T0)).count(None) == 12_000  # a cold start holds nothing
    established = background(300, 400, 10, seed=2, start=T0 + 20_000)
    bots = [ev(f"bot{k}", "target", "like", T0 + 20_000 + 10 * k) for k in range(300)]  # slow, one like each
    mixed = sorted(established + bots, key=lambda e: e.ts)
    results = dict(zip(mixed, run(rule, mixed), strict=True))
    bot_holds = [results[b] for b in bots]
    assert sum(h is not None for h in bot_holds) >= 300 - 25
    assert {h.reason for h in bot_holds if h is not None} == {"item_surge"}
    assert all(results[e] is None for e in established)
    # an established user's like of the attacked item is never held by this rule
    assert rule.check(ev("p1", "target", "like", T0 + 40_000), T0 + 40_000) is None


def test_item_surge_skewed_audience_without_concentration() -> None:
    """A farm too small to dominate the stream's new users still shows as an item liked almost only by them."""
    rule = ItemSurgeRule(new_user_events=5, min_new_positives=10, max_new_concentration=1.0, warmup_positives=1_000)
    run(rule, background(200, 300, 20, seed=3, start=T0))
    newcomers = [ev(f"n{k}", f"i{k % 300}", "like", T0 + 5_000 + 2 * k) for k in range(600)]  # spread out
    bots = [ev(f"bot{k}", "target", "like", T0 + 5_001 + 20 * k) for k in range(60)]
    mixed = sorted(newcomers + bots, key=lambda e: e.ts)
    results = dict(zip(mixed, run(rule, mixed), strict=True))
    assert sum(results[b] is not None for b in bots) >= 45
    assert sum(results[n] is not None for n in newcomers) == 0


def test_item_surge_concentration_catches_a_farm_at_a_cold_start() -> None:
    """When every user is new (a fresh system), only concentration tells a farm from a crowd."""
    rule = ItemSurgeRule(new_user_events=20)
    crowd = background(2_000, 3_000, 3, seed=4, start=T0)  # new users spreading likes over a catalogue
    bots = [ev(f"bot{k}", "target", "like", T0 + 3 * k + 0.5) for k in range(2_000)]  # a third of all likes
    mixed = sorted(crowd + bots, key=lambda e: e.ts)
    results = dict(zip(mixed, run(rule, mixed), strict=True))
    assert sum(results[b] is None for b in bots) <= 60
    assert all(results[e] is None for e in crowd)


def test_item_surge_holds_a_farm_that_only_views_its_target() -> None:
    """A view is learned like a like by co-occurrence, so a view-only farm is a promotion attack too."""
    rule = ItemSurgeRule(new_user_events=20, warmup_positives=2_000)
    run(rule, background(300, 400, 40, seed=1, start=T0))
    established = background(300, 400, 10, seed=2, start=T0 + 20_000)
    bots = [ev(f"bot{k}", "target", "view", T0 + 20_000 + 10 * k) for k in range(300)]  # one view each, no like
    mixed = sorted(established + bots, key=lambda e: e.ts)
    results = dict(zip(mixed, run(rule, mixed), strict=True))
    assert sum(results[b] is None for b in bots) <= 25
    assert all(results[e] is None for e in established)
    # the types judged are a setting: judging likes/shares only, the same farm passes
    likes_only = ItemSurgeRule(new_user_events=20, warmup_positives=2_000, judged_types=frozenset({"like", "share"}))
    run(likes_only, background(300, 400, 40, seed=1, start=T0))
    assert run(likes_only, mixed).count(None) == len(mixed)


def test_item_surge_counts_likes_apart_so_camouflage_views_do_not_dilute_a_farms_likes() -> None:
    """Cold start (concentration only): each bot views 4 of 50 popular items, then views and likes the target.

    Over all interactions the target draws under a fifth of the new users' attempts; over likes, nearly all.
    """
    rule = ItemSurgeRule(new_user_events=20, cooldown=0)
    crowd = background(2_000, 3_000, 3, seed=4, start=T0)
    rnd = random.Random(5)
    bots: list[GateEvent] = []
    for k in range(900):
        t = T0 + 6.5 * k + 0.5
        bots += [ev(f"bot{k}", f"i{rnd.randrange(50)}", "view", t + j) for j in range(4)]
        bots += [ev(f"bot{k}", "target", "view", t + 4), ev(f"bot{k}", "target", "like", t + 5)]
    mixed = sorted(crowd + bots, key=lambda e: e.ts)
    results = dict(zip(mixed, run(rule, mixed), strict=True))
    likes = [b for b in bots if b.type == "like"]
    assert sum(results[b] is None for b in likes) <= 40
    assert sum(results[e] is not None for e in crowd) <= 0.01 * len(crowd)
    target_share = sum(b.item_id == "target" for b in bots) / (len(bots) + len(crowd))
    assert target_share < rule.max_new_concentration  # what a single all-interaction count would see


def test_item_surge_cools_an_item_down_after_a_surge() -> None:
    """Once an item surged, new users' interactions with it stay held for ``cooldown`` interactions.

    The farm pauses while ordinary newcomers dilute its concentration, then resumes slowly: below
    every threshold, held only because the item is cooling down; without a cool-down it passes.
    """

    def scenario(cooldown: int) -> tuple[list[Hold | None], list[Hold | None]]:
        rule = ItemSurgeRule(new_user_events=20, stream_memory=1_000, cooldown=cooldown)
        burst = [ev(f"bot{k}", "target", "like", T0 + k) for k in range(60)]
        newcomers = [ev(f"n{k}", f"i{k % 500}", "like", T0 + 100 + k) for k in range(3_000)]  # 3 windows
        resumed = [ev(f"late{k}", "target", kind, T0 + 4_000 + 10 * k) for k in range(10) for kind in ("view", "like")]
        first = run(rule, burst)
        assert all(h is None for h in run(rule, newcomers))
        return first, run(rule, resumed)

    first, resumed = scenario(cooldown=5_000)
    assert sum(h is not None for h in first) >= 35
    assert all(h is not None and "cooling down" in h.detail for h in resumed)
    _, resumed = scenario(cooldown=0)
    assert all(h is None for h in resumed)


def test_item_surge_memory_is_capped() -> None:
    rule = ItemSurgeRule(max_items=100, max_users=500, user_idle_seconds=60)
    run(rule, [ev(f"u{k}", f"i{k}", "like", T0 + k) for k in range(2_000)])
    assert len(rule._items) == 100
    assert len(rule._users) <= 61  # only users seen in the last minute


def test_item_surge_counts_a_users_progress_in_a_float32_and_refuses_a_threshold_it_cannot_count_to() -> None:
    """A user's events towards established are a float32 (exact for whole numbers up to 2**24), next to the stamp of
    when they were last seen."""
    with pytest.raises(ValueError, match="new_user_events"):
        ItemSurgeRule(new_user_events=2**24 + 1)
    rule = ItemSurgeRule(new_user_events=2**24)
    run(rule, [ev("a", "i1", "view", T0), ev("a", "i1", "view", T0 + 1)])
    assert rule._users["a"][0] == 2.0 and rule._users.seen("a") == T0 + 1 and len(rule._users.data) == 0
    assert rule._users.narrow.typecode == "f" and len(rule._users.narrow) == 1


def test_item_surge_forgets_the_least_recently_touched_items_and_users_first() -> None:
    rule = ItemSurgeRule(new_user_events=3, max_items=2, max_users=2, user_idle_seconds=100)
    run(rule, [ev(u, i, "view", T0 + k) for k, (u, i) in enumerate([("a", "i1"), ("b", "i2"), ("a", "i1")])])
    assert held_keys(rule._items, ITEMS) == ["i2", "i1"] and held_keys(rule._users, USERS) == ["b", "a"]
    assert rule._users["a"][0] == 2.0 and rule._items["i1"][1] > rule._items["i2"][1]  # counts kept when re-touched
    run(rule, [ev("c", "i3", "view", T0 + 3)])
    assert held_keys(rule._items, ITEMS) == ["i1", "i3"] and held_keys(rule._users, USERS) == [
        "a",
        "c",
    ]  # i2 and b went, not i1 and a
    run(rule, [ev("a", "i1", "view", T0 + 4)])  # a's third event: established from now on
    assert "a" in rule.established and held_keys(rule._users, USERS) == ["c", "a"]
    run(rule, [ev("d", "i3", "view", T0 + 104.5)])  # more than 100 s after everyone else: they are forgotten
    assert held_keys(rule._users, USERS) == ["d"] and held_keys(rule._items, ITEMS) == [
        "i1",
        "i3",
    ]  # items go only beyond the cap
    run(rule, [ev("a", "i1", "view", T0 + 105)])
    assert rule._users["a"][0] == 3.0  # forgotten, but known again as established


def test_established_users_answer_for_each_user_asked_in_turn() -> None:
    users = EstablishedUsers(capacity=100)
    users.add("a")
    assert ["a" in users, "b" in users, "a" in users, "b" in users] == [True, False, True, False]
    users.add("b")
    assert ["a" in users, "b" in users, "c" in users] == [True, True, False]


def test_established_users_forget_after_two_generations_and_rarely_mistake_new_ones() -> None:
    users = EstablishedUsers(capacity=1_000)
    for k in range(1_000):
        users.add(f"old{k}")
    assert all(f"old{k}" in users for k in range(1_000))
    false_positives = sum(f"new{k}" in users for k in range(10_000))
    assert false_positives < 300  # ~1% by design
    table = users.nbytes  # one filter: the previous generation is made at the first rotation
    assert users.to_bytes()[-table:] == bytes(table)  # (persisted as an empty one)
    for k in range(100):  # the first rotation, at the 1,000th insert (a user the filter takes for one is not one)
        users.add(f"first{k}")
        if users.nbytes > table:
            break
    assert users.nbytes == 2 * table and all(f"old{k}" in users for k in range(1_000))  # known in the previous
    restored = EstablishedUsers.from_bytes(users.to_bytes())
    assert restored.to_bytes() == users.to_bytes() and "old7" in restored
    for k in range(2_001):  # two more generations
        users.add(f"later{k}")
    assert sum(f"old{k}" in users for k in range(1_000)) < 50
    assert users.nbytes == 2 * table < 3_000
    fresh = EstablishedUsers.from_bytes(EstablishedUsers(capacity=1_000).to_bytes())
    assert fresh.nbytes == table and "old7" not in fresh  # an empty previous generation is not made


# -- anomalous behaviour -------------------------------------------------------------------


def lively_stream(n: int, seed: int = 0, users: int = 500) -> list[GateEvent]:
    """Random but stationary behaviour: mixed event types and watch ratios, Poisson arrivals."""
    rnd = random.Random(seed)
    clock, events = T0, []
    for _ in range(n):
        clock += rnd.expovariate(2.0)
        kind = rnd.choices(["view", "like", "share", "skip"], [60, 30, 5, 5])[0]
        duration = rnd.uniform(10, 60)
        events.append(
            ev(f"u{rnd.randrange(users)}", f"v{rnd.randrange(300)}", kind, clock, duration * rnd.random(), duration)
        )
    return events


def test_anomaly_rule_holds_nothing_while_warming_up_and_about_one_minus_q_after() -> None:
    gate = QualityGate([AnomalousBehaviourRule(quantile=0.99, warmup_events=5_000)])
    stream = lively_stream(60_000)
    holds = [gate.check(e, e.ts) for e in stream]
    assert all(h is None for h in holds[:5_000])
    late_rate = sum(h is not None for h in holds[40_000:]) / 20_000
    # if held scores did not feed the quantile, the threshold would ratchet down and hold ~everything
    assert late_rate < 0.03, late_rate


def test_anomaly_rule_holds_a_like_burst_from_a_new_account() -> None:
    gate = QualityGate([AnomalousBehaviourRule(quantile=0.995, warmup_events=5_000)])
    stream = lively_stream(30_000, seed=1)
    for e in stream:
        gate.check(e, e.ts)
    normal_held = gate.held
    end = stream[-1].ts
    burst = [ev("fresh-bot", f"v{k}", "like", end + 0.1 * k) for k in range(50)]
    held = sum(gate.check(e, e.ts) is not None for e in burst)
    assert held >= 40, (held, gate.counts)
    assert normal_held < 0.01 * len(stream)


def test_anomaly_rule_never_holds_a_new_users_first_event_in_a_stream_of_established_users() -> None:
    """A newcomer's first like, in a stream where nobody else is new, is the stream's most unusual point (longest
    gap, shortest history); it carries no behaviour yet, and holding it would lose their first signal."""
    stream = lively_stream(40_000, seed=2)  # 500 users, all established within the first few thousand events
    rnd = random.Random(2)
    mixed: list[GateEvent] = []
    for k, e in enumerate(stream):
        mixed.append(e)
        if k >= 20_000 and k % 100 == 0:  # 200 newcomers, each with one like, among established users
            duration = rnd.uniform(10, 60)
            mixed.append(ev(f"newcomer{k}", f"v{rnd.randrange(300)}", "like", e.ts, duration * rnd.random(), duration))
    for by_chunk in (False, True):
        gate = QualityGate([AnomalousBehaviourRule(quantile=0.999, warmup_events=5_000)])
        if by_chunk:
            verdicts = [h for start in range(0, len(mixed), 500)
                        for h in gate.check_chunk(mixed[start:start + 500], mixed[start].ts)]  # fmt: skip
        else:
            verdicts = [gate.check(e, e.ts) for e in mixed]
        held = [e for e, h in zip(mixed, verdicts, strict=True) if h is not None]
        assert not [e for e in held if e.user_id.startswith("newcomer")], (by_chunk, len(held))
        assert held, "the rule still holds the stream's most unusual events"
        # ... and a newcomer's second event is judged like anyone's (the like burst above)


def test_anomaly_rule_forgets_the_least_recently_seen_user_first() -> None:
    rule = AnomalousBehaviourRule(max_users=2, idle_seconds=100)
    run(rule, [ev(u, "v", "view", T0 + k) for k, u in enumerate(["a", "b", "a", "c"])])
    assert held_keys(rule._users, USERS) == ["a", "c"]  # over the cap: b went, not a
    assert rule._users["a"][4] == 2.0  # a's two events (the last of the record's float32 fields)
    run(rule, [ev("d", "v", "view", T0 + 103.5)])
    assert held_keys(rule._users, USERS) == ["d"]


def test_flat_trees_send_a_value_on_a_split_right_as_river_does() -> None:
    """River goes left when a point's value is below a node's threshold, right otherwise: on it too."""
    river, twin = (anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=20, seed=3) for _ in range(2))
    rnd = random.Random(3)
    for _ in range(40):  # two windows: reference masses set, l_mass back to 0
        point = {f: rnd.random() for f in FEATURES}
        river.learn_one(point)
        twin.learn_one(point)
    on_roots = [{**{f: rnd.random() for f in FEATURES}, root.feature: root.threshold} for root in river.trees]
    rows = np.array([[p[f] for f in FEATURES] for p in on_roots])
    flat = FlatTrees(river, FEATURES)
    assert flat.scores(flat.leaves(rows), flat.leaf_scores()) == [river.score_one(p) for p in on_roots]
    flat.learn(rows)
    for p in on_roots:
        twin.learn_one(p)
    assert [[n.l_mass for n in t.iter_dfs()] for t in river.trees] == [
        [n.l_mass for n in t.iter_dfs()] for t in twin.trees
    ]


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_anomaly_rule_learns_and_scores_as_river_does_point_by_point(compiled: bool) -> None:
    """The rule walks a window's points into its trees when the window ends, and scores a prepared batch from the
    leaves its points reach (in Python; the compiled core walks each event down the trees): every score, and the
    trees' reference masses, are those of River's Half-Space Trees learning each point with ``learn_one`` and
    scoring it with ``score_one``."""
    with loops(compiled):
        rule = AnomalousBehaviourRule(quantile=0.98, warmup_events=300, window_size=40, learn_every=2, seed=7)
    assert (rule._core is not None) is compiled
    river = anomaly.HalfSpaceTrees(n_trees=5, height=8, window_size=40, seed=7)
    stream = lively_stream(3_000, seed=4, users=60)
    stream[2_000:2_000] = [ev("bot", "v1", "like", stream[2_000].ts) for _ in range(30)]  # a burst to hold
    scores, expected, held = [], [], 0
    for start in range(0, len(stream), 37):  # windows (80 passed events) end inside batches
        chunk = stream[start : start + 37]
        rule.prepare(chunk, chunk[0].ts)
        for e in chunk:
            hold = rule.check(e, e.ts)
            assert rule._memo is not None
            _, x, score, _ = rule._memo
            point = dict(zip(FEATURES, x, strict=True))
            scores.append(score)
            expected.append(river.score_one(point) if rule.learned >= 40 else 0.0)
            if hold is None:
                rule.observe(e, e.ts)
                if rule.passed % 2 == 0:
                    river.learn_one(point)
            else:
                held += 1
                rule.observe_held(e, e.ts, hold)
    assert rule.learned // 40 >= 30 and held > 20
    assert (rule.scored_ahead > 0.9 * len(stream)) is not compiled  # the core scores no batch ahead: it needs none
    assert scores == expected
    assert [[n.r_mass for n in t.iter_dfs()] for t in rule.trees.trees] == [
        [n.r_mass for n in t.iter_dfs()] for t in river.trees
    ]


# -- the gate ------------------------------------------------------------------------------


def test_gate_first_hold_wins_counts_by_reason_and_observes_only_passed_events() -> None:
    first, second = Recorder("first", "a"), Recorder("second", "b")
    gate = QualityGate([first, second])
    a, b, c = (
        GateEvent("ea", "u", "a", "like", T0),
        GateEvent("eb", "u", "b", "like", T0),
        GateEvent("ec", "u", "c", "like", T0),
    )
    assert gate.check(a, T0) == Hold("first", "test")
    assert gate.check(b, T0) == Hold("second", "test")
    assert gate.check(c, T0) is None
    assert gate.counts == {"first": 1, "second": 1} and gate.passed == 1 and gate.held == 2
    assert first.observed == second.observed == ["ec"]
    assert first.held == ["ea"] and second.held == ["eb"]  # only the rule that held is told
    assert isinstance(first, GateRule)


def test_gate_overrides_skip_only_the_overridden_rules() -> None:
    first, second = Recorder("first", "x"), Recorder("second", "x")
    gate = QualityGate([first, second])
    replayed = GateEvent("ex", "u", "x", "like", T0)
    assert gate.check(replayed, T0, overrides=frozenset({"first"})) == Hold("second", "test")
    assert gate.check(replayed, T0, overrides=frozenset({"first", "second"})) is None
    assert first.observed == second.observed == ["ex"]  # accepted: every rule learns it, overridden or not


def test_disabled_gate_passes_everything_and_learns_nothing() -> None:
    rule = Recorder("r", "x")
    gate = QualityGate([rule], enabled=False)
    assert gate.check(GateEvent("ex", "u", "x", "like", T0), T0) is None
    assert gate.passed == 1 and gate.counts == {} and rule.observed == []


def test_default_gate_codes_are_all_documented() -> None:
    gate = default_gate(GateConfig(like_without_view_enabled=True))
    doc = Path(__file__).resolve().parents[1].joinpath("docs", "quality-gate.md").read_text()
    for code in (*gate.codes, "duplicate", "contract"):
        assert f"`{code}`" in doc, code
    for field in GateConfig.__dataclass_fields__:
        assert f"`{field}`" in doc, field


# -- MovieLens: a real clean stream, and a bot farm mixed into it ----------------------------


def movielens_events() -> list[GateEvent]:
    """Every rating a view; >= 4 also a like; 5 also a share; same ts; by timestamp, ties in file order."""
    rows = []
    with MOVIELENS.open() as f:
        reader = csv.reader(f)
        next(reader)
        for line, (user, movie, rating, ts) in enumerate(reader):
            rows.append((int(ts), line, user, movie, float(rating)))
    rows.sort()
    events = []
    for ts, _, user, movie, rating in rows:
        for kind in ("view", "like", "share")[: 1 + (rating >= 4) + (rating >= 5)]:
            events.append(GateEvent(f"m{len(events)}", f"u{user}", f"m{movie}", kind, float(ts)))
    return events


def replay(gate: QualityGate, events: list[GateEvent]) -> tuple[list[Hold | None], float]:
    clock = default_stream_clock()
    holds: list[Hold | None] = []
    start = time.perf_counter()
    for e in events:
        hold = gate.check(e, clock.now(e.ts))
        if hold is None:
            clock.advance(e.ts)
        holds.append(hold)
    return holds, time.perf_counter() - start


def test_default_gate_holds_at_most_one_percent_of_clean_movielens() -> None:
    events = movielens_events()
    gate = default_gate(GateConfig())
    holds, seconds = replay(gate, events)
    held = sum(h is not None for h in holds)
    print(
        f"\nMovieLens clean: {len(events)} events, held {held} ({held / len(events):.3%}) by reason {gate.counts}; "
        f"gate {len(events) / seconds:,.0f} events/s (check+observe)"
    )
    assert held <= 0.01 * len(events)
    assert set(gate.counts) <= {"user_rate", "anomalous_behaviour"}  # the bulk-rating bursts, and the tail


def test_default_gate_holds_a_bot_farm_mixed_into_movielens() -> None:
    """Attack (a) of the poisoning benchmark: new users, 20% of all events, each viewing and liking one item."""
    rnd = random.Random(7)
    mixed, bots = [], 0
    for e in movielens_events():
        mixed.append(e)
        while rnd.random() < 0.2:  # one bot event per 4 ordinary ones on average: 20% of the mix
            user = f"bot{bots // 2}"
            mixed.append(GateEvent(f"b{bots}", user, "target", "view" if bots % 2 == 0 else "like", e.ts))
            bots += 1
    gate = default_gate(GateConfig())
    holds, _ = replay(gate, mixed)
    bot_likes = [h for e, h in zip(mixed, holds, strict=True) if e.user_id.startswith("bot") and e.type == "like"]
    bot_views = [h for e, h in zip(mixed, holds, strict=True) if e.user_id.startswith("bot") and e.type == "view"]
    ordinary = [h for e, h in zip(mixed, holds, strict=True) if not e.user_id.startswith("bot")]
    passed, views_passed = sum(h is None for h in bot_likes), sum(h is None for h in bot_views)
    print(
        f"\nbot farm: {bots / len(mixed):.1%} of events, {passed} of {len(bot_likes)} bot likes and {views_passed} of "
        f"{len(bot_views)} views passed; {gate.counts}"
    )
    assert passed <= 50  # MovieLens' most liked film has ~280 likes: the target stays far below
    assert views_passed <= 50  # views are judged too (co-occurrence learns a view like a like)
    assert sum(h is not None for h in ordinary) <= 0.01 * len(ordinary)


def test_preparing_a_batch_changes_no_verdict_and_no_score() -> None:
    """The worker hands the gate each batch before checking it (``prepare``): the anomaly rule then scores
    the batch at once. Same verdicts, same anomaly scores and thresholds as checking event by event, on
    MovieLens with a burst of bot likes mixed in (held by the rate rule before the anomaly rule sees
    them, so the ahead-of-time features of those users must be dropped)."""
    events = movielens_events()[:24_000]
    bots = [GateEvent(f"b{i}", f"bot{i % 3}", f"m{i % 7}", "like", events[12_000 + i // 10].ts) for i in range(600)]
    stream = events[:12_000] + [e for pair in zip(bots, events[12_000:12_600], strict=True) for e in pair]
    stream += events[12_600:]
    config = GateConfig(anomaly_warmup_events=2_000, anomaly_window=200)  # windows end every ~800 events
    with loops(compiled=False):  # the Python rule (the compiled core needs no batch ahead, and ignores one)
        one_by_one, batched = default_gate(config), default_gate(config)
    scores: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    for name, gate in (("one_by_one", one_by_one), ("batched", batched)):
        anomaly = next(r for r in gate.rules if isinstance(r, AnomalousBehaviourRule))
        verdicts = []
        for start in range(0, len(stream), 500):
            chunk = stream[start : start + 500]
            if name == "batched":
                gate.prepare(chunk, chunk[0].ts)
            for e in chunk:
                hold = gate.check(e, e.ts)
                verdicts.append(None if hold is None else hold.reason)
                if anomaly._memo is not None:  # the score the rule computed for this event, if it got there
                    scores[name].append(anomaly._memo[2])
        gate.verdicts = verdicts  # type: ignore[attr-defined]
    a = next(r for r in one_by_one.rules if isinstance(r, AnomalousBehaviourRule))
    b = next(r for r in batched.rules if isinstance(r, AnomalousBehaviourRule))
    assert one_by_one.verdicts == batched.verdicts  # type: ignore[attr-defined]
    assert one_by_one.counts == batched.counts and one_by_one.counts.get("user_rate", 0) > 50
    assert scores["one_by_one"] == scores["batched"]
    assert (a.threshold.get(), a.learned, a.passed) == (b.threshold.get(), b.learned, b.passed)
    # and the batched gate did score most events ahead of their checks
    assert b.scored_ahead > 0.85 * len(stream) and a.scored_ahead == 0

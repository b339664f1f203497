"""``QualityGate.check_chunk``, the worker's entry point: the same verdicts, counts and rule state as
``prepare`` then ``check`` on each event, and the worker's duplicate semantics around it.

The streams here make every rule hold (time, plausibility, rate, item surge, anomaly, like without
view), with caps small enough that every table evicts, and overrides; the comparison covers the
rules' tables in order, so a chunk path that forgot an eviction, observed a held event, or
reordered a table fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from array import array
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from river import anomaly as anomaly_module

from learner.gate.base import GateEvent, Hold
from learner.gate.behaviour import FEATURES, AnomalousBehaviourRule, ItemSurgeRule, UserRateRule
from learner.gate.gate import GateConfig, QualityGate, default_gate, stateless_gate
from learner.gate.plausibility import LikeWithoutViewRule
from learner.gate.time_rules import FutureTimestampRule
from tests.clock import iso
from tests.conftest import held_keys, loops, skip_unless_ci
from tests.gate_recorder import Recorder
from tests.transport import NothingLearnedStore, letters_one_by_one

if TYPE_CHECKING:
    from stream.processor import EventProcessor

T0 = 1_700_000_000.0

SMALL = GateConfig(
    future_skew_seconds=5.0,
    max_lateness_seconds=3_600.0,
    like_without_view_enabled=True,
    like_without_view_max_pairs=4,
    user_rate_window_seconds=7.5,
    user_rate_max_positives=4,
    user_rate_max_events=9,
    user_rate_max_users=5,
    item_surge_new_user_events=3,
    item_surge_min_new_positives=2.0,
    item_surge_stream_memory=150,
    item_surge_warmup_positives=50,
    item_surge_user_idle_seconds=60.0,
    item_surge_max_items=4,
    item_surge_max_users=5,
    item_surge_established_capacity=20,
    anomaly_quantile=0.9,
    anomaly_warmup_events=100,
    anomaly_trees=3,
    anomaly_tree_height=4,
    anomaly_window=20,
    anomaly_learn_every=2,
    anomaly_idle_seconds=30.0,
    anomaly_max_users=5,
)


def stream(n: int, seed: int) -> list[tuple[GateEvent, float]]:
    """(event, now) pairs: people, bot bursts, a farm of new users on one item, odd newcomers, events out
    of time, skips after a full watch, watch beyond duration, likes without views, idle gaps, clock steps back."""
    rnd = random.Random(seed)
    out: list[tuple[GateEvent, float]] = []
    now = T0
    while len(out) < n:
        now += rnd.choice([0.0, 0.5, 1.0, 3.0]) + (500.0 if rnd.random() < 0.003 else 0.0)
        now -= 40.0 if rnd.random() < 0.003 else 0.0  # the wall clock stepped back (tables' order is not time order)
        ts = now - rnd.choice([0.0, 0.0, 2.0, 30.0])
        watch, duration = rnd.choice([(12.0, 30.0), (None, None), (30.0, 30.0), (500.0, 30.0), (5.0, 0.0)])
        r = rnd.random()
        if r < 0.5:
            user, item, kind = f"u{rnd.randrange(12)}", f"v{rnd.randrange(8)}", rnd.choice(["view", "like", "skip"])
        elif r < 0.6:  # a bot's burst
            bot = f"bot{rnd.randrange(2)}"
            for kind in rnd.choices(["view", "view", "like"], k=rnd.randint(1, 15)):
                out.append((GateEvent(f"e{len(out)}", bot, "v0", kind, now, 12.0, 30.0), now))
            continue
        elif r < 0.8:
            user, item, kind = f"new{len(out)}", "target", rnd.choice(["view", "like", "share"])
        elif r < 0.87:
            user, item, kind = f"u{rnd.randrange(12)}", "v1", "view"
            ts = now + rnd.choice([-1e6, -5_000.0, 6.0, 1e6])
        else:
            user, item, kind = f"odd{rnd.randrange(50)}", f"v{rnd.randrange(8)}", "like"
        out.append((GateEvent(f"e{len(out)}", user, item, kind, ts, watch, duration), now))
    return out[:n]


def state(gate: QualityGate) -> list[object]:
    """What a gate has learned: its counts, and each behaviour rule's tables in order."""
    found: list[object] = [list(gate.counts.items()), gate.passed]
    for rule in gate.rules:
        # copies of the records' values: the rules update records in place, so references would all
        # show the final values and the trace would compare nothing but the end
        if isinstance(rule, UserRateRule):
            found.append(rule._users.in_order())
        elif isinstance(rule, ItemSurgeRule):
            found += [rule._users.in_order(), rule._items.in_order(), rule.stream_new_share, rule.clocks]
        elif isinstance(rule, AnomalousBehaviourRule):
            found += [rule._users.in_order(), rule.threshold.get(), rule.learned, rule.passed, rule.scored_ahead]
        elif isinstance(rule, LikeWithoutViewRule):
            found.append(list(rule._views.items()))
    return found


def verdicts(holds: list[Hold | None]) -> list[tuple[str, str] | None]:
    return [None if h is None else (h.reason, h.detail) for h in holds]


def judge(gate: QualityGate, events: list[tuple[GateEvent, float]], chunked: bool, seed: int) -> list[object]:
    """Judge ``events`` in chunks of random sizes (the same sizes and overrides for any ``seed``), by
    ``check_chunk`` or by ``prepare`` and ``check``; the verdicts and the state after each chunk."""
    rnd = random.Random(seed)
    trace: list[object] = []
    codes = list(gate.codes)
    start = 0
    while start < len(events):
        size = rnd.choice([1, 2, 7, 60, 300])
        part, start = events[start : start + size], start + size
        overrides = frozenset(rnd.sample(codes, rnd.choice([1, 2]))) if rnd.random() < 0.2 else frozenset()
        now = part[-1][1]  # the chunk is judged when its last event arrived
        views = [e for e, _ in part]
        if chunked:
            holds = gate.check_chunk(views, now, overrides)
        else:
            gate.prepare(views, now, overrides)
            holds = [gate.check(e, now, overrides) for e in views]
        trace += [verdicts(holds), state(gate)]
    return trace


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_check_chunk_equals_prepare_and_check_event_by_event(compiled: bool) -> None:
    events = stream(12_000, seed=1)
    with loops(compiled):
        one_by_one, chunked = default_gate(SMALL), default_gate(SMALL)
    expected = judge(one_by_one, events, chunked=False, seed=2)
    assert judge(chunked, events, chunked=True, seed=2) == expected
    # the stream made every rule hold, and the tables evict
    assert set(one_by_one.counts) == set(one_by_one.codes), one_by_one.counts
    # the Python anomaly rule scored most events ahead; the compiled one needs no batch ahead
    anomaly = next(r for r in chunked.rules if isinstance(r, AnomalousBehaviourRule))
    assert (anomaly.scored_ahead > 1_000) is not compiled
    assert all(len(r) <= 5 for r in chunked.rules if isinstance(r, UserRateRule | AnomalousBehaviourRule))


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_check_chunk_and_check_interleave_on_one_gate(compiled: bool) -> None:
    """The processor judges chunks, and single events it could not judge then (``check``): one gate."""
    events = stream(3_000, seed=3)
    rnd = random.Random(4)
    sizes = [rnd.choice([1, 50]) for _ in range(len(events))]
    with loops(compiled):
        reference, mixed = default_gate(SMALL), default_gate(SMALL)
    expected: list[object] = []
    got: list[object] = []
    start = 0
    for size in sizes:
        part, start = events[start : start + size], start + size
        if not part:
            break
        now, views = part[-1][1], [e for e, _ in part]
        if size > 1:
            reference.prepare(views, now)  # as the worker used to (scored_ahead counts its use)
        expected += verdicts([reference.check(e, now) for e in views])
        got += verdicts([mixed.check(views[0], now)] if size == 1 else mixed.check_chunk(views, now))
    assert got == expected and state(mixed) == state(reference)
    assert {"user_rate", "item_surge", "anomalous_behaviour"} <= set(mixed.counts)


def test_check_chunk_keeps_rule_order_around_stateless_rules() -> None:
    """A stateless rule judges the whole chunk first, but an earlier stateful rule still decides first,
    and a later one never sees what the stateless rule held."""
    before, after = Recorder("before", "x"), Recorder("after", "y")
    gate = QualityGate([before, FutureTimestampRule(5.0), after])
    events = [
        GateEvent("held-by-before", "u", "x", "like", T0 + 100),  # both 'before' and the time rule would hold it
        GateEvent("held-by-time", "u", "y", "like", T0 + 100),  # 'after' would hold it too, but comes later
        GateEvent("held-by-after", "u", "y", "like", T0),
        GateEvent("passes", "u", "z", "like", T0),
    ]
    assert [h and h.reason for h in gate.check_chunk(events, T0)] == ["before", "future_timestamp", "after", None]
    assert before.held == ["held-by-before"] and after.held == ["held-by-after"]
    assert before.observed == after.observed == ["passes"]
    assert gate.counts == {"before": 1, "future_timestamp": 1, "after": 1} and gate.passed == 1


def test_check_chunk_overridden_rules_still_observe_what_passes() -> None:
    first, second = Recorder("first", "x"), Recorder("second", "x")
    gate = QualityGate([first, second])
    replayed = [GateEvent("ex", "u", "x", "like", T0), GateEvent("ey", "u", "y", "like", T0)]
    assert [h and h.reason for h in gate.check_chunk(replayed, T0, frozenset({"first"}))] == ["second", None]
    assert first.observed == second.observed == ["ey"] and first.held == [] and second.held == ["ex"]


class _Failing(Recorder):
    """A recorder that raises when it sees the event ``fail_on``."""

    def __init__(self, code: str, hold_if: str, fail_on: str) -> None:
        super().__init__(code, hold_if)
        self.fail_on = fail_on

    def check(self, event: GateEvent, now: float) -> Hold | None:
        if event.event_id == self.fail_on:
            raise RuntimeError("a rule failed")
        return super().check(event, now)


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_check_chunk_counts_what_it_judged_before_a_rule_raised(compiled: bool) -> None:
    """A rule that raises stops the chunk: the events before it are counted as passed or held (and observed or
    told of their hold), the rest are not touched."""
    first, failing = Recorder("first", "x"), _Failing("failing", "y", fail_on="e3")
    gate = QualityGate([first, FutureTimestampRule(5.0), failing])
    events = [
        GateEvent("e0", "u", "z", "like", T0),
        GateEvent("e1", "u", "x", "like", T0),  # held by the first rule
        GateEvent("e2", "u", "y", "like", T0 + 100),  # held by the time rule (a stateless one, judged ahead)
        GateEvent("e3", "u", "z", "like", T0),  # the rule raises
        GateEvent("e4", "u", "y", "like", T0),
    ]
    with loops(compiled), pytest.raises(RuntimeError, match="a rule failed"):
        gate.check_chunk(events, T0)
    assert gate.passed == 1 and gate.counts == {"first": 1, "future_timestamp": 1}
    assert first.observed == failing.observed == ["e0"] and first.held == ["e1"] and failing.held == []


class _HoldsNothing:
    """A stateless rule whose ``holds`` names a row with no hold (None): that row is judged like any other."""

    codes = ("nothing",)
    stateless = True

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002
        return None

    def observe(self, event: GateEvent, now: float) -> None:
        pass

    def holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold | None]:  # noqa: ARG002
        return {0: None}


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_an_early_hold_of_none_holds_nothing(compiled: bool) -> None:
    first, last = Recorder("first", "x"), Recorder("last", "y")
    gate = QualityGate([first, _HoldsNothing(), last])  # type: ignore[list-item]
    events = [GateEvent("e0", "u", "z", "like", T0), GateEvent("e1", "u", "y", "like", T0)]
    with loops(compiled):
        assert [h and h.reason for h in gate.check_chunk(events, T0)] == [None, "last"]
    assert first.observed == last.observed == ["e0"] and last.held == ["e1"] and gate.passed == 1


def test_the_compiled_views_are_the_python_ones() -> None:
    """``kernel.gate_views`` makes the views ``stream.processor._views`` makes: None for an item without an event
    or an event known or pending, the same tuples (of GateEvent) otherwise."""
    from learner import kernels
    from recstream import events as events_module
    from recstream.events import Event, parse_message
    from stream.processor import _views

    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"v{i}", "type": "view", "ts": iso(-i)}
        | ({"watch_seconds": 3.5, "item_duration_seconds": 10.0} if i % 2 else {})
        for i in range(8)
    ]
    chunk = parse_message(json.dumps([*events[:4], {"event_id": "bad"}, *events[4:]]).encode())
    assert chunk[4].event is None
    known, pending = {"e1"}, {"e6", "elsewhere"}

    def not_called(ts: object) -> float:  # noqa: ARG001 - never called
        raise AssertionError("the compiled views compute ts_seconds themselves, without Event's descriptor")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_module, "_timestamp", not_called)
        views, judged = kernel.gate_views(chunk, known, pending, GateEvent, Event)
    # an Event's ts_seconds is computed (from its __dict__) and kept there, as its first read keeps it
    assert [d.event is not None and "ts_seconds" in d.event.__dict__ for d in chunk] == [
        True,
        False,
        True,
        True,
        False,
        True,
        True,
        False,
        True,
    ]
    assert (views, judged) == _views(chunk, known, pending)
    assert [v and v.event_id for v in views] == ["e0", None, "e2", "e3", None, "e4", "e5", None, "e7"]
    assert all(type(v) is GateEvent for v in judged) and judged[2].watch_seconds == 3.5
    assert judged[0].ts == chunk[0].event.ts.timestamp() and judged[1].watch_seconds is None
    assert kernel.gate_views(chunk, known, pending, GateEvent, Event) == (views, judged)  # ts_seconds read back
    with pytest.raises(TypeError):
        kernel.gate_views(tuple(chunk), known, pending, GateEvent, Event)
    with pytest.raises(TypeError):
        kernel.gate_views(chunk, known, pending, GateEvent, None)


def test_the_compiled_views_read_other_events_as_python_does() -> None:
    """Only an event of exactly the type given is read from its ``__dict__``: a subclass's own ``ts_seconds``, or
    an Event whose ``__dict__`` lacks a field, is read with getattr, as ``stream.processor._views`` reads it."""
    from learner import kernels
    from recstream.events import Decoded, Event
    from stream.processor import _views

    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")

    class Late(Event):
        @property
        def ts_seconds(self) -> float:
            return T0 - 60.0

    fields = {"event_id": "e1", "user_id": "u", "item_id": "v", "type": "like", "ts": iso(0)}
    late = Late.model_validate(fields)
    plain = Event.model_validate({**fields, "event_id": "e2"})
    trimmed = Event.model_validate({**fields, "event_id": "e3"})
    del trimmed.__dict__["ts"]
    trimmed.__dict__["ts_seconds"] = T0 - 5.0  # (what its first read keeps: no ts needed)
    chunk = [Decoded(e, None, None, None) for e in (late, plain, trimmed)]
    views, judged = kernel.gate_views(chunk, set(), set(), GateEvent, Event)
    assert (views, judged) == _views(chunk, set(), set())
    assert [v.ts for v in judged] == [T0 - 60.0, plain.ts.timestamp(), T0 - 5.0]
    del trimmed.__dict__["ts_seconds"]
    with pytest.raises(AttributeError):  # neither kept nor computable: ts_seconds' own read fails, and says so
        kernel.gate_views(chunk, set(), set(), GateEvent, Event)


def test_the_compiled_views_are_of_the_chunk_as_it_was_given() -> None:
    """Reading an event's attribute may run Python code (``ts_seconds`` is computed on its first read); code that
    empties the chunk meanwhile does not make ``kernel.gate_views`` read past its end: it makes the views of every
    item it was given."""
    from learner import kernels
    from recstream.events import Decoded

    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")
    chunk: list[Decoded] = []

    class Shrinking:
        def __init__(self, i: int) -> None:
            self.event_id, self.user_id, self.item_id, self.type = f"e{i}", "u", "v", "like"
            self.watch_seconds = self.item_duration_seconds = None

        @property
        def ts_seconds(self) -> float:
            del chunk[1:]
            return T0

    chunk.extend(Decoded(Shrinking(i), None, None, None) for i in range(2_000))  # type: ignore[arg-type]
    views, judged = kernel.gate_views(chunk, set(), set(), GateEvent, Decoded)
    assert len(chunk) == 1 and len(views) == len(judged) == 2_000 and judged[-1].event_id == "e1999"


def test_check_chunk_of_a_disabled_gate_passes_everything() -> None:
    rule = Recorder("r", "x")
    gate = QualityGate([rule], enabled=False)
    assert gate.check_chunk([GateEvent("ex", "u", "x", "like", T0)] * 3, T0) == [None] * 3
    assert gate.passed == 3 and gate.counts == {} and rule.observed == []


# -- the worker: one check_chunk per chunk, and the duplicates around it ------------------------


async def _started_processor(
    gate: QualityGate, dead_letter: Callable[[str, bytes | None, bytes], Awaitable[None]], now: float | None = None
) -> EventProcessor:
    """A worker's processor with ``gate``, over a store where nothing was learned before (``now``: a fixed clock)."""
    from recstream import components
    from recstream.settings import Settings
    from stream.processor import EventProcessor

    settings = Settings()

    async def flush() -> None:
        return None

    processor = EventProcessor(
        store=NothingLearnedStore(),  # type: ignore[arg-type]
        new_learner=lambda: components.new_learner(settings),
        learner_from_bytes=lambda blob: components.learner_from_bytes(settings, blob),
        dead_letters=letters_one_by_one(dead_letter),
        flush=flush,
        ack=lambda handle: None,  # noqa: ARG005
        gate=gate,
        **({} if now is None else {"clock": lambda: now}),
    )
    await processor.start()
    return processor


def _process(gate: QualityGate, message: list[dict]) -> tuple[list[str], dict[str, int]]:
    """Process one batch message with ``gate``: (reasons quarantined in order, the batch's gate counts)."""
    from stream.processor import QUARANTINED, Record

    quarantined: list[str] = []

    async def dead_letter(kind: str, key: bytes | None, value: bytes) -> None:  # noqa: ARG001
        if kind == QUARANTINED:
            quarantined.append(json.loads(value)["reason"])

    async def run() -> dict[str, int]:
        processor = await _started_processor(gate, dead_letter)
        await processor.process([Record("events", 0, 0, None, json.dumps(message).encode())])
        return dict(processor._pending.gate_counts)

    return quarantined, asyncio.run(run())


def _event(event_id: str, item: str, ahead: float = 0.0) -> dict:
    return {"event_id": event_id, "user_id": "u1", "item_id": item, "type": "view", "ts": iso(ahead)}


def test_worker_judges_a_chunk_once_and_skips_repeats_of_what_passed() -> None:
    """A repeat of an event that passed earlier in the chunk is a duplicate, not judged; a repeat of
    one that was held is judged again (it may pass now); either way the gate counts each once."""
    gate = QualityGate([FutureTimestampRule(300.0), Recorder("recorder", "never")])
    recorder = gate.rules[1]
    assert isinstance(recorder, Recorder)
    message = [_event("a", "v1"), _event("a", "v1"), _event("f", "v2", ahead=7_200.0), _event("f", "v2", 7_200.0)]
    quarantined, counts = _process(gate, message)
    assert quarantined == ["future_timestamp", "future_timestamp"]
    assert counts == {"duplicate": 1, "future_timestamp": 2}
    assert gate.passed == 1 and gate.counts == {"future_timestamp": 2} and recorder.observed == ["a"]


# -- the behaviour rules against straightforward computations ------------------------------


def _features_by_hand(events: list[GateEvent]) -> tuple[list[tuple[float, ...]], dict[str, list[float]]]:
    """The anomaly rule's features of each of ``events`` (every one reaching the rule, none evicted), computed
    the plain way from its docstring, and each user's state at the end (clock, decayed count, like/share ratio,
    watch ratio, events). Between events the state's last four are kept as float32, as the rule's table keeps
    them; an event's features come from its new state before that rounding."""
    users: dict[str, list[float]] = {}
    out = []
    for e in events:
        positive = 1.0 if e.type in ("like", "share") else 0.0
        watch = None
        if e.watch_seconds is not None and e.item_duration_seconds:
            watch = min(e.watch_seconds / e.item_duration_seconds, 2.0) / 2.0
        if e.user_id not in users:
            gap, state = 1.0, [e.ts, 1.0, positive, 0.5 if watch is None else watch, 1.0]
        else:
            clock, decayed, pos_ratio, watch_ratio, n = users[e.user_id]
            elapsed = max(e.ts - clock, 0.0)  # a step back in time is no gap
            gap = min(math.log1p(elapsed) / math.log1p(3_600.0), 1.0)
            rate = 1.0 / (n + 1.0) if n < 20 else 0.05
            pos_ratio += rate * (positive - pos_ratio)
            if watch is not None:
                watch_ratio += rate * (watch - watch_ratio)
            state = [max(clock, e.ts), decayed * math.exp(-elapsed / 60.0) + 1.0, pos_ratio, watch_ratio, n + 1.0]
        users[e.user_id] = [state[0], *array("f", state[1:]).tolist()]
        out.append(
            (
                gap,
                min(state[1] / 60.0, 1.0),
                positive,
                state[2],
                state[3],
                min(math.log1p(state[4]) / math.log1p(1_000.0), 1.0),
            )
        )
    return out, users


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_anomaly_features_match_a_straightforward_computation_on_every_path(compiled: bool) -> None:
    """The features every passed event is learned with, and each user's state at the end, are those of the
    plain formulas: one event at a time, and by chunks (computed ahead for the chunk, dropped for a user an
    earlier rule held, events stamped before their user's clock included)."""
    rnd = random.Random(5)
    events, now = [], T0
    while len(events) < 3_000:
        now += rnd.choice([0.0, 0.2, 1.0, 4.0, 90.0])
        burst = rnd.random() < 0.05  # a bot's burst: user_rate holds most of it
        for _ in range(rnd.randint(5, 15) if burst else 1):
            user = f"bot{rnd.randrange(2)}" if burst else f"u{rnd.randrange(12)}"
            ts = now - rnd.choice([0.0, 0.0, 5.0, 300.0])  # some stamped before their user's clock
            watch, duration = rnd.choice([(12.0, 30.0), (None, 30.0), (80.0, 30.0), (5.0, 0.0), (3.0, None)])
            kind = rnd.choice(["view", "like", "share"])
            events.append(GateEvent(f"e{len(events)}", user, f"v{rnd.randrange(9)}", kind, ts, watch, duration))
    for chunked in (False, True):
        with loops(compiled):
            anomaly = _LearningRecorded(
                quantile=0.7, warmup_events=50, n_trees=3, height=5, window_size=30, learn_every=1, idle_seconds=4e6
            )
            gate = QualityGate([UserRateRule(window_seconds=10.0, max_positives=4, max_events=6), anomaly])
        learned = anomaly.points  # the features of each point learned (every passed event)
        holds: list[Hold | None] = []
        for start in range(0, len(events), 37):
            chunk = events[start : start + 37]
            if chunked:
                holds += gate.check_chunk(chunk, chunk[-1].ts)
            else:
                holds += [gate.check(e, chunk[-1].ts) for e in chunk]
        reached = [e for e, h in zip(events, holds, strict=True) if h is None or h.reason == "anomalous_behaviour"]
        expected, users = _features_by_hand(reached)
        passed = [x for x, e in zip(expected, reached, strict=True) if holds[events.index(e)] is None]
        assert gate.counts["user_rate"] > 100 and gate.counts["anomalous_behaviour"] > 100
        if compiled:  # the core learns the points itself (its _learn is given the first only): River's trees on them
            river = anomaly_module.HalfSpaceTrees(n_trees=3, height=5, window_size=30, seed=42)  # the rule's seed
            for x in passed:
                river.learn_one(dict(zip(FEATURES, x, strict=True)))
            assert len(learned) == 1 and anomaly.learned == len(passed)  # (its features: compared below)
            assert _masses(anomaly.trees) == _masses(river) and anomaly.trees.counter == river.counter
        else:
            assert len(learned) == len(passed)
        for got, want in zip(learned, passed[: len(learned)], strict=True):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert sorted(held_keys(anomaly._users, users)) == sorted(users)
        for user in users:
            state = anomaly._users[user]  # clock, then the four float32 fields, then when last seen
            assert state[:5] == pytest.approx(users[user], rel=1e-12)
        assert (anomaly.scored_ahead > 0.5 * len(events)) is (chunked and not compiled)


def _masses(trees: anomaly_module.HalfSpaceTrees) -> list[list[tuple[int, int]]]:
    return [[(node.l_mass, node.r_mass) for node in tree.iter_dfs()] for tree in trees.trees]


class _LearningRecorded(AnomalousBehaviourRule):
    """The rule, keeping the features of each point its trees learn."""

    def __init__(self, **settings: float) -> None:
        self.points: list[tuple[float, ...]] = []
        super().__init__(**settings)  # type: ignore[arg-type]

    def _learn(self, x: tuple[float, ...]) -> None:  # type: ignore[override]
        self.points.append(x)
        super()._learn(x)  # type: ignore[arg-type]


def _drive(rule: object, events: list[tuple[GateEvent, float]], reference: bool, judge: bool = False) -> list[object]:
    """Check and observe each event as the gate does (``judge``: by ``check_chunk`` of a gate of this rule alone);
    ``reference``: the rule's table of users is scanned for idle entries at every event (its remembered oldest
    entry forgotten), as before it remembered one."""
    found: list[object] = []
    for e, now in events:
        if reference:
            core = getattr(rule, "_core", None)  # the compiled rule's (tests/test_gate_compiled.py)
            if core is not None:
                core.oldest, core.oldest_seen = None, -math.inf
            else:
                rule._oldest, rule._oldest_seen = None, -math.inf  # type: ignore[attr-defined]
        if judge:  # the gate's last rule checks and observes in one call
            (hold,) = QualityGate([rule]).check_chunk([e], now)  # type: ignore[list-item]
        else:
            hold = rule.check(e, now)  # type: ignore[attr-defined]
            if hold is None:
                rule.observe(e, now)  # type: ignore[attr-defined]
            else:
                rule.observe_held(e, now, hold)  # type: ignore[attr-defined]
        found.append((None if hold is None else hold.detail, rule._users.in_order()))  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_behaviour_rules_evict_as_a_full_scan_would_when_the_clock_steps_back(compiled: bool) -> None:
    """Each behaviour rule remembers its table's oldest entry and scans the table only when that entry may be due:
    its table after every event is the one a scan at every event leaves, also when ``now`` steps back (an entry
    seen later then sits before one seen earlier) and the oldest entry is touched."""
    rnd = random.Random(11)
    events, now = [], T0
    for k in range(4_000):
        now += rnd.choice([0.0, 1.0, 3.0, 8.0])
        if rnd.random() < 0.05:
            now -= rnd.choice([5.0, 20.0, 60.0])  # the clock steps back
        user = f"u{rnd.randrange(9)}"
        events.append((GateEvent(f"e{k}", user, f"v{rnd.randrange(5)}", rnd.choice(["view", "like"]), now), now))
    for make in (
        lambda: UserRateRule(window_seconds=5.0, max_positives=3, max_events=5, max_users=6),
        lambda: ItemSurgeRule(
            new_user_events=4, min_new_positives=2.0, user_idle_seconds=12.0, max_users=6, max_items=3
        ),
        lambda: AnomalousBehaviourRule(
            quantile=0.8, warmup_events=20, n_trees=2, height=3, window_size=10, idle_seconds=12.0, max_users=6
        ),
    ):
        with loops(compiled):
            rules = [make() for _ in range(3)]
        assert all((rule._core is not None) is compiled for rule in rules)  # type: ignore[attr-defined]
        reference = _drive(rules[0], events, reference=True)
        assert _drive(rules[1], events, reference=False) == reference
        if isinstance(rules[2], AnomalousBehaviourRule):
            assert _drive(rules[2], events, reference=False, judge=True) == reference


def _one_event_messages(n: int, seed: int) -> list[bytes]:
    """The gate's test stream as one event per message, with an event sent again now and then (a producer's retry:
    sometimes right after it, sometimes much later)."""
    rnd = random.Random(seed)
    messages: list[bytes] = []
    for event, _ in stream(n, seed):
        body = {"event_id": event.event_id, "user_id": event.user_id, "item_id": event.item_id, "type": event.type}
        body["ts"] = datetime.fromtimestamp(event.ts, UTC).isoformat()
        if event.watch_seconds is not None:
            body["watch_seconds"] = event.watch_seconds
        if event.item_duration_seconds:
            body["item_duration_seconds"] = event.item_duration_seconds
        messages.append(json.dumps(body).encode())
        if rnd.random() < 0.03:
            messages.append(rnd.choice(messages[-3:] if rnd.random() < 0.5 else messages))
    return messages


def _process_one_event_messages(messages: list[bytes], seed: int, compiled: bool) -> tuple[list[object], int, int]:
    """Process ``messages`` in batches of random sizes (the same for any run with ``seed``): what came out (dead
    letters in order, the batch's gate counts, the events learned, the gate's state), the gate's chunk calls and
    the anomaly rule's scores taken from a chunk prepared ahead."""
    from stream.processor import Record

    with loops(compiled):
        gate = default_gate(SMALL)
    calls = 0
    check_chunk = gate.check_chunk

    def counting_check_chunk(*args: object) -> list[Hold | None]:
        nonlocal calls
        calls += 1
        return check_chunk(*args)  # type: ignore[arg-type]

    gate.check_chunk = counting_check_chunk  # type: ignore[method-assign]
    letters: list[tuple[str, str, str]] = []

    async def dead_letter(kind: str, key: bytes | None, value: bytes) -> None:  # noqa: ARG001
        letter = json.loads(value)
        letters.append((kind, letter["reason"], letter.get("detail", "")))

    async def run() -> tuple[list[object], int]:
        processor = await _started_processor(gate, dead_letter, now=T0 + 2_000.0)
        rnd = random.Random(seed)
        # now and then a run of messages an operator replays minus a rule (their override is in a header)
        overrides = [frozenset({"user_rate"}) if offset % 97 < 9 else frozenset() for offset in range(len(messages))]
        records = [
            Record("events", 0, offset, None, value, overrides=overrides[offset])
            for offset, value in enumerate(messages)
        ]
        start = batches = 0
        while start < len(records):
            size = rnd.choice([1, 3, 40, 120, 700])
            batch = records[start : start + size]
            if rnd.random() < 0.1:  # a message delivered twice in one batch
                batch.insert(rnd.randrange(len(batch) + 1), rnd.choice(batch))
            # now and then the model guard has paused learning: what passes the gate is quarantined, not learned
            processor.paused_since = T0 if batches % 5 == 3 else None
            await processor.process(batch)
            start += size
            batches += 1
        pending = processor._pending
        assert processor.learner is not None
        # how many scores the anomaly rule took from a chunk prepared ahead: a measure of the path, not of the outcome
        anomaly = next(rule for rule in gate.rules if isinstance(rule, AnomalousBehaviourRule))
        scored_ahead, anomaly.scored_ahead = anomaly.scored_ahead, 0
        learned = processor.learner.events_learned
        return [letters, dict(pending.gate_counts), sorted(pending.event_ids), learned, state(gate)], scored_ahead

    outcome, scored_ahead = asyncio.run(run())
    return outcome, calls, scored_ahead


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_worker_judges_one_event_messages_together_as_it_would_one_by_one(
    monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """Small messages (one event each, as a producer writing to Kafka directly sends them) are judged by the gate in
    one call per run of them, with the same outcome as judging each message alone: the same dead letters in order,
    counts, events learned and rule state; also for events sent again, a message delivered twice, messages replayed
    minus a rule, and while the model guard has paused learning."""
    import stream.processor

    messages = _one_event_messages(4_000, seed=5)
    together, calls_together, ahead_together = _process_one_event_messages(messages, seed=6, compiled=compiled)
    monkeypatch.setattr(stream.processor, "SMALL_RECORD_EVENTS", 0)  # every message judged alone, as before
    alone, calls_alone, ahead_alone = _process_one_event_messages(messages, seed=6, compiled=compiled)
    assert together == alone
    # judged together: far fewer gate calls, and the anomaly rule scores a run's events at once
    assert calls_alone > 3_000 and calls_together < calls_alone / 5
    assert ahead_alone == 0 and (ahead_together > 100) is not compiled  # the compiled core needs no batch ahead
    letters, counts = together[0], together[1]
    assert isinstance(letters, list) and isinstance(counts, dict)
    assert counts.get("duplicate", 0) > 10  # repeats of learned events were found (a held one is judged again)
    assert {"user_rate", "item_surge", "anomalous_behaviour", "future_timestamp"} <= set(counts), counts


def _paused_user_stream_letters(small_records: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """With learning paused, one user's views e1, e1 again, e2..e10 (one a message) against a limit of 9 events
    a minute: the dead letters, in order (kind, reason, event id)."""
    import stream.processor
    from stream.processor import Record

    monkeypatch.setattr(stream.processor, "SMALL_RECORD_EVENTS", small_records)
    gate = default_gate(GateConfig(user_rate_window_seconds=60, user_rate_max_events=9, user_rate_max_positives=100))
    letters: list[tuple[str, str, str]] = []

    async def dead_letter(kind: str, key: bytes | None, value: bytes) -> None:  # noqa: ARG001
        letter = json.loads(value)
        letters.append((kind, letter["reason"], letter["event"]["event_id"]))

    def view(event_id: str, item: str, at: float) -> bytes:
        ts = datetime.fromtimestamp(at, UTC).isoformat()
        return json.dumps({"event_id": event_id, "user_id": "u", "item_id": item, "type": "view", "ts": ts}).encode()

    async def run() -> None:
        processor = await _started_processor(gate, dead_letter, now=T0 + 100.0)
        processor.paused_since = T0
        values = [view("e1", "i1", T0), view("e1", "i1", T0)] + [view(f"e{n}", f"i{n}", T0 + n) for n in range(2, 11)]
        await processor.process([Record("events", 0, offset, None, value) for offset, value in enumerate(values)])

    asyncio.run(run())
    return letters


def test_a_repeat_while_learning_is_paused_is_judged_in_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """While paused, an event that passes is quarantined, not learned, so its repeat is judged again; judged with
    the messages around it, in its turn, the user's rate limit holds the same events as one message at a time."""
    alone = _paused_user_stream_letters(0, monkeypatch)
    assert [reason for _, reason, _ in alone].count("user_rate") == 2  # the limit was reached
    assert _paused_user_stream_letters(50, monkeypatch) == alone


def test_a_message_delivered_twice_in_one_batch_is_judged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import stream.processor
    from stream.processor import Record

    def passed(small_records: int) -> tuple[int, dict[str, int]]:
        monkeypatch.setattr(stream.processor, "SMALL_RECORD_EVENTS", small_records)
        gate = default_gate(GateConfig())

        async def dead_letter(kind: str, key: bytes | None, value: bytes) -> None:  # noqa: ARG001
            return None

        async def run() -> dict[str, int]:
            processor = await _started_processor(gate, dead_letter)
            a = Record("events", 0, 0, None, json.dumps(_event("a", "v1")).encode())
            b = Record("events", 0, 1, None, json.dumps({**_event("b", "v2"), "user_id": "u2"}).encode())
            await processor.process([a, b, a])
            return dict(processor._pending.gate_counts)

        counts = asyncio.run(run())
        return gate.passed, counts

    assert passed(0) == (2, {"duplicate": 1})
    assert passed(50) == (2, {"duplicate": 1})


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_the_ingest_gate_holds_what_the_stateless_rules_of_the_workers_gate_hold(compiled: bool) -> None:
    """``stateless_gate(config).stateless_holds``, what the API names at ingest, is what the worker's gate holds for a
    rule that reads only the event and the time, each event checked by those rules alone in order; nothing counted."""
    events = stream(6_000, seed=5)
    config = GateConfig(skip_after_full_watch_enabled=True)
    with loops(compiled):
        ingest = stateless_gate(config)
        worker = default_gate(config)
    stateless = [rule for rule in worker.rules if getattr(rule, "stateless", False)]
    assert [type(r) for r in stateless] == [type(r) for r in ingest.rules]  # the same rules, in the same order
    views = [e for e, _ in events]
    now = events[len(events) // 2][1]  # some events after it (future), and some long before it (too late)
    found = ingest.stateless_holds(views, now)
    expected = {}
    for row, view in enumerate(views):
        hold = next((h for rule in stateless if (h := rule.check(view, now)) is not None), None)
        if hold is not None:
            expected[row] = hold
    assert {row: (h.reason, h.detail) for row, h in found.items()} == {
        r: (h.reason, h.detail) for r, h in expected.items()
    }
    assert {h.reason for h in found.values()} >= {"future_timestamp", "watch_exceeds_duration"}, found
    assert ingest.counts == {} and ingest.passed == 0
    assert stateless_gate(GateConfig(enabled=False)).stateless_holds(views, now) == {}

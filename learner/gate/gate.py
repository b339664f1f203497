"""The quality gate: runs the rules in order on each event, counts holds by reason, and its configuration.

The first rule that holds an event decides its reason; an event that passes every rule is
observed by every rule (that is how rate windows and the anomaly model learn what normal is).
The rule that held an event may also count the attempt: if it has a method
``observe_held(event, now, hold)`` the gate calls it (rate limits count held attempts, so a
sender who keeps going stays held; the anomaly rule feeds the score to its quantile).

``overrides`` is how an operator replays quarantined events "minus the rule they override": a
rule whose codes are all in ``overrides`` is skipped for that call; the other rules still apply.

>>> gate = default_gate(GateConfig())
>>> event = GateEvent("e1", "u1", "v1", "like", ts=1_000_000.0)
>>> gate.check(event, now=1_000_000.0) is None
True
>>> gate.check(GateEvent("e2", "u1", "v1", "like", ts=2_000_000.0), now=1_000_000.0).reason
'future_timestamp'
>>> gate.check(GateEvent("e2", "u1", "v1", "like", ts=2_000_000.0), now=1_000_000.0,
...            overrides=frozenset({"future_timestamp"})) is None
True
>>> gate.passed, gate.counts
(2, {'future_timestamp': 1})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from learner import kernels
from learner.gate.base import GateEvent, GateRule, Hold
from learner.gate.behaviour import AnomalousBehaviourRule, ItemSurgeRule, UserRateRule
from learner.gate.model_guard import ModelGuard
from learner.gate.plausibility import LikeWithoutViewRule, SkipAfterFullWatchRule, WatchExceedsDurationRule
from learner.gate.time_rules import FutureTimestampRule, LatenessRule, StreamClock

__all__ = ["GateConfig", "QualityGate", "default_gate", "default_model_guard", "default_stream_clock", "stateless_gate"]

_Check = Callable[[GateEvent, float], Hold | None]
_OnHold = Callable[[GateEvent, float, Hold], None]
_Holds = Callable[[Sequence[GateEvent], float], dict[int, Hold]]
_Observe = Callable[[GateEvent, float], None]


class _Plan:
    """The gate's rules for one set of overrides, arranged for :meth:`QualityGate.check_chunk`.

    Stateless rules (``stateless = True``: ``check`` reads only the event and ``now``, ``observe``
    does nothing, no ``observe_held``) judge a whole chunk at once (their ``holds``); the others
    (``checks``) are called event by event, in order. An event a stateless rule holds is checked
    only by the stateful rules before it (``before[its position]``), so the first hold in the
    gate's order still decides.
    """

    def __init__(self, rules: Sequence[GateRule], overrides: frozenset[str]) -> None:
        self.stateless: list[tuple[int, _Holds]] = []
        self.checks: list[tuple[_Check, _OnHold | None]] = []
        self.before: dict[int, list[tuple[_Check, _OnHold | None]]] = {}
        self.observers: list[_Observe] = []
        self.preparers: list[Callable[[Sequence[GateEvent], float], None]] = []
        # the last rule that checks, if it can check and observe in one call (``judge``): called after ``checks``
        self.judge: _Check | None = None
        last = None
        for position, rule in enumerate(rules):
            if _is_stateless(rule):
                if not _overridden(rule, overrides):
                    self.stateless.append((position, getattr(rule, "holds", None) or _holds_of(rule.check)))
                    self.before[position] = list(self.checks)
                continue
            self.observers.append(rule.observe)  # an overridden rule still observes what passes, as in check
            if not _overridden(rule, overrides):
                self.checks.append((rule.check, getattr(rule, "observe_held", None)))
                last = rule
                if hasattr(rule, "prepare"):
                    self.preparers.append(rule.prepare)
        if last is not None and hasattr(last, "judge"):
            # an event it lets pass has passed every rule that checks (any stateless one holding it was found
            # before): it observes at once, the others after it (the rules' states are independent)
            self.judge = last.judge
            self.checks.pop()
            self.observers.remove(last.observe)


def _overridden(rule: GateRule, overrides: frozenset[str]) -> bool:
    return bool(overrides) and frozenset(rule.codes) <= overrides


def _is_stateless(rule: GateRule) -> bool:
    return getattr(rule, "stateless", False) is True and not hasattr(rule, "observe_held")


def _holds_of(check: _Check) -> _Holds:
    """``holds`` for a stateless rule that has only ``check``."""

    def holds(events: Sequence[GateEvent], now: float) -> dict[int, Hold]:
        found = {}
        for row, event in enumerate(events):
            hold = check(event, now)
            if hold is not None:
                found[row] = hold
        return found

    return holds


class QualityGate:
    """Rules in order; ``check`` returns the first :class:`Hold` or None (and then every rule observes the event)."""

    def __init__(self, rules: Sequence[GateRule], enabled: bool = True) -> None:
        self.rules = list(rules)
        self.enabled = enabled
        self.counts: dict[str, int] = {}
        self.passed = 0
        # per rule: its codes, its check, and what it does with an event it held (None: nothing)
        self._checks: list[tuple[frozenset[str], _Check, _OnHold | None]] = [
            (frozenset(rule.codes), rule.check, getattr(rule, "observe_held", None)) for rule in self.rules
        ]
        # a stateless rule's observe does nothing: not called
        self._observers = [rule.observe for rule in self.rules if not _is_stateless(rule)]
        self._preparers = [(frozenset(rule.codes), rule.prepare) for rule in self.rules if hasattr(rule, "prepare")]
        self._prefetchers = [rule.prefetch for rule in self.rules if hasattr(rule, "prefetch")]
        self._plans: dict[frozenset[str], _Plan] = {}

    def stateless_holds(self, events: Sequence[GateEvent], now: float) -> dict[int, Hold]:
        """The rows of ``events`` that a rule reading only the event and ``now`` holds, each with the first such rule's
        hold: events this gate holds at ``now`` whatever it saw before (a rule keeping state may hold one first, for
        its own reason). Counts nothing and changes no rule's state. Empty when the gate is off.

        >>> gate = stateless_gate(GateConfig())
        >>> late = GateEvent("e1", "u1", "v1", "like", ts=0.0)
        >>> {row: hold.reason for row, hold in gate.stateless_holds([late, late._replace(ts=9e5)], now=1e6).items()}
        {0: 'too_late'}
        """
        if not self.enabled:
            return {}
        plan = self._plans.get(frozenset())
        if plan is None:
            plan = self._plans[frozenset()] = _Plan(self.rules, frozenset())
        found: dict[int, Hold] = {}
        for _, holds in plan.stateless:
            for row, hold in holds(events, now).items():
                found.setdefault(row, hold)
        return found

    def prepare(self, events: Sequence[GateEvent], now: float, overrides: frozenset[str] = frozenset()) -> None:
        """Let the rules that can work on a batch ahead of its checks do so (``prepare(events, now)``).

        Optional and without effect on any verdict: the events are then checked one by one, in
        order, as always (the anomaly rule without its compiled core scores them all at once; see its
        ``prepare``).
        """
        if self.enabled:
            for codes, prepare in self._preparers:
                if not (overrides and codes <= overrides):
                    prepare(events, now)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every reason code this gate can emit, in rule order."""
        return tuple(code for rule in self.rules for code in rule.codes)

    def check(self, event: GateEvent, now: float, overrides: frozenset[str] = frozenset()) -> Hold | None:
        if self.enabled:
            for codes, check, on_hold in self._checks:
                if overrides and codes <= overrides:
                    continue
                hold = check(event, now)
                if hold is not None:
                    self.counts[hold.reason] = self.counts.get(hold.reason, 0) + 1
                    if on_hold is not None:
                        on_hold(event, now, hold)
                    return hold
            for observe in self._observers:
                observe(event, now)
        self.passed += 1
        return None

    def check_chunk(
        self, events: Sequence[GateEvent], now: float, overrides: frozenset[str] = frozenset()
    ) -> list[Hold | None]:
        """The verdict on each of ``events``, in order: what ``prepare(events, now, overrides)`` then
        ``check(event, now, overrides)`` on each would return, with the same counts and rule state.

        Cheaper per event (the worker's path): the stateless rules judge the whole chunk in one
        pass each, and only the rules that keep state are called event by event.
        """
        if not self.enabled:
            self.passed += len(events)
            return [None] * len(events)
        plan = self._plans.get(overrides)
        if plan is None:
            plan = self._plans[overrides] = _Plan(self.rules, overrides)
        rows = events if type(events) is list else list(events)
        for prefetch in self._prefetchers:  # (the tables are cold: the learner ran since the last chunk)
            prefetch(rows)
        for prepare in plan.preparers:
            prepare(events, now)
        early: dict[int, tuple[int, Hold]] = {}  # row -> the first stateless rule that holds it (position, hold)
        for position, holds in plan.stateless:
            for row, hold in holds(events, now).items():
                early.setdefault(row, (position, hold))
        verdicts: list[Hold | None] = []
        kernel = kernels.compiled()
        try:
            if kernel is not None:  # the same loop compiled: ~0.2 us an event less
                kernel.gate_loop(
                    rows, now, plan.checks, early, plan.before, plan.judge, plan.observers, self.counts, verdicts
                )
            else:
                self._loop(events, now, plan, early, verdicts)
        finally:
            self.passed += verdicts.count(None)  # those before a rule that raised, too
        return verdicts

    def _loop(
        self,
        events: Sequence[GateEvent],
        now: float,
        plan: _Plan,
        early: dict[int, tuple[int, Hold]],
        verdicts: list[Hold | None],
    ) -> None:
        """:meth:`check_chunk`'s loop over its events (``kernel.gate_loop`` where the kernels are built): each
        event's verdict appended to ``verdicts``, each hold counted."""
        checks, observers, counts, judge = plan.checks, plan.observers, self.counts, plan.judge
        for row, event in enumerate(events):
            hold, rules = None, checks
            if early and row in early:
                position, hold = early[row]
                rules = plan.before[position]
            for check, on_hold in rules:
                found = check(event, now)
                if found is not None:
                    hold = found
                    if on_hold is not None:
                        on_hold(event, now, found)
                    break
            else:
                if judge is not None and hold is None:  # every other rule let it pass (see _Plan)
                    hold = judge(event, now)
            if hold is None:
                for observe in observers:
                    observe(event, now)
            else:
                counts[hold.reason] = counts.get(hold.reason, 0) + 1
            verdicts.append(hold)

    @property
    def held(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class GateConfig:
    """Every threshold of the gate and the model guard. Defaults hold <= 1% of a clean stream (docs/quality-gate.md)."""

    enabled: bool = True
    # time (future_timestamp, too_late)
    future_skew_seconds: float = 300.0
    max_lateness_seconds: float = 7 * 86_400.0
    replay_max_gap_seconds: float = 90 * 86_400.0
    # plausibility (watch_exceeds_duration, skip_after_full_watch, like_without_view)
    watch_duration_factor: float = 3.0
    watch_slack_seconds: float = 60.0
    skip_after_full_watch_enabled: bool = True
    skip_full_watch_fraction: float = 1.0
    like_without_view_enabled: bool = False
    like_without_view_window_seconds: float = 3_600.0
    like_without_view_max_pairs: int = 1_000_000
    # user_rate
    user_rate_window_seconds: float = 60.0
    user_rate_max_positives: int = 30
    user_rate_max_events: int = 120
    user_rate_max_users: int = 1_000_000
    # item_surge
    item_surge_new_user_events: int = 20
    item_surge_min_new_positives: float = 20.0
    item_surge_min_new_share: float = 0.8
    item_surge_min_lift: float = 0.3
    item_surge_max_new_concentration: float = 0.2
    item_surge_item_memory: int = 100
    item_surge_stream_memory: int = 20_000
    item_surge_warmup_positives: int = 20_000
    item_surge_user_idle_seconds: float = 86_400.0
    item_surge_max_items: int = 500_000
    item_surge_max_users: int = 500_000
    item_surge_established_capacity: int = 5_000_000
    # anomalous_behaviour
    anomaly_enabled: bool = True
    anomaly_quantile: float = 0.999
    anomaly_warmup_events: int = 10_000
    anomaly_trees: int = 5
    anomaly_tree_height: int = 8
    anomaly_window: int = 1_000
    anomaly_learn_every: int = 4
    anomaly_idle_seconds: float = 1_800.0
    anomaly_max_users: int = 1_000_000
    anomaly_seed: int = 42
    # model guard
    guard_recent_window: int = 1_000
    guard_reference_window: int = 20_000
    guard_min_reference: int = 2_000
    guard_degrade_ratio: float = 1.3
    guard_degrade_margin: float = 0.15
    guard_resume_ratio: float = 1.1
    guard_resume_events: int = 2_000


def _stateless_rules(c: GateConfig) -> list[GateRule]:
    """The rules that read only the event and the time, in the gate's order."""
    rules: list[GateRule] = [
        FutureTimestampRule(c.future_skew_seconds),
        LatenessRule(c.max_lateness_seconds),
        WatchExceedsDurationRule(c.watch_duration_factor, c.watch_slack_seconds),
    ]
    if c.skip_after_full_watch_enabled:
        rules.append(SkipAfterFullWatchRule(c.skip_full_watch_fraction))
    return rules


def stateless_gate(config: GateConfig | None = None) -> QualityGate:
    """The rules of :func:`default_gate` that read only the event and the time (no state, no memory): what the API
    checks an event against as it takes it in, to say that the worker's gate will hold it."""
    c = config or GateConfig()
    return QualityGate(_stateless_rules(c), enabled=c.enabled)


def default_gate(config: GateConfig | None = None) -> QualityGate:
    """The gate the worker runs: cheap stateless rules first, then the behaviour rules."""
    c = config or GateConfig()
    rules = _stateless_rules(c)
    if c.like_without_view_enabled:
        rules.append(LikeWithoutViewRule(c.like_without_view_window_seconds, c.like_without_view_max_pairs))
    rules.append(
        UserRateRule(
            window_seconds=c.user_rate_window_seconds,
            max_positives=c.user_rate_max_positives,
            max_events=c.user_rate_max_events,
            max_users=c.user_rate_max_users,
        )
    )
    rules.append(
        ItemSurgeRule(
            new_user_events=c.item_surge_new_user_events,
            min_new_positives=c.item_surge_min_new_positives,
            min_new_share=c.item_surge_min_new_share,
            min_lift=c.item_surge_min_lift,
            max_new_concentration=c.item_surge_max_new_concentration,
            item_memory=c.item_surge_item_memory,
            stream_memory=c.item_surge_stream_memory,
            warmup_positives=c.item_surge_warmup_positives,
            user_idle_seconds=c.item_surge_user_idle_seconds,
            max_items=c.item_surge_max_items,
            max_users=c.item_surge_max_users,
            established_capacity=c.item_surge_established_capacity,
        )
    )
    if c.anomaly_enabled:
        rules.append(
            AnomalousBehaviourRule(
                quantile=c.anomaly_quantile,
                warmup_events=c.anomaly_warmup_events,
                n_trees=c.anomaly_trees,
                height=c.anomaly_tree_height,
                window_size=c.anomaly_window,
                learn_every=c.anomaly_learn_every,
                idle_seconds=c.anomaly_idle_seconds,
                max_users=c.anomaly_max_users,
                seed=c.anomaly_seed,
            )
        )
    return QualityGate(rules, enabled=c.enabled)


def default_model_guard(config: GateConfig | None = None) -> ModelGuard:
    c = config or GateConfig()
    return ModelGuard(
        recent_window=c.guard_recent_window,
        reference_window=c.guard_reference_window,
        min_reference=c.guard_min_reference,
        degrade_ratio=c.guard_degrade_ratio,
        degrade_margin=c.guard_degrade_margin,
        resume_ratio=c.guard_resume_ratio,
        resume_events=c.guard_resume_events,
    )


def default_stream_clock(config: GateConfig | None = None) -> StreamClock:
    """``now`` for replays (``recstream evaluate``): ``arrive(arrival)`` per event when arrival times are known,
    else ``now(ts)`` before the check and ``advance(ts)`` for every event that passed."""
    return StreamClock((config or GateConfig()).replay_max_gap_seconds)

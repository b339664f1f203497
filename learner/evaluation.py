"""Replay evaluation: recommend, score, then learn, over a time-ordered stream of events.

The protocol, for every event in stream order, through an :class:`OnlineLearner` (the code the
worker runs) and the ranking the API serves (the model if it knows the user, else popularity):

* Consecutive events with the same user, item and time are one interaction (a MovieLens rating
  becomes a view, a like and maybe a share); all of them are scored before any is learned.
* A user's first positive for an item (an interaction holding an event of the target rule's label 1)
  is *scored* with the rank the item had in the user's top ``k`` at their **first interaction with
  it**, computed then, before that interaction is learned, leaving out every item they interacted
  with earlier. That is the last moment the API could have shown it: it never shows an item the
  user saw, so a like after a view is ranked at the view (ranked at the like, the item would be
  one the API cannot show, and the model would just have learned the view of it). For a rating
  (view and like at once) both moments are the same. The score counts at the positive's place in
  the stream (second half, learning curve).
* Then every event is learned, labelled or not, with its time as the stream clock, so time
  rules see the stream's "now", never the wall clock.

Metrics: HR@k, NDCG@k and MRR over all scored positives, over the second half of the stream
(by event position) and over users with at least ``active_min`` earlier interactions (when
ranked); pointwise AUC and log loss over the labelled interactions, one each (positive if one of
its events is, else negative), predicted before any of its events is learned (None where a class
is missing, e.g. MovieLens has no negatives); catalogue coverage (share of
the items seen in the stream that were ever recommended); events per second; and HR@k per
window of stream position (the learning curve).

Before any model sees them, the events pass the worker's checks once (:func:`gate_stream`), in
the worker's order: duplicates by ``event_id`` within a retention window, then the quality gate
(:class:`learner.gate.gate.QualityGate`) with "now" the stream's clock; only what passes is
replayed, and the same accepted stream is fed to every model (the contract is checked when the
file is read, see :mod:`recstream.evaluate`).

Hand-checkable example: ann views "a" then "b"; then bob, new to the model, likes "b". Bob is
answered from popularity, where nothing has a like yet, so items come in order of first
appearance, "a" then "b": a hit at rank 2.

>>> from learner.online_learner import OnlineLearner
>>> events = [ReplayEvent("ann", "a", "view", 1.0), ReplayEvent("ann", "b", "view", 2.0),
...           ReplayEvent("bob", "b", "like", 3.0)]
>>> result = replay(events, OnlineLearner())
>>> result.overall.scored, result.overall.hit_rate, result.overall.mrr, result.from_popularity
(1, 1.0, 0.5, 1)
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from learner.exploration import ThompsonExplorer
from learner.gate.base import GateEvent
from learner.id_index import IdIndex
from learner.online_learner import OnlineLearner
from learner.ranking import top_rows_and_rank

if TYPE_CHECKING:
    from learner.gate.gate import QualityGate
    from learner.gate.time_rules import StreamClock

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class ReplayEvent:
    """One event of the contract, reduced to what learning and the gate need; ``ts`` in seconds since the epoch.

    ``event_id`` is what duplicate detection compares; an empty id is never a duplicate.
    ``arrival`` is when the event reached the broker, in seconds since the epoch (live: the
    worker's wall clock when it reads the event; a client cannot choose it). None: unknown, as
    for a recorded stream of the events alone, where ``ts`` stands in (see :func:`gate_stream`).
    """

    user: str
    item: str
    type: str
    ts: float
    watch_seconds: float | None = None
    item_duration_seconds: float | None = None
    event_id: str = ""
    arrival: float | None = None


@dataclass
class RankingMetrics:
    """Hit rate, NDCG and reciprocal rank at ``k`` for positives with one relevant item each."""

    k: int
    scored: int = 0
    hits: int = 0
    dcg: float = 0.0
    reciprocal_ranks: float = 0.0

    def add(self, rank: float) -> None:
        """``rank`` is 1-based; ``inf`` when the item could not be ranked at all."""
        self.scored += 1
        if rank <= self.k:
            self.hits += 1
            self.dcg += 1.0 / math.log2(rank + 1.0)
        if math.isfinite(rank):
            self.reciprocal_ranks += 1.0 / rank

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.scored if self.scored else None

    @property
    def ndcg(self) -> float | None:
        return self.dcg / self.scored if self.scored else None

    @property
    def mrr(self) -> float | None:
        return self.reciprocal_ranks / self.scored if self.scored else None


@dataclass
class ReplayResult:
    events: int
    seconds: float
    k: int
    overall: RankingMetrics
    second_half: RankingMetrics
    active_users: RankingMetrics
    auc: float | None
    logloss: float | None
    coverage: float | None
    catalogue: int
    from_popularity: int  # scored positives answered by the popularity fallback (user unknown to the model)
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """The metric fields of one model's row in the evaluation report."""
        k = self.k
        row: dict[str, Any] = {}
        for suffix, m in (("", self.overall), ("_second_half", self.second_half), ("_active_users", self.active_users)):
            row[f"hr_at_{k}{suffix}"] = m.hit_rate
            row[f"ndcg_at_{k}{suffix}"] = m.ndcg
            row[f"mrr{suffix}"] = m.mrr
            row[f"scored{suffix}"] = m.scored
        row.update(
            auc=self.auc,
            logloss=self.logloss,
            coverage=self.coverage,
            catalogue=self.catalogue,
            from_popularity=self.from_popularity,
            events_per_second=self.events_per_second,
            seconds=self.seconds,
            learning_curve=self.curve,
        )
        return row


class SeenRows:
    """Per user, the rows in one :class:`IdIndex` of the items they interacted with, as a numpy array.

    An item the index does not know yet waits, and gets its row when the index learns it, so
    exclusion never needs a per-request loop over the user's history.
    """

    def __init__(self, index: IdIndex) -> None:
        self._index = index
        self._synced = len(index)
        self._rows: dict[str, tuple[np.ndarray, int]] = {}
        self._waiting: dict[str, list[str]] = {}

    def add(self, user: str, item: str) -> None:
        """Record one (user, item) pair; call it once per pair."""
        row = self._index.get(item)
        if row is None:
            self._waiting.setdefault(item, []).append(user)
        else:
            self._append(user, row)

    def rows(self, user: str) -> np.ndarray:
        self._sync()
        entry = self._rows.get(user)
        return _EMPTY if entry is None else entry[0][: entry[1]]

    def _sync(self) -> None:
        ids = self._index.ids
        n = len(ids)
        if n > self._synced:
            if self._waiting:
                for row in range(self._synced, n):
                    for user in self._waiting.pop(ids[row], ()):
                        self._append(user, row)
            self._synced = n

    def _append(self, user: str, row: int) -> None:
        array, n = self._rows.get(user, (_EMPTY, 0))
        if n == len(array):
            grown = np.zeros(max(8, 2 * n), dtype=np.int64)
            grown[:n] = array[:n]
            array = grown
        array[n] = row
        self._rows[user] = (array, n + 1)


class Recommend:
    """Top-``k`` for a user exactly as :class:`learner.serving.ServingModel` would answer, plus a target's rank."""

    def __init__(self, learner: OnlineLearner, k: int, explorer: ThompsonExplorer | None = None) -> None:
        self.learner = learner
        self.k = k
        self.explorer = explorer  # if given, some of the model's places go to rarely shown items
        self._model_seen = SeenRows(learner.model.items)
        # popularity counts over the model's item index when the model shares it (learner.online_learner)
        shared = learner.popularity.items is learner.model.items
        self._popular_seen = self._model_seen if shared else SeenRows(learner.popularity.items)
        self._model_shown = np.zeros(0, dtype=bool)
        self._popular_shown = np.zeros(0, dtype=bool)

    def add_seen(self, user: str, item: str) -> None:
        self._model_seen.add(user, item)
        if self._popular_seen is not self._model_seen:
            self._popular_seen.add(user, item)

    def top(self, user: str, target: str | None = None) -> tuple[list[str], float, bool]:
        """``(item ids best first, rank of target or inf, from_popularity)``; seen items left out (the replay ranks a
        target before the user's first interaction with it: never one of them)."""
        index, rows, rank, from_popularity = self._select(user, target)
        return [index.ids[r] for r in rows], rank, from_popularity

    def rank(self, user: str, target: str) -> tuple[float, bool]:
        """``(rank of target or inf, from_popularity)``, recording the list for coverage."""
        _, _, rank, from_popularity = self._select(user, target)
        return rank, from_popularity

    def liked(self, target: str) -> None:
        """``target`` was liked (a positive): the explorer learns it."""
        if self.explorer is not None:
            row = self.learner.model.items.get(target)
            if row is not None:
                self.explorer.observe_liked(row)

    def _select(self, user: str, target: str | None) -> tuple[IdIndex, np.ndarray, float, bool]:
        model = self.learner.model
        if model.knows_user(user) and len(model.items):
            index = model.items
            rows, rank = self._top_model(model.score_all(user), self._model_seen.rows(user), index.get(target))
            self._model_shown = _mark(self._model_shown, rows, len(index))
            return index, rows, rank, False
        popularity = self.learner.popularity
        index = popularity.items
        rows, rank = self._top_popular(popularity.counts, self._popular_seen.rows(user), index.get(target))
        self._popular_shown = _mark(self._popular_shown, rows, len(index))
        return index, rows, rank, True

    def shown_ids(self) -> set[str]:
        """Every item that appeared in some top-``k`` so far."""
        shown = {self.learner.model.items.ids[r] for r in np.flatnonzero(self._model_shown)}
        shown.update(self.learner.popularity.items.ids[r] for r in np.flatnonzero(self._popular_shown))
        return shown

    def _top_model(self, raw: np.ndarray, excluded: np.ndarray, target: int | None) -> tuple[np.ndarray, float]:
        # The serving path's selection (learner.ranking.top_rows). ``raw`` is score_all's new array: the
        # excluded rows are set to -inf in it (no copy).
        best, greater, equal = top_rows_and_rank(raw, self.k, excluded, target)
        if best.size == 0:
            return _EMPTY, math.inf
        if self.explorer is not None:
            neg = np.negative(raw, dtype=np.float64)
            neg[excluded] = np.inf  # only rows that may be shown
            best = self.explorer.rerank(best, neg, best.size)
            self.explorer.observe_shown(best)
        if target is None:
            return best, math.inf
        rows = best.tolist()  # a list's search: numpy's costs more than a short list's
        if target in rows:
            return best, float(rows.index(target) + 1)
        # mid-rank among the rows that may be shown (the target is not excluded; the excluded rows are -inf: never
        # above its score, and equal to it only if it is -inf too)
        better, ties = greater, equal - 1
        if raw[target] == -np.inf:
            ties -= int(np.unique(excluded).size)
        return best, max(float(self.k + 1), 1.0 + better + ties / 2.0)

    def _top_popular(self, counts: np.ndarray, excluded: np.ndarray, target: int | None) -> tuple[np.ndarray, float]:
        # Same order as ServingModel.popular: most positives first, ties in order of first appearance.
        scores = np.array(counts, dtype=np.float64)
        scores[excluded] = -np.inf
        order = np.argsort(-scores, kind="stable")
        n_candidates = int(np.count_nonzero(scores > -np.inf))
        best = order[: min(self.k, n_candidates)]
        if target is None:
            return best, math.inf
        return best, float(np.flatnonzero(order == target)[0] + 1)


# -- the worker's checks, once for every model -------------------------------------------------

DUPLICATE = "duplicate"


@dataclass
class GatedStream:
    """What :func:`gate_stream` let through, and what it dropped: duplicates, and holds by reason code."""

    accepted: list[ReplayEvent]
    checked: int  # events that entered (valid under the contract)
    duplicates: int = 0
    held: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one hold's detail per reason
    seconds: float = 0.0
    gate_enabled: bool = False
    dedupe_enabled: bool = False

    @property
    def events_per_second(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else math.inf


def gate_stream(
    events: Iterable[ReplayEvent],
    gate: QualityGate | None = None,
    *,
    clock: StreamClock | None = None,
    dedupe_retention_seconds: float | None = None,
) -> GatedStream:
    """The worker's steps between the contract and learning, over a recorded stream, in one pass.

    For each event in order: "now" is the replay's stand-in for the worker's wall clock. When the
    event has an ``arrival`` it is ``clock.arrive(arrival)``: the latest arrival so far, monotone,
    moved by every event whether it passes or not, and never by a ``ts`` (which the sender
    chooses). Otherwise it is ``clock.now(ts)``, the stream clock's estimate from the events'
    own times (which a passed event moves, ``clock.advance(ts)``). Without a clock, now is the
    arrival, else the ``ts``. An ``event_id`` that passed within ``dedupe_retention_seconds``
    before now is a duplicate (None: no duplicate check); then ``gate.check(event, now)`` (None:
    no rules). A passed event is remembered for duplicate detection; as in the worker, held
    events are not remembered, so a re-sent held event is checked (and held) again.

    >>> from learner.gate.gate import GateConfig, default_gate, default_stream_clock
    >>> events = [ReplayEvent("u1", "v1", "like", 1_000.0, event_id="e1"),
    ...           ReplayEvent("u1", "v1", "like", 1_000.0, event_id="e1"),          # re-sent
    ...           ReplayEvent("u2", "v2", "like", 9_000_000_000.0, event_id="e2")]  # year 2255
    >>> gated = gate_stream(events, default_gate(GateConfig()), clock=default_stream_clock(),
    ...                     dedupe_retention_seconds=3_600)
    >>> [e.event_id for e in gated.accepted], gated.duplicates, dict(gated.held)
    (['e1'], 1, {'future_timestamp': 1})

    With arrival times, an event stamped a day ahead of when it arrived is held, and the events
    after it are judged against their arrival, not against the forged stamp:

    >>> events = [ReplayEvent("u1", "v1", "view", 1_000.0, arrival=1_000.0),
    ...           ReplayEvent("u2", "v2", "like", 1_000.0 + 86_400, arrival=1_010.0),  # forged: a day ahead
    ...           ReplayEvent("u1", "v3", "view", 1_020.0, arrival=1_020.0)]
    >>> gated = gate_stream(events, default_gate(GateConfig()), clock=default_stream_clock())
    >>> [e.item for e in gated.accepted], dict(gated.held)
    (['v1', 'v3'], {'future_timestamp': 1})
    """
    accepted: list[ReplayEvent] = []
    gated = GatedStream(
        accepted,
        0,
        gate_enabled=gate is not None and gate.enabled,
        dedupe_enabled=dedupe_retention_seconds is not None,
    )
    learned: OrderedDict[str, float] = OrderedDict()  # event id -> now when it passed, oldest first
    retention = dedupe_retention_seconds
    held, examples = gated.held, gated.examples
    checked = duplicates = 0
    started = time.perf_counter()
    for event in events:
        checked += 1
        ts = event.ts
        arrival = event.arrival
        if clock is None:
            now = ts if arrival is None else arrival
        elif arrival is None:
            now = clock.now(ts)
        else:
            now = clock.arrive(arrival)
        event_id = event.event_id
        if retention is not None:
            horizon = now - retention
            while learned and next(iter(learned.values())) < horizon:
                learned.popitem(last=False)
            if event_id and event_id in learned:
                duplicates += 1
                continue
        if gate is not None:
            hold = gate.check(
                GateEvent(
                    event_id,
                    event.user,
                    event.item,
                    event.type,
                    ts,
                    event.watch_seconds,
                    event.item_duration_seconds,
                ),
                now,
            )
            if hold is not None:
                held[hold.reason] += 1
                examples.setdefault(hold.reason, hold.detail)
                continue
        if clock is not None and arrival is None:
            clock.advance(ts)
        if retention is not None and event_id:
            learned[event_id] = now
            learned.move_to_end(event_id)
        accepted.append(event)
    gated.seconds = time.perf_counter() - started
    gated.checked, gated.duplicates = checked, duplicates
    return gated


# -- the replay ----------------------------------------------------------------------------------


def replay(
    events: Sequence[ReplayEvent],
    learner: OnlineLearner,
    *,
    k: int = 10,
    active_min: int = 5,
    curve_windows: int = 20,
    progress: Callable[[int, int], None] | None = None,
    progress_every: int = 20_000,
    explorer: ThompsonExplorer | None = None,
    score_user: Callable[[str], bool] | None = None,
    second_half_from: float | None = None,
) -> ReplayResult:
    """Replay ``events`` through ``learner`` with the recommend-score-learn protocol (module doc).

    With an ``explorer``, the lists scored are the explored ones, so the result shows its cost.
    ``score_user`` limits scoring to the users it accepts (every event is still learned): to
    measure what ordinary users get from a stream with injected traffic. ``second_half_from``
    starts the second half at this ``ts`` instead of the middle position, so streams with
    different injected traffic split at the same moment.
    """
    n = len(events)
    rule = learner.rule
    recommend = Recommend(learner, k, explorer)
    overall, second_half, active = RankingMetrics(k), RankingMetrics(k), RankingMetrics(k)
    curve_hits = np.zeros(curve_windows, dtype=np.int64)
    curve_scored = np.zeros(curve_windows, dtype=np.int64)
    seen: dict[str, set[str]] = {}
    labels: list[float] = []
    predictions: list[float] = []
    catalogue: set[str] = set()
    from_popularity = 0
    # The interactions (runs of events with one user, item and time), their labels, and where each scored
    # positive is ranked: at its user's first interaction with its item, the last moment the API could have shown it
    # (a like after a view of the item is ranked at the view: ranked at the like, the item would be one the API never
    # shows, and the model would have just learned the view of it).
    groups: list[tuple[int, int, float | None]] = []  # (start, end, the interaction's label)
    ranked_at: set[int] = set()  # the starts of the interactions at which a rank is taken
    first: dict[tuple[str, str], int] = {}
    positive: set[tuple[str, str]] = set()
    pos = 0
    while pos < n:
        head = events[pos]
        end = pos + 1
        while end < n and events[end].item == head.item and events[end].user == head.user and events[end].ts == head.ts:
            end += 1
        label = _interaction_label(
            [rule.label(e.type, e.watch_seconds, e.item_duration_seconds) for e in events[pos:end]]
        )
        groups.append((pos, end, label))
        pair = (head.user, head.item)
        first.setdefault(pair, pos)
        if label == 1.0 and pair not in positive:
            positive.add(pair)
            ranked_at.add(first[pair])
        pos = end
    del first, positive
    ranks: dict[tuple[str, str], tuple[float, bool, bool]] = {}  # taken, its positive still to come

    next_progress = progress_every
    started = time.perf_counter()
    for pos, end, label in groups:
        first_event = events[pos]
        user, item, ts = first_event.user, first_event.item, first_event.ts
        group = events[pos:end]
        user_seen = seen.get(user)
        if user_seen is None:
            user_seen = seen[user] = set()
        if pos in ranked_at and (score_user is None or score_user(user)):
            rank, fallback = recommend.rank(user, item)
            ranks[(user, item)] = (rank, fallback, len(user_seen) >= active_min)
        if label == 1.0:
            taken = ranks.pop((user, item), None)
            if taken is not None:  # its first positive: scored now, at its place in the stream
                rank, fallback, was_active = taken
                recommend.liked(item)
                from_popularity += fallback
                overall.add(rank)
                if (pos >= n / 2) if second_half_from is None else (ts >= second_half_from):
                    second_half.add(rank)
                if was_active:
                    active.add(rank)
                window = min(pos * curve_windows // n, curve_windows - 1)
                curve_scored[window] += 1
                curve_hits[window] += rank <= k
        if label is not None:  # one prediction an interaction, made before any of its events is learned
            labels.append(label)
            predictions.append(learner.model.predict_one(user, item))
        for event in group:
            learner.learn(
                event.user, event.item, event.type, event.watch_seconds, event.item_duration_seconds, ts=event.ts
            )
        if item not in user_seen:
            user_seen.add(item)
            recommend.add_seen(user, item)
        catalogue.add(item)
        pos = end
        if progress is not None and pos >= next_progress:
            progress(pos, n)
            next_progress += progress_every
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(n, n)
    y_true, y_pred = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    shown = recommend.shown_ids() if catalogue else set()
    curve = [
        {
            "position": round((w + 1) * n / curve_windows),
            f"hr_at_{k}": float(curve_hits[w] / curve_scored[w]) if curve_scored[w] else None,
            "scored": int(curve_scored[w]),
        }
        for w in range(curve_windows)
    ]
    return ReplayResult(
        events=n,
        seconds=seconds,
        k=k,
        overall=overall,
        second_half=second_half,
        active_users=active,
        auc=roc_auc(y_true, y_pred),
        logloss=log_loss(y_true, y_pred),
        coverage=len(shown & catalogue) / len(catalogue) if catalogue else None,
        catalogue=len(catalogue),
        from_popularity=from_popularity,
        curve=curve,
    )


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None unless both classes occur.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    positive = y_true > 0.5
    n_pos = int(positive.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(y_score, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mid_ranks = upper - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = mid_ranks[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _interaction_label(labels: list[float | None]) -> float | None:
    """One label for an interaction's events: positive if one is, else negative if one is, else none.

    >>> _interaction_label([None, 1.0, 1.0]), _interaction_label([None, 0.0]), _interaction_label([None])
    (1.0, 0.0, None)
    """
    known = [y for y in labels if y is not None]
    if not known:
        return None
    return 1.0 if any(y > 0.5 for y in known) else 0.0


def log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = 1e-7) -> float | None:
    """Mean binary cross-entropy with predictions clipped to ``[eps, 1 - eps]``; None when empty.

    >>> round(log_loss(np.array([1.0, 0.0]), np.array([0.5, 0.5])), 4)
    0.6931
    """
    if not y_true.size:
        return None
    p = np.clip(y_pred, eps, 1.0 - eps)
    positive = y_true > 0.5
    return float(-np.mean(np.where(positive, np.log(p), np.log1p(-p))))


def _mark(shown: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    if size > len(shown):
        grown = np.zeros(max(size, 2 * len(shown)), dtype=bool)
        grown[: len(shown)] = shown
        shown = grown
    shown[rows] = True
    return shown

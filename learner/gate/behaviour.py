"""Behaviour rules: who sends what, how fast, and to which item.

* :class:`UserRateRule` (``user_rate``): one user's events, or likes+shares, per sliding window
  beyond what a person does in a feed.
* :class:`ItemSurgeRule` (``item_surge``): interactions (views, likes, shares) with one item coming
  mostly from users new to the system, far more than in general (promotion attacks, brigading, bot
  farms); a surging item then cools down, every new-user interaction with it held for a while.
* :class:`AnomalousBehaviourRule` (``anomalous_behaviour``): River's Half-Space Trees scoring
  per-event behaviour features, holding scores above a running quantile once warmed up.

Windows run on each user's own clock (the latest ``ts`` seen from them), so a batch of events
buffered offline is judged by when it happened, and stamping events in the past does not evade
a window. Rules count their own holds as attempts (``observe_held``, called by the gate on the
rule that held the event), so a bot that keeps sending stays held instead of leaking through a
window's worth of events at a time. State of users and items idle beyond each rule's horizon is
evicted, and every map has a hard cap (oldest-idle evicted first); the bounds are in each class.
Each rule's table of users (and of items) is a :class:`learner.gate.records.Records`: an index
of id -> record number (the eviction order) over one flat ``array('d')`` of the records' float64
fields (and one ``array('f')`` of their float32 ones, where a table has some), read and written
in place. The sizes below are measured with the compiled tables (``python -m bench.memory
--records``), each with its table entry (which keeps the key's fingerprint, not its text: the
same for an id of any length).
"""

from __future__ import annotations

import hashlib
import math
import struct
from array import array
from collections.abc import Sequence
from functools import partial

import numpy as np
from river import anomaly, stats

from learner import kernels
from learner.gate.base import GateEvent, Hold
from learner.gate.hst_batch import FlatTrees
from learner.gate.records import SEEN_SPAN, SEEN_TICKS, Records

_exp, _log1p = math.exp, math.log1p
#: The longest a users table keeps an idle user, in seconds: a tick less than its records' seen stamps' span
#: (learner.gate.records.SEEN_SPAN), so that a stamp kept a span before a moved base is always past the horizon
MAX_IDLE_SECONDS = (SEEN_SPAN - SEEN_TICKS) / SEEN_TICKS
POSITIVE_TYPES = frozenset({"like", "share"})
#: The anomaly rule's features, in the order of its feature tuples (and of the dicts River's trees see).
FEATURES = ("gap", "rate", "positive", "positive_ratio", "watch_ratio", "history")
#: One event's features, in the order of FEATURES.
Features = tuple[float, float, float, float, float, float]


#: Fields of a record in :class:`UserRateRule`, :class:`ItemSurgeRule` (users, items) and
#: :class:`AnomalousBehaviourRule`: float64 ones (``*_FIELDS``), then float32 ones (``*_COUNTS``) if it has any, then
#: int32 ones (an item's clocks; a user's one, when last seen, a stamp: Records.stamp)
_RATE_FIELDS, _RATE_COUNTS, _SURGE_USER_FIELDS, _SURGE_USER_COUNTS = 1, 4, 0, 1
_SURGE_ITEM_COUNTS, _SURGE_ITEM_CLOCKS, _ANOMALY_FIELDS, _ANOMALY_COUNTS = 4, 3, 1, 4
#: Where a users table's record keeps when the user was last seen (its one int32 field)
_RATE_SEEN, _SURGE_USER_SEEN = _RATE_FIELDS + _RATE_COUNTS, _SURGE_USER_FIELDS + _SURGE_USER_COUNTS
_ANOMALY_SEEN = _ANOMALY_FIELDS + _ANOMALY_COUNTS
#: :class:`ItemSurgeRule` keeps an item's clocks (its cool-down's end, and per channel when its attempts were last
#: updated; counts of interactions) as int32 from a base per channel. When a channel's clock is this far past its base
#: the base moves up to it (every item's clocks shifted down, in one pass), and a clock then more than this far behind
#: is kept at this far: a gap this long decays a count to 0.0 in float64 for any ``stream_memory`` the rule accepts
#: (at most 1,000,000), so verdicts and counts are those of the exact clocks.
_CLOCK_SPAN = 2**30
#: The anomaly rule's float32 fields of a user's next state, rounded as its table stores them (so that the next
#: state computed ahead, in :meth:`AnomalousBehaviourRule.prepare`, is the one read back).
_ANOMALY_ROUND = struct.Struct("4f")


class UserRateRule:
    """Holds a user's events beyond ``max_events`` (any type) or ``max_positives`` (likes+shares) per window.

    Sliding-window counters: two fixed windows per user, the previous one weighted by how much of
    it still overlaps the sliding window (error bounded by the previous window's count, no
    timestamps stored). Memory: one record (~0.05 kB: the user's clock as float64, the four counts
    as float32, exact below 2**24, when last seen as an int32 stamp) per user active in the last two
    windows, at most ``max_users``.

    Where the compiled loops are built (:mod:`learner.kernels`, when the rule is made), ``check``,
    ``observe`` and ``observe_held`` are those of :class:`learner._kernels.RateCore`: the same
    operations on the same table (the methods below are the reference, and the path without them).
    The settings are read when the rule is made: change them by making another rule.

    >>> rule = UserRateRule(window_seconds=60, max_positives=3, max_events=100)
    >>> likes = [GateEvent(f"e{i}", "u1", f"v{i}", "like", 1_000.0 + i) for i in range(4)]
    >>> for e in likes[:3]:
    ...     assert rule.check(e, e.ts) is None
    ...     rule.observe(e, e.ts)
    >>> rule.check(likes[3], likes[3].ts).reason
    'user_rate'
    >>> rule.check(GateEvent("e9", "u1", "v9", "like", 1_130.0), 1_130.0) is None   # two windows later
    True
    """

    codes: tuple[str, ...] = ("user_rate",)

    def __init__(
        self,
        window_seconds: float = 60.0,
        max_positives: int = 30,
        max_events: int = 120,
        max_users: int = 1_000_000,
        positive_types: frozenset[str] = POSITIVE_TYPES,
    ) -> None:
        if window_seconds <= 0 or max_positives < 1 or max_events < 1:
            raise ValueError("window_seconds, max_positives and max_events must be positive")
        if 2 * window_seconds > MAX_IDLE_SECONDS:
            raise ValueError(f"window_seconds must be at most {MAX_IDLE_SECONDS / 2:,.1f} (half a table's idle limit)")
        self.window_seconds = window_seconds
        self.max_positives = max_positives
        self.max_events = max_events
        self.max_users = max_users
        self.positive_types = frozenset(positive_types)
        # user -> [user's clock (latest ts)], as float32 (whole numbers, exact below 2**24) [previous events, current
        # events, previous positives, current positives], and as an int32 stamp [now when last seen]; least recently
        # seen first. The counts are those of the window the user's clock is in (clock // window_seconds) and of the
        # one before.
        self._users = Records(_RATE_FIELDS, narrow=_RATE_COUNTS, ints=1)
        self._oldest, self._oldest_seen = None, -math.inf  # _users' first record's number (see Records.evict)
        kernel = kernels.compiled()
        self._core = None
        if kernel is not None:
            self._core = core = kernel.RateCore(
                self._users,
                window_seconds,
                max_events,
                max_positives,
                max_users,
                self.positive_types,
                partial(_rate_hold, window_seconds, "events", max_events),
                partial(_rate_hold, window_seconds, "likes/shares", max_positives),
            )
            self.check = core.check  # type: ignore[method-assign]
            self.observe = core.observe  # type: ignore[method-assign]
            self.observe_held = core.observe  # type: ignore[method-assign]  # (event, now, hold): counts the same
            del self._oldest, self._oldest_seen  # the core's (core.oldest): none left here to read stale

    def prefetch(self, events: list[GateEvent]) -> None:
        """Fetch ahead the users' records a chunk's checks will read (:meth:`Records.prefetch`)."""
        self._users.prefetch(events, 1)

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002 - windows run on the user's clock
        users = self._users
        r = users.index.get(event.user_id)
        if r is None:
            return None  # nothing counted, and both limits are at least 1
        n, c = users.narrow, r * _RATE_COUNTS
        # the estimated counts in the window ending at the user's clock (the latest ts seen from them)
        ts, user_clock = event.ts, users.data[r * _RATE_FIELDS]
        clock = ts if ts > user_clock else user_clock
        window = self.window_seconds
        index, counted = clock // window, user_clock // window
        current = index == counted
        if current:
            previous_e, current_e = n[c], n[c + 1]
        elif index == counted + 1:
            previous_e, current_e = n[c + 1], 0.0
        else:
            return None  # both windows are over: nothing counted
        overlap = 1.0 - (clock - index * window) / window
        events = previous_e * overlap + current_e
        if events + 1 > self.max_events:
            return self._hold(events, "events", self.max_events)
        if event.type in self.positive_types:
            previous_p, current_p = (n[c + 2], n[c + 3]) if current else (n[c + 3], 0.0)
            positives = previous_p * overlap + current_p
            if positives + 1 > self.max_positives:
                return self._hold(positives, "likes/shares", self.max_positives)
        return None

    def _hold(self, count: float, what: str, limit: int) -> Hold:
        return _rate_hold(self.window_seconds, what, limit, count)

    def observe(self, event: GateEvent, now: float) -> None:
        users, user = self._users, event.user_id
        seen = users.stamp(now)  # (first: a time that cannot be stamped changes nothing)
        index = users.index
        r = index.get(user)
        ts = event.ts
        d, n = users.data, users.narrow
        if r is None:
            clock = ts
            r = users.add(user, (clock, 0.0, 0.0, 0.0, 0.0, 0))
            c = r * _RATE_COUNTS
        else:
            index.move_to_end(user)  # most recently seen last
            c = r * _RATE_COUNTS
            user_clock = d[r * _RATE_FIELDS]
            clock = ts if ts > user_clock else user_clock
            window = self.window_seconds
            window_index, counted = clock // window, user_clock // window
            if window_index > counted + 1:  # both windows are over
                n[c], n[c + 1], n[c + 2], n[c + 3] = 0.0, 0.0, 0.0, 0.0
            elif window_index == counted + 1:  # the current window becomes the previous one
                n[c], n[c + 1], n[c + 2], n[c + 3] = n[c + 1], 0.0, n[c + 3], 0.0
        n[c + 1] += 1.0
        if event.type in self.positive_types:
            n[c + 3] += 1.0
        d[r * _RATE_FIELDS] = clock
        users.whole[r] = seen
        horizon = now - 2 * self.window_seconds
        if r == self._oldest or not (self._oldest_seen >= horizon and len(index) <= self.max_users):
            self._oldest, self._oldest_seen = users.evict(horizon, self.max_users, _RATE_SEEN)

    def observe_held(self, event: GateEvent, now: float, hold: Hold) -> None:  # noqa: ARG002 - any reason counts
        """A held attempt still counts: a sender who keeps going stays over the limit."""
        self.observe(event, now)

    def __len__(self) -> int:
        return len(self._users)


def _rate_hold(window: float, what: str, limit: int, count: float) -> Hold:
    # (count: the user's before this event, the previous window's weighted by its overlap, so not a whole number:
    # with this event it is over the limit, which a rounded count could hide: rounded up, to a tenth)
    shown = math.ceil(round((count + 1) * 10, 6)) / 10
    return Hold(
        "user_rate",
        f"this event would make {shown:.1f} {what} from this user in the last {window:.0f} s (limit {limit})",
    )


class EstablishedUsers:
    """Users with enough history, in two rotating Bloom filters: fixed memory for any number of users.

    When the current filter has taken ``capacity`` users it becomes the previous one and a fresh
    filter starts; :meth:`add` on a member found only in the previous filter copies it into the
    current one, so active users stay known and users idle for two generations are forgotten (they look new again
    until they re-establish). Memory: 2 × ~1.2 bytes per user of ``capacity`` at a 1% false-positive
    rate (a new user taken for established 1% of the time), the previous filter's half made at the first rotation
    (until then it would be all zeros, which holds no one). Hashes are stable across processes.

    >>> users = EstablishedUsers(capacity=100)
    >>> users.add("u1"); "u1" in users, "u2" in users
    (True, False)
    """

    def __init__(self, capacity: int = 5_000_000, false_positive_rate: float = 0.01) -> None:
        if capacity < 1 or not 0 < false_positive_rate < 1:
            raise ValueError("capacity must be >= 1 and 0 < false_positive_rate < 1")
        self.capacity = capacity
        self.bits = max(64, math.ceil(-capacity * math.log(false_positive_rate) / math.log(2) ** 2))
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))
        self._current = bytearray((self.bits + 7) // 8)
        self._previous: bytearray | None = None  # (no previous generation before the first rotation)
        self._inserted = 0
        # the last user's positions: the item-surge rule asks about a new user in its check, then in observe
        self._last_user: str | None = None
        self._last_positions: list[int] = []

    def _positions(self, user: str) -> list[int]:
        if user == self._last_user:
            return self._last_positions
        digest = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little")
        h1, h2 = digest & 0xFFFFFFFF, (digest >> 32) | 1
        bits = self.bits
        positions = [(h1 + i * h2) % bits for i in range(self.hashes)]
        self._last_user, self._last_positions = user, positions
        return positions

    @staticmethod
    def _has(table: bytearray, positions: list[int]) -> bool:
        for p in positions:  # a loop, not all(genexpr): this runs for every new user's first events
            if not table[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def __contains__(self, user: object) -> bool:
        if not isinstance(user, str):
            return False
        positions = self._positions(user)
        previous = self._previous
        return self._has(self._current, positions) or (previous is not None and self._has(previous, positions))

    def add(self, user: str) -> None:
        """Insert ``user``, or refresh it into the current generation (call for active established users)."""
        positions = self._positions(user)
        if not self._has(self._current, positions):
            self._insert(positions)

    def _insert(self, positions: list[int]) -> None:
        if self._inserted >= self.capacity:
            self._previous, self._current = self._current, bytearray(len(self._current))
            self._inserted = 0
        table = self._current
        for p in positions:
            table[p >> 3] |= 1 << (p & 7)
        self._inserted += 1

    @property
    def nbytes(self) -> int:
        return len(self._current) + (0 if self._previous is None else len(self._previous))

    _HEADER = struct.Struct("<4sQQQQ")
    _MAGIC = b"EUB1"

    def to_bytes(self) -> bytes:
        """Both generations, to persist across restarts (a restart that forgets them is a cold start)."""
        header = self._HEADER.pack(self._MAGIC, self.capacity, self.bits, self.hashes, self._inserted)
        previous = bytes(len(self._current)) if self._previous is None else bytes(self._previous)
        return header + bytes(self._current) + previous

    @classmethod
    def from_bytes(cls, blob: bytes) -> EstablishedUsers:
        """Restore :meth:`to_bytes`; raises ValueError on anything else.

        >>> users = EstablishedUsers(capacity=100); users.add("u1")
        >>> "u1" in EstablishedUsers.from_bytes(users.to_bytes())
        True
        """
        size = cls._HEADER.size
        if len(blob) < size:
            raise ValueError("not an EstablishedUsers snapshot")
        magic, capacity, bits, hashes, inserted = cls._HEADER.unpack_from(blob)
        table = (bits + 7) // 8
        if magic != cls._MAGIC or len(blob) != size + 2 * table:
            raise ValueError("not an EstablishedUsers snapshot")
        users = cls(capacity)
        if (users.bits, users.hashes) != (bits, hashes):
            raise ValueError("snapshot written with another false-positive rate")
        users._current = bytearray(blob[size : size + table])
        previous = blob[size + table :]
        users._previous = bytearray(previous) if previous.strip(b"\0") else None  # (all zeros: holds no one)
        users._inserted = inserted
        return users


class ItemSurgeRule:
    """Holds new users' interactions with an item they flock to far more than new users usually do.

    A user is *new* until ``new_user_events`` of their events have passed the gate. Every
    interaction type is judged (``judged_types``, None: all), views included: a recommender
    that learns from views (co-occurrence does, at the weight of a like) is promoted by a farm
    that only views an item as surely as by one that likes it. An interaction from a new user is
    held when the item has at least ``min_new_positives`` new-user interactions (weighted, this
    one included) and either

    * **skewed audience**: they are at least ``min_new_share`` of the item's own last
      ~``item_memory`` interactions, and that share exceeds the stream's share of new-user
      interactions (over its last ~``stream_memory`` passed ones) by at least ``min_lift``. This
      catches a farm of any speed on any item, once ``warmup_positives`` judged interactions have
      passed: at a cold start (a new system, or a restart without the established users, see
      :class:`EstablishedUsers`) every user is new, and the popular items' audience is newer than
      the heavy users who dominate the stream (MovieLens 1996 tripped it on Pulp Fiction and
      Apollo 13);
    * **concentration**: the item has drawn at least ``max_new_concentration`` of all new-user
      interaction attempts over the stream's last ~``stream_memory`` interactions, or of all
      new-user like/share attempts over its last ~``stream_memory`` likes/shares (counted apart:
      a farm's likes all go to its target, while its views are spread over camouflage; real new
      users spread both over many items). This works at a cold start too.

    Once this rule holds an interaction with an item, the item **cools down**: every new-user
    interaction with it is held until ``cooldown`` more interactions have been judged (default
    ``stream_memory``), each hold restarting the count, so an attack that slipped in below the
    thresholds stops growing the moment it is seen and stays held while it lasts.

    Held attempts count for the item (and for the concentration), so an attack stays held while
    it lasts; interactions of established users are never held by this rule. Windows count
    interactions, not seconds, so a replay's quiet days neither reset nor dilute them.

    Memory (measured, table entries included): one record (~0.05 kB: its clocks as int32 from a base
    per channel, its decayed counts as float32) per item, least recently
    touched forgotten beyond ``max_items``; one (~0.03 kB) per user seen in the last
    ``user_idle_seconds``, at most ``max_users`` (an evicted user's progress towards established is
    lost; established users stay known through :class:`EstablishedUsers`, 2 × 1.2 bytes ×
    ``established_capacity``).

    Where the compiled loops are built (:mod:`learner.kernels`, when the rule is made), ``check``,
    ``observe`` and ``observe_held`` are those of :class:`learner._kernels.SurgeCore`: the same
    operations on the same tables, with the stream's counters kept in it (``stream_new_share``,
    ``clocks``); the methods below are the reference, and the path without them. The settings are
    read when the rule is made.

    >>> rule = ItemSurgeRule(new_user_events=2, min_new_positives=2)
    >>> bots = [GateEvent(f"b{i}", f"bot{i}", "target", "like", 1_000.0 + i) for i in range(3)]
    >>> for e in bots[:2]:
    ...     assert rule.check(e, e.ts) is None
    ...     rule.observe(e, e.ts)
    >>> hold = rule.check(bots[2], bots[2].ts); hold.reason  # every new-user like so far went to one item
    'item_surge'
    >>> rule.observe_held(bots[2], bots[2].ts, hold)         # now cooling down: a new user's view is held too
    >>> rule.check(GateEvent("v", "bot9", "target", "view", 1_010.0), 1_010.0).detail[:40]
    'new-user view of an item cooling down af'
    """

    codes: tuple[str, ...] = ("item_surge",)

    def __init__(
        self,
        new_user_events: int = 20,
        min_new_positives: float = 20.0,
        min_new_share: float = 0.8,
        min_lift: float = 0.3,
        max_new_concentration: float = 0.2,
        item_memory: int = 100,
        stream_memory: int = 20_000,
        warmup_positives: int = 20_000,
        user_idle_seconds: float = 86_400.0,
        max_items: int = 500_000,
        max_users: int = 500_000,
        established_capacity: int = 5_000_000,
        judged_types: frozenset[str] | None = None,
        positive_types: frozenset[str] = POSITIVE_TYPES,
        cooldown: int | None = None,
    ) -> None:
        if new_user_events < 1 or item_memory < 1 or stream_memory < 1:
            raise ValueError("new_user_events, item_memory and stream_memory must be >= 1")
        if new_user_events > 2**24:  # a user's count is a float32, exact up to 2**24
            raise ValueError("new_user_events must be at most 16,777,216")
        if stream_memory > 1_000_000:  # (what _CLOCK_SPAN's exactness asks)
            raise ValueError("stream_memory must be at most 1,000,000")
        if cooldown is not None and not (0 <= cooldown <= 2**30 and cooldown == int(cooldown)):
            raise ValueError("cooldown must be a whole number from 0 to 2**30")
        if user_idle_seconds > MAX_IDLE_SECONDS:
            raise ValueError(f"user_idle_seconds must be at most {MAX_IDLE_SECONDS:,.0f} (a table's idle limit)")
        self.new_user_events = new_user_events
        self.min_new_positives = min_new_positives
        self.min_new_share = min_new_share
        self.min_lift = min_lift
        self.max_new_concentration = max_new_concentration
        self.warmup_positives = warmup_positives
        self._item_decay = 1.0 - 1.0 / item_memory
        self._stream_decay = 1.0 - 1.0 / stream_memory
        self._share_rate_floor = 1.0 - self._stream_decay  # the stream's new-user share: weight of the newest
        self.user_idle_seconds = user_idle_seconds
        self.max_items = max_items
        self.max_users = max_users
        self.judged_types = None if judged_types is None else frozenset(judged_types)
        self.positive_types = frozenset(positive_types)
        self.cooldown = int(stream_memory if cooldown is None else cooldown)
        self.established = EstablishedUsers(established_capacity)
        self._stream_new_share = 1.0  # of passed interactions; a fresh worker starts with "everyone is new"
        self._passed = 0
        # per channel (0: every judged interaction, 1: likes/shares): new-user attempts weighted over the
        # channel's last interactions, and the channel's clock (interactions counted so far)
        self._stream_new = [0.0, 0.0]
        self._clocks = [0, 0]
        # per channel, the clock its items' clocks are kept from (_CLOCK_SPAN)
        self._span, self._bases = _CLOCK_SPAN, [0, 0]
        # item -> as float32, [new-user interactions, all interactions] weighted over the item's own last
        #         interactions, then per channel new-user attempts weighted over the channel's; as int32 from the
        #         channel's base, [cool-down end (on the all channel's clock), then per channel its clock when last
        #         updated]; least recently touched first
        self._items = Records(0, narrow=_SURGE_ITEM_COUNTS, ints=_SURGE_ITEM_CLOCKS)
        # user -> as float32, [events passed (capped at new_user_events: a whole number, exact below 2**24)], and as an
        # int32 stamp [now when last seen]; established users stay here as a cache in front of the Bloom filters while
        # active
        self._users = Records(_SURGE_USER_FIELDS, narrow=_SURGE_USER_COUNTS, ints=1)
        self._oldest, self._oldest_seen = None, -math.inf  # _users' first record's number (see Records.evict)
        kernel = kernels.compiled()
        self._core = None
        if kernel is not None:  # the same steps compiled, on the same tables (the stream's counters kept there)
            self._core = core = kernel.SurgeCore(
                self._users,
                self._items,
                self.established,
                self.judged_types,
                self.positive_types,
                _surge_cooling_hold,
                _surge_share_hold,
                _surge_concentration_hold,
                new_user_events,
                min_new_positives,
                min_new_share,
                min_lift,
                max_new_concentration,
                warmup_positives,
                self._item_decay,
                self._stream_decay,
                self._share_rate_floor,
                user_idle_seconds,
                max_items,
                max_users,
                self.cooldown,
                self._span,
            )
            self.check = core.check  # type: ignore[method-assign]
            self.observe = core.observe  # type: ignore[method-assign]
            self.observe_held = core.observe_held  # type: ignore[method-assign]
            # the core's (stream_new_share, clocks, core.passed, ...): none left here to read stale
            del self._stream_new_share, self._passed, self._stream_new, self._clocks, self._bases
            del self._oldest, self._oldest_seen

    def prefetch(self, events: list[GateEvent]) -> None:
        """Fetch ahead the users' and items' records a chunk's checks will read (:meth:`Records.prefetch`)."""
        self._users.prefetch(events, 1)
        self._items.prefetch(events, 2)

    def check(self, event: GateEvent, now: float) -> Hold | None:  # noqa: ARG002 - windows count interactions
        judged = self.judged_types
        if judged is not None and event.type not in judged:
            return None
        user = event.user_id
        users = self._users
        known = users.index.get(user)
        if known is not None:
            if users.narrow[known * _SURGE_USER_COUNTS] >= self.new_user_events:
                return None  # an established user
        elif user in self.established:
            return None
        items = self._items
        r = items.index.get(event.item_id)
        if r is None:
            return None if self.min_new_positives > 1 else self._hold(1.0, 1.0, 1.0)
        n, c = items.narrow, r * _SURGE_ITEM_COUNTS
        cooling_until = self._bases[0] + items.whole[r * _SURGE_ITEM_CLOCKS]
        if cooling_until > self._clocks[0]:
            return _surge_cooling_hold(event.type, cooling_until - self._clocks[0])
        decay = self._item_decay
        new = n[c] * decay + 1.0
        if new < self.min_new_positives:
            return None
        share = new / (n[c + 1] * decay + 1.0)
        if (
            share >= self.min_new_share
            and share - self._stream_new_share >= self.min_lift
            and self._passed >= self.warmup_positives
        ):
            return self._hold(new, share, None)
        for channel in (0, 1) if event.type in self.positive_types else (0,):
            concentration = self._concentration(r, channel)
            if concentration is not None and concentration >= self.max_new_concentration:
                return self._hold(new, share, concentration, channel)
        return None

    def _concentration(self, r: int, channel: int) -> float | None:
        """The share of item record ``r`` of the channel's recent new-user attempts, this one included (None: too
        few)."""
        decay = self._stream_decay
        items = self._items
        attempts = items.narrow[r * _SURGE_ITEM_COUNTS + 2 + channel]
        updated = self._bases[channel] + items.whole[r * _SURGE_ITEM_CLOCKS + 1 + channel]
        item_in_stream = attempts * decay ** (self._clocks[channel] - updated) * decay + 1.0
        if item_in_stream < self.min_new_positives:
            return None
        return item_in_stream / (self._stream_new[channel] * decay + 1.0)

    def _hold(self, new: float, share: float, concentration: float | None, channel: int = 0) -> Hold:
        if concentration is None:
            return _surge_share_hold(new, share, self._stream_new_share)
        return _surge_concentration_hold(concentration, channel)

    def _count(self, is_new: bool, item: str, positive: bool) -> int:
        """Count an interaction with ``item`` (a new user's if ``is_new``) in its record and the stream's channels;
        returns its record's number."""
        decay = self._stream_decay
        clocks, stream_new, bases = self._clocks, self._stream_new, self._bases
        items = self._items
        index = items.index
        r = index.get(item)
        if r is None:  # (no cool-down: its end a span before the base)
            r = items.add(item, (0.0, 0.0, 0.0, 0.0, -self._span, clocks[0] - bases[0], clocks[1] - bases[1]))
            if len(index) > self.max_items:  # the oldest: this item's own only with max_items 0 (then the record
                items.pop_oldest()  # written below is free, never read, and fully written again when taken)
        else:
            index.move_to_end(item)  # most recently touched last
        w, b, n, c = items.whole, r * _SURGE_ITEM_CLOCKS, items.narrow, r * _SURGE_ITEM_COUNTS
        # channel 0 (every judged interaction), then channel 1 (likes/shares): new-user attempts at c + 2 and c + 3,
        # the channel's clock when they were last updated at b + 1 and b + 2 (from the channel's base)
        clock = clocks[0] = clocks[0] + 1
        if clock - bases[0] >= self._span:
            self._rebase(0, clock)
        stream_new[0] = stream_new[0] * decay + is_new
        n[c + 2] = n[c + 2] * decay ** (clock - (bases[0] + w[b + 1])) + is_new
        w[b + 1] = clock - bases[0]
        if positive:
            clock = clocks[1] = clocks[1] + 1
            if clock - bases[1] >= self._span:
                self._rebase(1, clock)
            stream_new[1] = stream_new[1] * decay + is_new
            n[c + 3] = n[c + 3] * decay ** (clock - (bases[1] + w[b + 2])) + is_new
            w[b + 2] = clock - bases[1]
        item_decay = self._item_decay
        n[c] = n[c] * item_decay + is_new
        n[c + 1] = n[c + 1] * item_decay + 1.0
        return r

    def observe(self, event: GateEvent, now: float) -> None:
        user = event.user_id
        users = self._users
        seen = users.stamp(now)  # (first: a time that cannot be stamped changes nothing)
        index = users.index
        r = index.get(user)
        if r is None:
            if user in self.established:
                self.established.add(user)  # refresh into the current generation
                r = users.add(user, (self.new_user_events, 0))
            else:
                r = users.add(user, (0.0, 0))
        else:
            index.move_to_end(user)  # most recently seen last
        n, c = users.narrow, r * _SURGE_USER_COUNTS
        new_user_events = self.new_user_events
        judged = self.judged_types
        if judged is None or event.type in judged:
            is_new = n[c] < new_user_events
            self._count(is_new, event.item_id, event.type in self.positive_types)
            self._passed = passed = self._passed + 1
            rate = 1.0 / passed
            floor = self._share_rate_floor
            if floor > rate:  # max(1 / passed, floor): a plain mean until the window fills
                rate = floor
            self._stream_new_share += rate * (is_new - self._stream_new_share)
        if n[c] < new_user_events:
            n[c] += 1.0
            if n[c] >= new_user_events:
                self.established.add(user)
        users.whole[r] = seen
        horizon = now - self.user_idle_seconds
        if r == self._oldest or not (self._oldest_seen >= horizon and len(index) <= self.max_users):
            self._oldest, self._oldest_seen = users.evict(horizon, self.max_users, _SURGE_USER_SEEN)

    def observe_held(self, event: GateEvent, now: float, hold: Hold) -> None:  # noqa: ARG002
        """A held new-user interaction still counts for its item, and (re)starts the item's cool-down."""
        r = self._count(True, event.item_id, event.type in self.positive_types)
        self._items.whole[r * _SURGE_ITEM_CLOCKS] = self._clocks[0] + self.cooldown - self._bases[0]

    def _rebase(self, channel: int, clock: int) -> None:
        """Move ``channel``'s base up to ``clock``: its items' clocks shifted down (none below a span behind)."""
        self._items.shift_ints((0, 1) if channel == 0 else (2,), clock - self._bases[channel], -self._span)
        self._bases[channel] = clock

    @property
    def tracked(self) -> dict[str, int]:
        """Users and items its tables hold."""
        return {"users": len(self._users), "items": len(self._items)}

    @property
    def stream_new_share(self) -> float:
        """Share of passed judged interactions that came from new users, over the stream's recent ones."""
        return self._stream_new_share if self._core is None else self._core.stream_new_share

    @property
    def clocks(self) -> list[int]:
        """Interactions counted so far: judged ones, and likes/shares."""
        return list(self._clocks) if self._core is None else self._core.clocks

    @property
    def bases(self) -> list[int]:
        """Per channel, the clock the items' clocks are kept from."""
        return list(self._bases) if self._core is None else self._core.bases


def _surge_cooling_hold(kind: str, remaining: float) -> Hold:
    return Hold(
        "item_surge",
        f"new-user {kind} of an item cooling down after a surge from new users ({remaining:.0f} interactions to go)",
    )


def _surge_share_hold(new: float, share: float, stream: float) -> Hold:
    why = f"{share:.0%} of its recent interactions ({new:.0f}) against {stream:.0%} for the stream"
    return Hold("item_surge", f"surge from new users: {why}")


def _surge_concentration_hold(concentration: float, channel: int) -> Hold:
    kind = "likes/shares" if channel else "interactions"
    return Hold(
        "item_surge", f"surge from new users: {concentration:.0%} of all recent new-user {kind} went to this item"
    )


class AnomalousBehaviourRule:
    """Holds events whose behaviour features score above the running ``quantile`` of Half-Space Trees scores.

    Features of the user at this event, each in [0, 1]: log-scaled seconds since their previous
    event (``gap``), events in the last ~minute (``rate``, exponentially decayed, scaled by
    ``rate_cap``), whether this event is a like/share, their recent like/share ratio, recent watch
    ratio (watch/duration, 0.5 when never known), and log-scaled history length.

    A user's first event within the rule's memory (new, or idle longer than ``idle_seconds``) is
    never held and does not feed the quantile: it carries no behaviour yet, only the fixed
    features of a first event (longest gap, shortest history), so its score measures how rare
    new users are in the stream, not how the user behaves. In a stream of established users a
    newcomer's first like would otherwise be among the most unusual events and held (measured on
    the bench's grown model), exactly when it matters most for their recommendations. Bot farms
    of fresh accounts are the item-surge rule's, bursts the user-rate rule's and this rule's from
    the second event on.

    Every event is scored (one by one, River's ``score_one``: ~0.7 µs per tree per event; a batch
    whose events were given to :meth:`prepare` first is walked down all the trees at once, ~0.4 µs
    an event in all, with identical scores);
    the trees learn from every ``learn_every``-th passed event, never from held ones (the points of
    a window all at once when it ends, with the masses River's ``learn_one`` gives), and the
    score quantile is fed every passed event and this rule's own holds (as River's
    ``QuantileFilter`` does; fed passed events only, the threshold would ratchet down and hold
    ever more). Nothing is held before ``warmup_events`` events have passed, nor before the trees
    have a reference window (``window_size`` × ``learn_every`` events). Memory: the trees (fixed,
    ``n_trees`` × 2^(``height`` + 1) nodes; the compiled core keeps their masses in arrays of its own,
    24 bytes a node), the points learned in the current window without it (at most ``window_size``,
    ~0.2 kB each), one record (~0.05 kB: its clock as float64, the rest as float32,
    when last seen as an int32 stamp) per user seen in the last ``idle_seconds``, at most ``max_users``.

    Where the compiled loops are built (:mod:`learner.kernels`, when the rule is made), ``check``,
    ``observe``, ``observe_held`` and ``judge`` are those of :class:`learner._kernels.AnomalyCore`: the
    same features and scores (each event walked down the trees, no batch ahead: ``prepare`` then does
    nothing), on the same table, calling this rule's quantile. It calls ``_learn`` for the first point
    learned only (River draws the trees' splits from it), and learns every point into masses of its
    own, which :attr:`trees` writes into River's nodes when it is read. ``passed``, ``learned`` and the
    last check (``_memo``) are read from it. The methods below are the reference, and the path
    without it. The settings (and ``_learn``) are read when the rule is made.

    >>> rule = AnomalousBehaviourRule(warmup_events=100, window_size=50, learn_every=1)
    >>> def held(events):
    ...     count = 0
    ...     for e in events:
    ...         hold = rule.check(e, e.ts)
    ...         if hold is None:
    ...             rule.observe(e, e.ts)
    ...         else:
    ...             count += 1
    ...             rule.observe_held(e, e.ts, hold)
    ...     return count
    >>> held([GateEvent(f"e{i}", f"u{i % 50}", f"v{i % 7}", "view", 60.0 * i) for i in range(2_000)]) < 10
    True
    >>> held([GateEvent(f"x{i}", "bot", "v1", "like", 120_000.0) for i in range(40)]) > 30
    True
    """

    codes: tuple[str, ...] = ("anomalous_behaviour",)

    def __init__(
        self,
        quantile: float = 0.999,
        warmup_events: int = 10_000,
        n_trees: int = 5,
        height: int = 8,
        window_size: int = 1_000,
        learn_every: int = 4,
        idle_seconds: float = 1_800.0,
        max_users: int = 1_000_000,
        rate_cap: float = 60.0,
        seed: int = 42,
        positive_types: frozenset[str] = POSITIVE_TYPES,
    ) -> None:
        if not 0 < quantile < 1 or learn_every < 1 or window_size < 1 or n_trees < 1 or rate_cap <= 0:
            raise ValueError("quantile must be in (0, 1), rate_cap > 0, learn_every, window_size and n_trees >= 1")
        if not 1 <= height <= 30:
            raise ValueError("height must be in 1..30 (a tree has 2^(height + 1) - 1 nodes)")
        if idle_seconds > MAX_IDLE_SECONDS:
            raise ValueError(f"idle_seconds must be at most {MAX_IDLE_SECONDS:,.0f} (a table's idle limit)")
        # counts as ints (given as floats, 1e4, they would be compared as floats: the same verdicts)
        warmup_events, learn_every, max_users = int(warmup_events), int(learn_every), int(max_users)
        n_trees, height, window_size = int(n_trees), int(height), int(window_size)
        self.warmup_events = warmup_events
        self.learn_every = learn_every
        self.idle_seconds = idle_seconds
        self.max_users = max_users
        self.rate_cap = rate_cap
        self.positive_types = frozenset(positive_types)
        # River's trees (read them as ``trees``: where the core learns, it brings their masses up to date first)
        self._river = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self._window_size = window_size  # the trees' (read for every event)
        self.threshold = stats.Quantile(quantile)
        # its estimator without the Python wrapper (River's Rust one), for judge: get/update are the same calls once
        # the quantile has been updated, which _scored tells (the wrapper itself if River has no such attribute)
        self._estimator = getattr(self.threshold, "_quantile", self.threshold)
        self.passed = 0
        self.learned = 0
        self._scored = False  # the quantile has seen a real score (the trees finished their first window)
        # user -> [clock], as float32 [decayed event count, positive ratio, watch ratio, events], and as an int32
        # stamp [now when last seen]
        self._users = Records(_ANOMALY_FIELDS, narrow=_ANOMALY_COUNTS, ints=1)
        self._oldest, self._oldest_seen = None, -math.inf  # _users' first record's number (see Records.evict)
        # the features, score and next user state computed by the last check, reused by observe
        self._memo: tuple[GateEvent, Features, float, array[float]] | None = None
        # prepare(): the batch, and per row (user state it was computed from, features, next state); checks come
        # in the batch's order (some rows skipped), so the next one is looked for from _ahead_next on
        self._ahead_events: Sequence[GateEvent] = ()
        self._ahead_rows: list[tuple[array[float] | None, Features, array[float]]] = []
        self._ahead_next = 0
        self._ahead_leaves: np.ndarray | None = None  # the leaf each row of the batch reaches in each tree
        self._ahead_scores: list[float] = []  # the rows' scores in window _ahead_window of the trees
        self._ahead_window = -1
        self._flat: FlatTrees | None = None  # the trees' splits as arrays, once River has built the trees
        self._leaf_scores: np.ndarray | None = None  # in window _leaf_window of the trees
        self._leaf_window = -1
        self._to_learn: list[Features] = []  # points learned in the current window, not yet in the trees' masses
        self.scored_ahead = 0  # checks that used a score computed by prepare()
        kernel = kernels.compiled()
        self._core = None
        if kernel is not None:  # the same steps compiled, on the same table (the counters kept there)
            self._core = core = kernel.AnomalyCore(
                self._users,
                self.positive_types,
                self.threshold,
                self._estimator,
                self._learn,
                self._core_trees,
                partial(_anomaly_hold, quantile),
                warmup_events,
                learn_every,
                window_size,
                n_trees,
                height,
                idle_seconds,
                max_users,
                rate_cap,
                self._GAP_SCALE,
                self._HISTORY_SCALE,
                self._RATE_TAU,
            )
            self.check = core.check  # type: ignore[method-assign]
            self.observe = core.observe  # type: ignore[method-assign]
            self.observe_held = core.observe_held  # type: ignore[method-assign]
            self.judge = core.judge  # type: ignore[method-assign]
            # the core's (read from it: __getattr__): none left here to read stale
            del self.passed, self.learned, self._scored, self._memo, self._oldest, self._oldest_seen

    def __getattr__(self, name: str) -> object:
        """``passed``, ``learned``, ``_scored`` and ``_memo`` of a rule whose core keeps them (Python calls this only
        for an attribute the object does not have)."""
        core = self.__dict__.get("_core")
        if core is not None and name in _CORE_STATE:
            return getattr(core, _CORE_STATE[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    _GAP_SCALE = 1.0 / math.log1p(3_600.0)
    _HISTORY_SCALE = 1.0 / math.log1p(1_000.0)
    _RATE_TAU = 60.0

    def _features(self, event: GateEvent, now: float, state: array[float] | None) -> tuple[Features, array[float]]:
        """The event's features (in the order of FEATURES) and the user's next state, from the user's ``state``
        (None: a new user). Runs for every event: written with plain comparisons instead of min/max calls,
        the same operations on the same values (so the same floats)."""
        positive = 1.0 if event.type in self.positive_types else 0.0
        watch_seconds, duration = event.watch_seconds, event.item_duration_seconds
        watch = None
        if watch_seconds is not None and duration:
            watch = watch_seconds / duration
            watch = (2.0 if 2.0 < watch else watch) / 2.0  # min(watch, 2.0) / 2.0
        if state is None:
            # [clock, decayed event count, positive ratio, watch ratio, events, now last seen]
            clock, decayed, pos_ratio, watch_ratio, n = event.ts, 1.0, positive, 0.5 if watch is None else watch, 1.0
            gap = 1.0
        else:
            ts = event.ts
            clock, decayed, pos_ratio, watch_ratio, n = state[0], state[1], state[2], state[3], state[4]
            elapsed = ts - clock
            if 0.0 > elapsed:  # max(ts - clock, 0.0)
                elapsed = 0.0
            gap = _log1p(elapsed) * self._GAP_SCALE
            if 1.0 < gap:
                gap = 1.0
            rate = 1.0 / (n + 1.0) if n < 20 else 0.05  # running mean first, then exponential
            if ts > clock:
                clock = ts
            decayed = decayed * _exp(-elapsed / self._RATE_TAU) + 1.0
            pos_ratio = pos_ratio + rate * (positive - pos_ratio)
            if watch is not None:
                watch_ratio = watch_ratio + rate * (watch - watch_ratio)
            n = n + 1.0
        recent = decayed / self.rate_cap
        history = _log1p(n) * self._HISTORY_SCALE
        x = (gap, 1.0 if 1.0 < recent else recent, positive, pos_ratio, watch_ratio, 1.0 if 1.0 < history else history)
        rounded = _ANOMALY_ROUND.unpack(_ANOMALY_ROUND.pack(decayed, pos_ratio, watch_ratio, n))
        return x, array("d", (clock, *rounded, self._users.stamp(now)))

    def _window(self) -> int:
        """How many windows the trees have completed (their reference masses change with each)."""
        return self.learned // self._window_size

    @property
    def trees(self) -> anomaly.HalfSpaceTrees:
        """River's Half-Space Trees as this rule has learned them.

        The compiled core learns in arrays of its own (River only draws the splits, from the first point): their
        masses and window counter are written into River's nodes here, when they are read, not as it learns.
        """
        river = self._river
        masses = None if self._core is None else self._core.masses
        if masses is not None:
            counter, l_mass, r_mass = masses
            flat = self._flat_trees()
            shape = (len(flat.nodes), flat.size)
            ls = np.frombuffer(l_mass, dtype=np.int64).reshape(shape).tolist()
            rs = np.frombuffer(r_mass, dtype=np.int64).reshape(shape).tolist()
            for nodes, lt, rt in zip(flat.nodes, ls, rs, strict=True):
                for node, left, right in zip(nodes, lt, rt, strict=True):
                    node.l_mass, node.r_mass = left, right
            river.counter = counter
            river._first_window = self.learned < self._window_size
        return river

    def _flat_trees(self) -> FlatTrees:
        if self._flat is None:
            self._flat = FlatTrees(self._river, FEATURES)
        return self._flat

    def _core_trees(self) -> tuple[bytes, bytes, float]:
        """The trees' splits for the compiled core, once River has drawn them: each inner node's feature (its column
        in FEATURES) and split, River's largest score."""
        flat = self._flat_trees()
        return (
            flat.split_features.astype(np.int64).tobytes(),
            flat.split_thresholds.astype(np.float64).tobytes(),
            float(self._river._max_score),
        )

    def prepare(self, events: Sequence[GateEvent], now: float) -> None:  # noqa: ARG002 - the checks stamp now
        """Compute the features of a batch of events, and the leaf each reaches in each tree, ahead of their checks.

        Each event's features are computed from its user's state as it will be if every earlier
        event of the batch reaches this rule (passes the gate or is held by this rule: both update
        the user's state), and all are walked down the trees by one :class:`FlatTrees` pass; the
        first check scores them all from their leaves (again when a window of the trees ends
        meanwhile). A check uses its event's result only if the user's state is then exactly the
        one it was computed from; otherwise (an earlier rule held an earlier event of that user, or
        the user was evicted) it computes the features and score itself. So the outcome is the same
        as without ``prepare``, only cheaper.
        """
        self._ahead_events, self._ahead_rows, self._ahead_next = (), [], 0
        if self._core is not None:
            return  # the compiled core scores an event in less time than this takes
        if self.learned < self._window_size or len(events) < 2:
            return  # before the first window every score is 0; a single event gains nothing
        users: dict[str, array[float]] = {}  # each user's state after their events so far in the batch
        known = self._users.copy_of
        seen = 0.0  # (a state's stamp: its check, _score, stamps now; none here, where it could move the base)
        rows = []
        flat: list[float] = []  # the rows' features one after the other (one array built from floats is cheaper)
        positive_types, rate_cap = self.positive_types, self.rate_cap
        gap_scale, history_scale, tau = self._GAP_SCALE, self._HISTORY_SCALE, self._RATE_TAU
        for event in events:
            user = event.user_id
            state = users.get(user)
            if state is None:
                state = known(user)
            # _features(event, now, state), inline (the same operations in the same order: the same floats)
            _, _, _, kind, ts, watch_seconds, duration = event
            positive = 1.0 if kind in positive_types else 0.0
            watch = None
            if watch_seconds is not None and duration:
                watch = watch_seconds / duration
                watch = (2.0 if 2.0 < watch else watch) / 2.0
            if state is None:
                clock, decayed, pos_ratio, watch_ratio, n = ts, 1.0, positive, 0.5 if watch is None else watch, 1.0
                gap = 1.0
            else:
                clock, decayed, pos_ratio, watch_ratio, n = state[0], state[1], state[2], state[3], state[4]
                elapsed = ts - clock
                if 0.0 > elapsed:
                    elapsed = 0.0
                gap = _log1p(elapsed) * gap_scale
                if 1.0 < gap:
                    gap = 1.0
                rate = 1.0 / (n + 1.0) if n < 20 else 0.05
                if ts > clock:
                    clock = ts
                decayed = decayed * _exp(-elapsed / tau) + 1.0
                pos_ratio = pos_ratio + rate * (positive - pos_ratio)
                if watch is not None:
                    watch_ratio = watch_ratio + rate * (watch - watch_ratio)
                n = n + 1.0
            recent = decayed / rate_cap
            if 1.0 < recent:
                recent = 1.0
            history = _log1p(n) * history_scale
            if 1.0 < history:
                history = 1.0
            x = (gap, recent, positive, pos_ratio, watch_ratio, history)
            rounded = _ANOMALY_ROUND.unpack(_ANOMALY_ROUND.pack(decayed, pos_ratio, watch_ratio, n))
            users[user] = nxt = array("d", (clock, *rounded, seen))
            rows.append((state, x, nxt))
            flat += x
        self._ahead_leaves = self._flat_trees().leaves(np.array(flat).reshape(len(rows), len(FEATURES)))
        self._ahead_events, self._ahead_rows = events, rows
        self._ahead_window = -1  # scored by the first check

    def _ahead_row(self, event: GateEvent) -> int:
        """The row of the prepared batch that is ``event`` (the object), at or after the last one used; -1 if none.

        Not found, the batch is dropped (a check of an event outside it, or of one again), so that a
        stale batch is not searched for every later event."""
        events, row = self._ahead_events, self._ahead_next
        end = len(events)
        while row < end:
            if events[row] is event:
                self._ahead_next = row + 1
                return row
            row += 1
        self._ahead_events, self._ahead_rows = (), []
        return -1

    def _scored_features(self, event: GateEvent, now: float) -> tuple[GateEvent, Features, float, array[float]]:
        """(event, features, score, the user's next state), computed once per event (kept for observe)."""
        memo = self._memo
        if memo is not None and memo[0] is event:
            return memo
        x, score, nxt = self._score(event, now, self._users.copy_of(event.user_id))
        self._memo = memo = (event, x, score, nxt)
        return memo

    def _score(self, event: GateEvent, now: float, state: array[float] | None) -> tuple[Features, float, array[float]]:
        """(features, score, the user's next state) of ``event`` for a user now in ``state`` (a copy of their
        record): from the chunk prepared ahead if it was computed from exactly that state, else computed here."""
        row = self._ahead_row(event) if self._ahead_events else -1
        if row >= 0 and _same_state((ahead := self._ahead_rows[row])[0], state):
            _, x, nxt = ahead
            window = self.learned // self._window_size
            if self._ahead_window != window:  # the batch's first check, or a window of the trees ended since
                self._ahead_scores = self._flat_trees().scores(self._ahead_leaves, self._current_leaf_scores())
                self._ahead_window = window
            self.scored_ahead += 1
            nxt[5] = self._users.stamp(now)  # the only field of the state that depends on now (when last seen)
            return x, self._ahead_scores[row], nxt
        x, nxt = self._features(event, now, state)
        learned = self.learned >= self._window_size
        return x, float(self._river.score_one(dict(zip(FEATURES, x, strict=True)))) if learned else 0.0, nxt

    def _current_leaf_scores(self) -> np.ndarray:
        window = self._window()
        if self._leaf_scores is None or self._leaf_window != window:
            self._leaf_scores, self._leaf_window = self._flat_trees().leaf_scores(), window
        return self._leaf_scores

    def prefetch(self, events: list[GateEvent]) -> None:
        """Fetch ahead the users' records a chunk's checks will read (:meth:`Records.prefetch`)."""
        self._users.prefetch(events, 1)

    def check(self, event: GateEvent, now: float) -> Hold | None:
        memo = self._memo
        _, _, score, nxt = memo if memo is not None and memo[0] is event else self._scored_features(event, now)
        if self.passed < self.warmup_events or not self._scored or nxt[4] == 1.0:  # 1.0: the user's first event
            return None
        threshold = self.threshold.get()
        if threshold is not None and score > threshold:
            return _anomaly_hold(self.threshold.q, score, threshold)
        return None

    def _remember(self, user: str, nxt: array[float], now: float) -> None:
        users = self._users
        r = users.put(user, nxt)
        horizon = now - self.idle_seconds
        if r == self._oldest or not (self._oldest_seen >= horizon and len(users) <= self.max_users):
            self._oldest, self._oldest_seen = users.evict(horizon, self.max_users, _ANOMALY_SEEN)

    def _learn(self, x: Features) -> None:
        """Learn ``x`` into the trees, as River's ``learn_one`` does; the points of a window are walked in when it ends.

        ``learn_one`` adds a point's visits to the ``l_mass`` of the nodes on its path, and when a
        window ends every node's ``r_mass`` (the only mass a score reads) becomes its ``l_mass``.
        So the points of a window are kept until its last one, then their visits are added all at
        once (:meth:`FlatTrees.learn`: the same integer counts) and River learns the last point and
        ends the window. Until then the trees' ``l_mass`` and ``counter`` lag behind, unread.
        """
        trees = self._river
        if not trees.trees:
            trees.learn_one(dict(zip(FEATURES, x, strict=True)))  # River builds the trees from the first point
            return
        pending = self._to_learn
        pending.append(x)
        if trees.counter + len(pending) == trees.window_size:
            self._flat_trees().learn(np.array(pending[:-1]))
            trees.counter += len(pending) - 1
            trees.learn_one(dict(zip(FEATURES, x, strict=True)))
            pending.clear()

    def observe(self, event: GateEvent, now: float) -> None:
        memo = self._memo
        _, x, score, nxt = memo if memo is not None and memo[0] is event else self._scored_features(event, now)
        self._memo = None
        # _remember, inline (once per event)
        users, user = self._users, event.user_id
        r = users.put(user, nxt)
        horizon = now - self.idle_seconds
        if r == self._oldest or not (self._oldest_seen >= horizon and len(users) <= self.max_users):
            self._oldest, self._oldest_seen = users.evict(horizon, self.max_users, _ANOMALY_SEEN)
        self.passed = passed = self.passed + 1
        if self.learned >= self._window_size and nxt[4] != 1.0:  # before that the trees score everything 0
            self.threshold.update(score)
            self._scored = True
        if passed % self.learn_every == 0:
            self._learn(x)
            self.learned += 1

    def judge(self, event: GateEvent, now: float) -> Hold | None:
        """``check``, then ``observe`` if it passes or ``observe_held`` if it is held, in one call.

        For the gate's last rule that checks (:meth:`QualityGate.check_chunk`): an event this rule lets pass has
        passed every rule, and the rules' states are independent of each other, so it may observe it at once.
        The same operations on the same values as the three calls (one lookup of the user instead of three).
        """
        self._memo = None
        users, user = self._users, event.user_id
        state = users.copy_of(user)  # every event that reaches here updates it, and moves the user last (below)
        x, score, nxt = self._score(event, now, state)
        hold = None
        known = state is not None  # else the user's first event: neither held nor in the quantile
        if known and self._scored and self.passed >= self.warmup_events:
            threshold = self._estimator.get()  # self.threshold.get(): it has been updated (_scored)
            if threshold is not None and score > threshold:
                hold = _anomaly_hold(self.threshold.q, score, threshold)
        r = users.put(user, nxt)
        horizon = now - self.idle_seconds
        if r == self._oldest or not (self._oldest_seen >= horizon and len(users) <= self.max_users):
            self._oldest, self._oldest_seen = users.evict(horizon, self.max_users, _ANOMALY_SEEN)
        if hold is not None:  # observe_held
            if self._scored:
                self._estimator.update(score)
            return hold
        self.passed = passed = self.passed + 1  # observe
        if known and self.learned >= self._window_size:
            if self._scored:
                self._estimator.update(score)
            else:
                self.threshold.update(score)
                self._scored = True
        if passed % self.learn_every == 0:
            self._learn(x)
            self.learned += 1
        return None

    def observe_held(self, event: GateEvent, now: float, hold: Hold) -> None:  # noqa: ARG002
        """Count the held score in the quantile and the attempt in the user's features; never learn it."""
        _, _, score, nxt = self._scored_features(event, now)
        self._memo = None
        self._remember(event.user_id, nxt, now)
        if self._scored and nxt[4] != 1.0:  # a user's first event is not judged (held by another rule)
            self.threshold.update(score)

    def __len__(self) -> int:
        return len(self._users)


def _anomaly_hold(quantile: float, score: float, threshold: float) -> Hold:
    return Hold(
        "anomalous_behaviour",
        f"behaviour anomaly score {score:.3f} above the running {quantile:.1%} quantile {threshold:.3f}",
    )


#: What a compiled core keeps of the anomaly rule's state: the rule's attribute -> the core's (``_memo``'s features and
#: next record as tuples).
_CORE_STATE = {"passed": "passed", "learned": "learned", "_scored": "scored", "_memo": "memo"}


def _same_state(a: array[float] | None, b: array[float] | None) -> bool:
    """Whether two copies of a user's record (None: none) hold the same floats, bit for bit (NaN included, as an
    identical record did before records were copies)."""
    return a is b or (a is not None and b is not None and a.tobytes() == b.tobytes())

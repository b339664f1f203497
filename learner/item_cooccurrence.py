"""Incremental item-to-item co-occurrence over each user's most recent items.

When a user interacts with item ``i`` (weight ``w``, see :mod:`learner.event_weights`), every
item ``j`` among their last ``window`` items gets ``C[j, i] += forward * w * w_j * gamma**d``
and ``C[i, j] += backward * w * w_j * gamma**d``, where ``w_j`` is the weight ``j`` has
accumulated in the user's history and ``d`` how many items ago it was. Only recent items
pair up: in taste streams (and in MovieLens) what someone takes next is far closer to what
they took just before than to what they took a year ago.

To rank, the rows of the user's recent items are summed into one dense vector, the most
recent weighted most (``recency ** age``), each row damped by its item's total weight
(``alpha``) and each candidate by its own (``beta``), so blockbusters do not co-occur with
everything. A row counts its ``neighbours`` strongest entries only (the largest values; 0:
every entry): a blockbuster's row holds thousands of entries whose weakest change hardly any
list (the MovieLens replay's HR@10: 0.1431 at 200, 0.1434 with every entry). Learning and
``predict_one`` use every entry. A brand-new item becomes recommendable the moment someone
takes it after another item, because its row and column are created on that event.

Most of the catalogue has no evidence for a given user, so the ranking adds a small
``popularity_weight`` times the items' time-decayed popularity (half-life ``half_life_days`` of
stream time): a tie-breaker that orders what co-occurrence cannot, in the same single pass.
Serving does not make that pass (:meth:`ItemCooccurrence.top`): only the columns of the user's
rows have evidence, and the best of the other items are those of the largest prior, so it ranks
the former and walks the latter in prior order (:meth:`ItemCooccurrence.ranking_head`).

Storage is one sparse row per item, every row in one pool (:mod:`learner.sparse_rows`; after a load, the
pool is the snapshot's arrays until the model first learns), with a (row, column) -> slot table for learning:
an update costs ``2 * window`` table lookups (in C where the compiled loops are built) and scoring a user
reads ``window`` rows, never a loop over the catalogue.

>>> m = ItemCooccurrence(window=3, popularity_weight=0.0)
>>> for user, items in {"ann": "abc", "bob": "abd", "cid": "xyz"}.items():
...     for item in items:
...         m.learn_one(user, item, 1.0)
>>> m.learn_one("dan", "a", 1.0)
>>> scores = m.score_all("dan")
>>> [m.items.ids[i] for i in np.argsort(-scores, kind="stable")[:3]]
['b', 'c', 'd']
>>> float(scores[m.items.get("x")])  # never taken together with "a"
0.0
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from learner import kernels
from learner.arrays import grow_rows, mapped_copy, resize_mapped
from learner.base import ModelState, expect_kind
from learner.id_index import IdIndex
from learner.popularity_models import DecayedCounter
from learner.sparse_rows import SparseRows

#: Long rows whose strongest entries a model keeps for ranking before it drops them all (~1.6 kB each at 200).
_STRONGEST_KEPT = 16_384


@dataclass(frozen=True)
class Changes:
    """What :meth:`ItemCooccurrence.changes` reports: the id-list sizes at the mark and what changed since."""

    n_users: int
    n_items: int
    keys: np.ndarray  # int64 row << 32 | slot of every co-occurrence entry touched, sorted, each once
    items: np.ndarray  # int64 item rows whose mass, damping or recent popularity may have changed, sorted
    users: np.ndarray  # int64 user rows whose history may have changed, sorted
    recent_rescaled: bool  # the recent-popularity counter rescaled every item: its whole array changed


class ItemCooccurrence:
    """Item-to-item co-occurrence within each user's last ``window`` items, scored from arrays."""

    kind = "item_cooccurrence"
    reward = "weight"

    def __init__(
        self,
        window: int = 10,
        gamma: float = 0.9,
        recency: float = 0.8,
        alpha: float = 0.3,
        beta: float = 0.2,
        forward: float = 1.0,
        backward: float = 1.0,
        popularity_weight: float = 0.05,
        half_life_days: float = 365.0,
        neighbours: int = 200,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if neighbours < 0:
            raise ValueError("neighbours must be >= 0 (0: every entry of a row)")
        if popularity_weight < 0:
            raise ValueError("popularity_weight must be >= 0")
        self.window = int(window)
        self.gamma = float(gamma)
        self.recency = float(recency)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.forward = float(forward)
        self.backward = float(backward)
        self.popularity_weight = float(popularity_weight)
        self.neighbours = int(neighbours)
        # row -> its ``neighbours`` strongest entries (the compiled ranking's bytearray), for rows longer than that;
        # kept up to date by learn_one (SparseRows.add_pairs), dropped by forget_strongest (a delta's rows) and all
        # past _STRONGEST_KEPT
        self._strongest: dict[int, bytearray] = {}
        self._recent = DecayedCounter(half_life_days)  # recent popularity: the tie-breaker
        self.half_life_days = self._recent.half_life_days
        self.users = IdIndex()
        self.items = IdIndex()
        self._rows = SparseRows()
        self._mass = np.zeros(16, dtype=np.float64)  # total weight per item
        self._candidate_damping = np.ones(16, dtype=np.float64)  # max(mass, 1) ** -beta, kept up to date
        self._row_damping = np.ones(16, dtype=np.float64)  # max(mass, 1) ** -alpha, kept up to date
        self._recency_powers = array("d", [self.recency**age for age in range(self.window)])
        self._history = UserHistories(self.window)  # per user: item row -> weight, oldest first
        self._scratch_buffer = np.empty(0, dtype=np.float64)
        # What changed since mark_changes() (learner.cooccurrence_delta): every co-occurrence entry touched (the
        # rows' log, which stops past learner.sparse_rows.CHANGE_LOG_LIMIT: then only a whole snapshot says what
        # changed), the items learned (their mass, damping and recent popularity), and the sizes of the id lists.
        self._changed_items: set[int] = set()
        self._marked_sizes = (0, 0)

    # -- River-style interface -------------------------------------------------------

    def advance_clock(self, ts: float) -> None:
        self._recent.advance(ts)

    def learn_one(self, user: str, item: str, y: float) -> None:
        u = self._user_row(user)
        i = self._item_row(item)
        if self._rows.logging:
            self._changed_items.add(i)  # every learned event's item: the learner's popularity counts it too
        if y <= 0:
            return
        history = self._history.for_update(u)
        # the kept strongest entries of the rows this event changes are brought up to date with them (or dropped)
        self._rows.add_pairs(history, i, y, self.gamma, self.forward, self.backward, self._strongest, self.neighbours)
        self._recent.add(i, y)
        kernel = kernels.compiled()
        if kernel is not None:  # the same numbers without numpy's per-element indexing
            damping = (self._candidate_damping, self._row_damping)
            kernel.cooccurrence_mass(self._mass, *damping, i, y, self.alpha, self.beta)
        else:
            mass = float(self._mass[i]) + y
            self._mass[i] = mass
            self._candidate_damping[i] = max(mass, 1.0) ** -self.beta
            self._row_damping[i] = max(mass, 1.0) ** -self.alpha
        history[i] = history.pop(i, 0.0) + y
        if len(history) > self.window:
            del history[next(iter(history))]

    def predict_one(self, user: str, item: str) -> float:
        """``1 - exp(-evidence)``: monotone in the co-occurrence evidence, not a calibrated probability."""
        u = self.users.get(user)
        i = self.items.get(item)
        if u is None or i is None:
            return 0.0
        # _weighted_rows' weights, each computed only for a remembered item that co-occurs with ``i``: most do
        # not, and this runs for every learned event (predicted before it is learned).
        evidence = self._rows.evidence(self._history[u], i, self._recency_powers, self._row_damping)
        return 1.0 - math.exp(-evidence * float(self._candidate_damping[i]))

    def knows_user(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and bool(self._history[u])

    def forget_users(self, users: Sequence[str]) -> int:
        """Erase ``users``: their remembered items emptied and their ids blanked (learner.erasure); how many the model
        held. What their events added to the co-occurrence rows and the items' mass stays: it is summed with every
        other user's, as popularity counts are."""
        rows = self.users.blank(users)
        for row in rows:
            self._history.for_update(row).clear()
        return len(rows)

    def score_all(self, user: str) -> np.ndarray:
        """Co-occurrence evidence (unscaled: its ranking is what counts), plus ``popularity_weight`` times recent
        popularity scaled to the best evidence's size (so items without evidence are ordered by what is popular
        now); not comparable across users, nor with :meth:`predict_one`'s ``1 - exp(-evidence)``."""
        n_items = len(self.items)
        recent = self._recent
        kernel = kernels.compiled()
        if kernel is not None:  # the same numbers in two passes over the catalogue instead of six
            scores = np.empty(n_items, dtype=np.float64)
            kernel.cooccurrence_scores(*self._ranking_inputs(user), scores)
            return scores
        scores = self._evidence(user, n_items)
        if self.popularity_weight and recent.max > 0 and n_items:
            top = float(scores.max())
            # Leave the evidence unscaled and scale the prior by ``top`` instead: same ranking, one pass fewer.
            factor = self.popularity_weight * (top if top > 0 else 1.0) / recent.max
            prior = np.multiply(recent.mass[:n_items], factor, out=self._scratch(n_items))
            scores += prior
        return scores

    def top(self, user: str, k: int, exclude: np.ndarray, head: np.ndarray) -> list[tuple[int, float]] | None:
        """The ``k`` best (row, score) pairs of :meth:`score_all` leaving out the rows ``exclude`` (int64), as
        :func:`learner.ranking.top_k` gives them, without a pass over the catalogue: only the items in the user's
        rows have evidence, the others are ranked by their prior, whose best are the first of ``head``
        (:meth:`ranking_head`, made since the model last changed). None when that does not settle it (or without
        the compiled loops): rank the whole catalogue then."""
        kernel = kernels.compiled()
        if kernel is None:
            return None
        exclude = np.asarray(exclude, dtype=np.int64)
        return kernel.cooccurrence_top(*self._ranking_inputs(user), len(self.items), head, exclude, k)

    def _ranking_inputs(self, user: str) -> tuple:
        """The compiled ranking's first arguments for ``user``: the pool, the user's rows and their weights, the
        cap and the kept rows, the candidates' damping and the prior."""
        rows, weights = self._weighted_rows(user)
        recent = self._recent
        pool = self._rows.pool()
        cache = self._strongest_cache()
        return (*pool, rows, weights, self.neighbours, cache, self._candidate_damping, recent.mass,
                self.popularity_weight, recent.max)  # fmt: skip

    def ranking_head(self, size: int = 8_192) -> np.ndarray:
        """The rows of the ``size`` largest priors (recent popularity), largest first (int64): what :meth:`top`
        walks for the items without evidence. Valid until the model next learns or takes a delta."""
        n = len(self.items)
        mass = self._recent.mass[:n]
        if n > size:
            part = np.argpartition(-mass, size - 1)[:size]
            return part[np.argsort(-mass[part], kind="stable")].astype(np.int64)
        return np.argsort(-mass, kind="stable").astype(np.int64)

    def forget_strongest(self, rows: np.ndarray | None = None) -> None:
        """Drop the kept strongest entries of the long rows ``rows`` (None: of every row): call it for the rows that
        change other than by :meth:`learn_one` (a delta's, before it is applied). A part depends on its row's
        entries only, so the other rows' parts stay true."""
        kept = self._strongest
        if rows is None:
            kept.clear()
        elif kept:
            for row in rows.tolist():
                kept.pop(row, None)

    def _strongest_cache(self) -> dict[int, bytearray]:
        if len(self._strongest) > _STRONGEST_KEPT:
            self._strongest.clear()
        return self._strongest

    def _scratch(self, n: int) -> np.ndarray:
        if len(self._scratch_buffer) < n:
            self._scratch_buffer = np.empty(max(n, 2 * len(self._scratch_buffer)), dtype=np.float64)
        return self._scratch_buffer[:n]

    def _weighted_rows(self, user: str) -> tuple[array | np.ndarray, array | np.ndarray]:
        """The user's remembered items' rows (int64), newest first, and each row's ranking weight (float64):
        recency and popularity damped; none for a user the model does not know."""
        u = self.users.get(user)
        if u is None:
            return array("q"), array("d")
        damping, powers = self._row_damping, self._recency_powers
        history = self._history[u]
        kernel = kernels.compiled()
        if kernel is not None:  # the same numbers without a Python loop
            rows, weights = np.empty(len(history), dtype=np.int64), np.empty(len(history), dtype=np.float64)
            kernel.weighted_rows(history, powers, damping, rows, weights)
            return rows, weights
        weights = [w_j * powers[age] * float(damping[j]) for age, (j, w_j) in enumerate(reversed(history.items()))]
        return array("q", reversed(history)), array("d", weights)

    def _evidence(self, user: str, n_items: int) -> np.ndarray:
        rows, row_weights = self._weighted_rows(user)
        parts = [self._strongest_of(row) for row in rows]
        lengths = [len(cols) for cols, _ in parts]
        if not any(lengths):  # no history, or rows without entries
            return np.zeros(n_items, dtype=np.float64)
        # One buffer join per array type instead of a numpy call per row.
        cols = np.frombuffer(b"".join([cols for cols, _ in parts]), dtype=np.int32)
        vals = np.frombuffer(b"".join([vals for _, vals in parts]), dtype=np.float32)
        weights = np.repeat(row_weights, lengths)
        weighted = np.multiply(vals, weights, out=weights)
        scores = np.bincount(cols, weights=weighted, minlength=n_items)
        return np.multiply(scores, self._candidate_damping[:n_items], out=scores)

    def _strongest_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of a row as ranking reads it (:func:`strongest`)."""
        return strongest(*self._rows.row(row), self.neighbours)

    def recent_items(self, user: str) -> list[str]:
        """The user's remembered items, most recent last."""
        u = self.users.get(user)
        return [] if u is None else [self.items.ids[j] for j in self._history[u]]

    # -- changes since a mark (incremental snapshots: learner.cooccurrence_delta) ------------

    def mark_changes(self) -> None:
        """Start recording changes afresh: the state now is the base the next :meth:`changes` is relative to."""
        self._rows.start_log()
        self._changed_items = set()
        self._history.take_changed_since_mark()
        self._recent.rescaled = False
        self._marked_sizes = (len(self.users), len(self.items))

    def growth_ahead(self) -> Callable[[], object] | None:
        """:meth:`SparseRows.growth_ahead` of the co-occurrence rows."""
        return self._rows.growth_ahead()

    def stop_changes(self) -> None:
        """Stop recording changes until the next :meth:`mark_changes`."""
        self._rows.stop_log()
        self._changed_items = set()
        self._history.changed_since_mark = None

    def changes(self) -> Changes | None:
        """What changed since :meth:`mark_changes`, or None if it was not recorded (a delta cannot be made).

        Entries are (row, slot) keys of the co-occurrence rows, each once, sorted; items and users
        are those whose per-item arrays or history rows may differ (the new ones included).
        """
        logged = self._rows.logged()
        if logged is None:  # not recording, or the log stopped (too much since the mark)
            return None
        n_users0, n_items0 = self._marked_sizes
        keys = np.sort(logged)  # sort, then drop repeats: several times
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys  # faster than unique
        items = np.union1d(
            np.fromiter(self._changed_items, dtype=np.int64, count=len(self._changed_items)),
            np.arange(n_items0, len(self.items), dtype=np.int64),
        )
        users = np.union1d(
            np.fromiter(self._history.changed_since_mark or (), dtype=np.int64),
            np.arange(n_users0, len(self.users), dtype=np.int64),
        )
        return Changes(n_users0, n_items0, keys, items, users, self._recent.rescaled)

    def changed_arrays(self, changes: Changes) -> dict[str, np.ndarray]:
        """What :meth:`changes` names, as the arrays of a delta (learner.cooccurrence_delta): each touched entry's
        row, slot, column and value; the changed items' per-item values (with the recent counter's clock, and
        its whole array after a rescale); the changed users' history rows (as in :meth:`to_state`)."""
        keys = changes.keys
        items, users = changes.items, changes.users
        history_items, history_weights = self._history.arrays_of(users)
        entry_cols, entry_vals = self._entries_at(keys)
        arrays = {
            "entry_rows": (keys >> 32).astype(np.int32),
            "entry_slots": (keys & 0xFFFFFFFF).astype(np.int32),
            "entry_cols": entry_cols,
            "entry_vals": entry_vals,
            "items": items.astype(np.int32),
            "mass": self._mass[items],
            "candidate_damping": self._candidate_damping[items],
            "row_damping": self._row_damping[items],
            "recent": self._recent.mass[items],
            "recent_clock": self._recent.state(0)[1],
            "users": users.astype(np.int32),
            "history_items": history_items,
            "history_weights": history_weights,
        }
        if changes.recent_rescaled:  # every item's recent popularity changed: carried whole
            arrays["recent_whole"] = self._recent.state(len(self.items))[0]
        return arrays

    def _entries_at(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The column and value of each co-occurrence entry named by ``keys`` (row << 32 | slot)."""
        return self._rows.entries_at(keys >> 32, keys & 0xFFFFFFFF)

    # -- state ---------------------------------------------------------------------------

    def to_state_params(self) -> dict[str, float | int | str]:
        """The ``params`` of :meth:`to_state` (without building the rest)."""
        return {
            "window": self.window,
            "gamma": self.gamma,
            "recency": self.recency,
            "alpha": self.alpha,
            "beta": self.beta,
            "forward": self.forward,
            "backward": self.backward,
            "popularity_weight": self.popularity_weight,
            "half_life_days": self.half_life_days,
            "neighbours": self.neighbours,
        }

    def to_state(self) -> ModelState:
        state = self.to_encodable_state()
        for name in ("indices", "data"):
            state.arrays[name] = state.arrays[name].array()
        state.ids = {name: list(ids) for name, ids in state.ids.items()}  # a copy to keep, as the arrays
        return state

    def to_encodable_state(self) -> ModelState:
        """:meth:`to_state` with the co-occurrence rows as :class:`learner.codec.Chunks` of the rows' own buffers,
        for :func:`learner.codec.encode` right away: not to be kept (see :meth:`SparseRows.to_csr_chunks`)."""
        indptr, indices, data = self._rows.to_csr_chunks()
        n_items = len(self.items)
        recent_mass, recent_clock = self._recent.state(n_items)
        hist_items, hist_weights = self._history.to_arrays()
        return ModelState(
            kind=self.kind,
            params=self.to_state_params(),
            ids={"users": self.users.ids, "items": self.items.ids},  # (packed ones are written without a str an id)
            arrays={
                "indptr": indptr,
                "indices": indices,
                "data": data,
                "mass": self._mass[:n_items].copy(),
                # Kept, not recomputed on load: numpy's vectorised power can differ from the Python
                # ``**`` used while learning in the last bit, and a restored model must score identically.
                "candidate_damping": self._candidate_damping[:n_items].copy(),
                "row_damping": self._row_damping[:n_items].copy(),
                "recent": recent_mass,
                "recent_clock": recent_clock,
                "history_items": hist_items,
                "history_weights": hist_weights,
            },
        )

    @classmethod
    def from_state(cls, state: ModelState) -> ItemCooccurrence:
        expect_kind(state, cls.kind)
        p = state.params
        model = cls(
            window=int(p["window"]),
            gamma=float(p["gamma"]),
            recency=float(p["recency"]),
            alpha=float(p["alpha"]),
            beta=float(p["beta"]),
            forward=float(p["forward"]),
            backward=float(p["backward"]),
            popularity_weight=float(p["popularity_weight"]),
            half_life_days=float(p["half_life_days"]),
            neighbours=int(p.get("neighbours", 0)),  # snapshots made before the cap ranked from every entry
        )
        model.users = IdIndex(state.ids["users"])
        model.items = IdIndex(state.ids["items"])
        n_users, n_items = len(model.users), len(model.items)
        a = state.arrays
        mass = np.asarray(a["mass"], dtype=np.float64)
        hist_items = np.asarray(a["history_items"], dtype=np.int32)
        hist_weights = np.asarray(a["history_weights"], dtype=np.float64)
        if len(a["indptr"]) != n_items + 1 or mass.shape != (n_items,):
            raise ValueError("state arrays do not match its id lists")
        if hist_items.shape != (n_users, model.window) or hist_weights.shape != hist_items.shape:
            raise ValueError("history arrays do not match the user list")
        if hist_items.size and (hist_items.max() >= n_items or hist_items.min() < -1):
            raise ValueError("history refers to unknown items")
        model._rows = SparseRows.from_csr(np.asarray(a["indptr"]), np.asarray(a["indices"]), a["data"], n_items)
        model._mass = mapped_copy(mass, n_items + 1)
        model._recent.load(a["recent"], a["recent_clock"], n_items)
        model._candidate_damping = _damping(a, "candidate_damping", model._mass, model.beta)
        model._row_damping = _damping(a, "row_damping", model._mass, model.alpha)
        model._history = UserHistories(model.window, hist_items, hist_weights)  # copied on first change
        return model

    # -- a delta, in place (a served model: learner.cooccurrence_delta.apply_in_place) ---------

    def make_room_for_deltas(self) -> None:
        """Take the loaded arrays over now (rows laid out with room, history arrays copied), as the first delta
        applied in place would."""
        self._rows.make_room()
        self._history.extend(len(self._history))

    @property
    def rows(self) -> SparseRows:
        """The co-occurrence rows (one per item)."""
        return self._rows

    def add_ids(self, users: list[str], items: list[str]) -> None:
        """Register ids a delta adds (none known yet): items get empty rows."""
        for user in users:
            self.users.add(user)
        self._history.extend(len(self.users))
        n_items0 = len(self.items)
        for item in items:
            self.items.add(item)
        n_items = len(self.items)
        if n_items == n_items0:
            return
        self._rows.add_rows(n_items - n_items0)
        grow_rows(self, "_mass", n_items - 1)
        self._recent.ensure(n_items - 1)
        if n_items > len(self._candidate_damping):
            _grow_ones(self, "_candidate_damping", len(self._mass))
            _grow_ones(self, "_row_damping", len(self._mass))

    def set_item_values(self, items: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """A delta's per-item values at ``items`` (its ``mass``, ``candidate_damping``, ``row_damping``,
        ``recent``, ``recent_clock`` and, after a rescale, ``recent_whole``)."""
        self._mass[items] = values["mass"]
        self._candidate_damping[items] = values["candidate_damping"]
        self._row_damping[items] = values["row_damping"]
        recent = self._recent
        if "recent_whole" in values:  # every item's value changed (a rescale): the whole array, as apply() takes it
            recent.mass[: len(self.items)] = values["recent_whole"]
        else:
            recent.mass[items] = values["recent"]
        recent.set_clock(values["recent_clock"])

    def set_histories(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray) -> None:
        """A delta's history rows of ``users`` (as :meth:`to_state` writes them)."""
        self._history.replace(users, items, weights)

    # -- internals -------------------------------------------------------------------

    def _user_row(self, user: str) -> int:
        row, new = self.users.add(user)
        if new:
            self._history.append({})
        return row

    def _item_row(self, item: str) -> int:
        row, new = self.items.add(item)
        if new:
            self._rows.add_rows(1)
            grow_rows(self, "_mass", row)
            self._recent.ensure(row)
            if row >= len(self._candidate_damping):
                _grow_ones(self, "_candidate_damping", len(self._mass))
                _grow_ones(self, "_row_damping", len(self._mass))
        return row


def strongest(cols: np.ndarray, vals: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """A row's ``cap`` strongest entries when it has more (0: every entry): the largest values, equal values by
    lower column, a NaN value counting as -inf; what the compiled ranking reads of a row (in another order, which
    changes no sum: a column appears once in a row).

    >>> cols, vals = strongest(np.array([5, 1, 3, 2], np.int32), np.array([1, 2, 2, 3], np.float32), 2)
    >>> cols.tolist(), vals.tolist()
    ([2, 1], [3.0, 2.0])
    """
    if not cap or len(cols) <= cap:
        return cols, vals
    strength = np.where(np.isnan(vals), np.float32(-np.inf), vals)
    keep = np.lexsort((cols, -strength))[:cap]
    return cols[keep], strength[keep]


class UserHistories:
    """Each user's remembered items (item row -> weight, oldest first), as a list of dicts.

    The snapshot form is two ``(users, window)`` arrays (item rows, -1 padded; weights). Loaded
    from them, a user's dict is built on first access: an API process serving a new version
    touches only the users it is asked about, so loading a version does not pay for every user's
    dict (0.2 s at 50,000 users). The arrays are kept and brought up to date by :meth:`to_arrays`
    (and, for the users a delta carries, :meth:`arrays_of`) from the users marked since (by
    :meth:`for_update`, or new by :meth:`append`), so a checkpoint costs what changed, not a
    Python loop over every user.
    """

    def __init__(self, window: int, items: np.ndarray | None = None, weights: np.ndarray | None = None) -> None:
        self.window = window
        self._items = np.full((0, window), -1, dtype=np.int32) if items is None else items
        self._weights = np.zeros((0, window), dtype=np.float64) if weights is None else weights
        self._owned = items is None  # loaded arrays are the caller's (or the blob's): copied before a write
        self._rows: list[dict[int, float] | None] = [None] * len(self._items)
        self._changed: set[int] = set()  # users whose dict may differ from their row of the arrays
        # users changed since take_changed_since_mark(); None (not tracked) until it is first called
        self.changed_since_mark: set[int] | None = None

    def __getitem__(self, u: int) -> dict[int, float]:
        row = self._rows[u]
        if row is None:
            items, weights = self._items[u].tolist(), self._weights[u].tolist()
            row = {int(j): float(w) for j, w in zip(items, weights, strict=True) if j >= 0}
            self._rows[u] = row
        return row

    def for_update(self, u: int) -> dict[int, float]:
        """The user's dict, marked to be written to the arrays at the next :meth:`to_arrays` (or :meth:`arrays_of`
        that carries the user)."""
        self._changed.add(u)
        since = self.changed_since_mark
        if since is not None:
            since.add(u)
        return self[u]

    def append(self, row: dict[int, float]) -> None:
        self._changed.add(len(self._rows))  # a new user: a delta carries every user added since its mark
        self._rows.append(row)

    def extend(self, n: int) -> None:
        """Room for ``n`` users in arrays of this object's own, the new ones' rows to come from them
        (:meth:`replace`)."""
        if n > len(self._rows):
            self._rows.extend([None] * (n - len(self._rows)))
        self._ensure_capacity()

    def replace(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray) -> None:
        """Set the rows of ``users`` in the arrays (item rows -1 padded, weights); their dicts are built again
        from them on first access."""
        self._ensure_capacity()
        self._items[users] = items
        self._weights[users] = weights
        rows = self._rows
        for u in users.tolist():
            rows[u] = None
        self._changed.difference_update(users.tolist())

    def arrays_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of :meth:`to_arrays` for ``users`` only (what a delta carries), copies. Those of them changed
        since are written to the arrays first, so the next :meth:`to_arrays` (a whole snapshot, under the
        worker's checkpoint lock) writes only the users changed after the last delta, not every user changed
        since the last whole snapshot (0.45 s at 50,000 users on the grown bench model)."""
        self._ensure_capacity()
        changed = self._changed
        pending = [u for u in users.tolist() if u in changed]
        self._write(pending)
        changed.difference_update(pending)
        return self._items[users], self._weights[users]

    def take_changed_since_mark(self) -> set[int]:
        """The users changed since the last call (empty the first time), and track afresh from now."""
        changed, self.changed_since_mark = self.changed_since_mark or set(), set()
        return changed

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[int, float]]:
        for u in range(len(self._rows)):
            yield self[u]

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, weights), each ``(users, window)``, oldest first, -1 / 0 padded; copies."""
        self._ensure_capacity()
        if self._changed:
            self._write(sorted(self._changed))
            self._changed.clear()
        n = len(self._rows)
        return self._items[:n].copy(), self._weights[:n].copy()

    def _ensure_capacity(self) -> None:
        """Arrays of this object's own, with a row for every user."""
        n = len(self._rows)
        if n > len(self._items) or not self._owned:  # grow by a quarter, or take a copy of loaded arrays
            # kept between checkpoints (12 bytes per user and window slot): a quarter of slack, not a double
            size = max(n, len(self._items) + len(self._items) // 4) if n > len(self._items) else len(self._items)
            items = np.full((size, self.window), -1, dtype=np.int32)
            weights = np.zeros((size, self.window), dtype=np.float64)
            items[: len(self._items)] = self._items
            weights[: len(self._weights)] = self._weights
            self._items, self._weights, self._owned = items, weights, True

    def _write(self, users: list[int]) -> None:
        """Write the dicts of ``users`` (each materialised) to their rows of the arrays."""
        if not users:
            return
        kernel = kernels.compiled()
        if kernel is not None:  # each remembered item in C: 5.3% of the worker's samples on the grown bench model
            users_at = np.asarray(users, dtype=np.int64)
            kernel.write_histories(self._rows, users_at, self._items, self._weights, self.window)
            return
        # Iterated in C (map, chain), not a Python loop per user: a delta writes every user it carries, ~3,000
        # per delta at the bench's load, and this was a third of the cost of making one.
        histories: list[dict[int, float]] = list(map(self._rows.__getitem__, users))  # type: ignore[arg-type]
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        total = int(lengths.sum())
        item_rows = np.fromiter(chain.from_iterable(histories), dtype=np.int32, count=total)
        item_weights = np.fromiter(chain.from_iterable(map(dict.values, histories)), dtype=np.float64, count=total)
        at_user = np.repeat(np.asarray(users, dtype=np.int64), lengths)
        at_slot = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self._items[users] = -1
        self._weights[users] = 0.0
        self._items[at_user, at_slot] = item_rows
        self._weights[at_user, at_slot] = item_weights


def _damping(arrays: dict[str, np.ndarray], name: str, mass: np.ndarray, exponent: float) -> np.ndarray:
    """``max(mass, 1) ** -exponent`` per item: as saved, or recomputed for snapshots older than saving it."""
    n_items = len(arrays["mass"])
    saved = arrays.get(name)
    if saved is None:
        return mapped_copy(np.maximum(mass, 1.0) ** -exponent, 0)
    if saved.shape != (n_items,):
        raise ValueError(f"{name} does not match the item list")
    damping = mapped_copy(np.asarray(saved, dtype=np.float64), len(mass))  # as long as ``mass``, as it grows
    damping[n_items:] = 1.0
    return damping


def _grow_ones(owner: object, name: str, size: int) -> None:
    """Make ``owner.<name>`` (per-item damping) ``size`` entries long, the new ones 1.0, in place where it can
    (learner.arrays)."""
    old = len(getattr(owner, name))
    resize_mapped(owner, name, size, keep=old)
    getattr(owner, name)[old:] = 1.0

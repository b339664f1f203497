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
everything. A brand-new item becomes recommendable the moment someone takes it after
another item, because its row and column are created on that event.

Most of the catalogue has no evidence for a given user, so the ranking adds a small
``popularity_weight`` times the items' time-decayed popularity (half-life ``half_life_days`` of
stream time): a tie-breaker that orders what co-occurrence cannot, in the same single pass.

Storage is one growable sparse row per item (column and value arrays plus a column-to-slot
dict; after a load, a row stays a slice of the snapshot's arrays until its first update), so an
update costs ``2 * window`` dict lookups and scoring a user costs ``window`` numpy scatter-adds,
never a loop over the catalogue.

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
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from operator import getitem

import numpy as np

from learner import codec, kernels
from learner.arrays import ensure_rows
from learner.base import ModelState, expect_kind
from learner.id_index import IdIndex
from learner.popularity_models import DecayedCounter

#: Co-occurrence entries recorded since the last mark beyond which recording stops (8 bytes each): a delta that
#: large would cost about what a whole snapshot does.
CHANGE_LOG_LIMIT = 8_000_000
#: Share of the pool that rows which moved may leave behind before it is laid out again (in one go, ~0.2 s at 10M
#: entries: rare, as a row that moves takes room to grow by half again).
POOL_GARBAGE_SHARE = 0.5
#: Rows at least this long are copied a slice each when the pool is laid out or a row moves (the shorter ones
#: together, by one gather: a slice costs ~1 us of Python, a gathered entry ~10 ns).
COPY_SLICE_MIN = 128
#: A delta's entries are read from their rows joined into one buffer unless the touched rows hold more than this
#: many entries per entry read (copying a row costs ~1 ns an entry, reading one entry from Python ~150 ns).
ENTRY_GATHER_JOIN_FACTOR = 32


@dataclass(frozen=True)
class Changes:
    """What :meth:`ItemCooccurrence.changes` reports: the id-list sizes at the mark and what changed since."""

    n_users: int
    n_items: int
    keys: np.ndarray  # int64 row << 32 | slot of every co-occurrence entry touched, sorted, each once
    items: np.ndarray  # int64 item rows whose mass, damping or recent popularity may have changed, sorted
    users: np.ndarray  # int64 user rows whose history may have changed, sorted
    recent_rescaled: bool  # the recent-popularity counter rescaled every item: its whole array changed


_NO_COLS = np.zeros(0, dtype=np.int32)
_NO_VALS = np.zeros(0, dtype=np.float32)


def _is_none(value: object) -> bool:
    return value is None


@dataclass(frozen=True)
class EntryPlan:
    """A delta's co-occurrence entries checked against the rows (:meth:`SparseRows.check_entries`), grouped by row."""

    rows: np.ndarray  # int64, per entry (sorted by row and slot)
    slots: np.ndarray  # int64, per entry
    cols: np.ndarray  # int32, per entry
    touched: np.ndarray  # int64, each row once
    first: np.ndarray  # per touched row: its first entry
    ends: np.ndarray  # per touched row: past its last entry
    lengths: np.ndarray  # per touched row: its length before the delta (0 for a new row)
    lazy: np.ndarray  # per touched row: held in the pool (not materialised)


class SparseRows:
    """A growable sparse matrix: per row, parallel column/value arrays in insertion order.

    Rows are ``array.array`` buffers, so a single update is a plain Python operation (no numpy
    call overhead) while :meth:`row` still hands numpy a zero-copy view for scoring.

    Loaded from CSR arrays (:meth:`from_csr`), a row stays a slice of those arrays until it is
    first changed: then (in :meth:`slots`) it gets its own buffers and column-to-slot dict. So a
    row is *materialised* exactly when ``_slot[row]`` is not None, and loading a snapshot to
    serve it allocates nothing per row.

    A served model takes a delta's entries in place (:meth:`set_entries`) without materialising
    rows: the loaded arrays become a *pool* in which each such row has a start, a length and a
    capacity. An entry at an existing slot is written where it is; a row that grows past its
    capacity moves to the pool's end with room to grow by half again (the place it leaves is
    garbage, and the pool is compacted once garbage is half of it). So a delta costs what it
    carries, not a rebuild of every row.
    """

    def __init__(self) -> None:
        self._cols: list[array | None] = []  # None: the row is still a slice of the pool (the loaded CSR)
        self._vals: list[array | None] = []
        self._slot: list[dict[int, int] | None] = []  # column -> slot; None until materialised
        # per row (those not materialised; zeros for the others): where in the pool its entries start, how many
        # there are, and how many fit there
        self._base_start = np.zeros(0, dtype=np.int64)
        self._base_len = np.zeros(0, dtype=np.int64)
        self._base_cap = np.zeros(0, dtype=np.int64)
        self._base_indices = _NO_COLS  # the pool: the loaded CSR's arrays (views of the snapshot until written)
        self._base_data = _NO_VALS
        self._pool_end = 0  # pool entries in use or left behind by moved rows; past it, free room
        self._pool_owned = False  # the pool's arrays are this object's (else the snapshot's or the caller's)
        self._garbage = 0  # pool entries left behind by rows that moved
        self._n_lazy = 0  # rows still slices of the pool

    def __len__(self) -> int:
        return len(self._cols)

    def add_row(self) -> None:
        self._cols.append(array("i"))
        self._vals.append(array("f"))
        self._slot.append({})

    def slots(self, row: int) -> dict[int, int]:
        """The row's column -> slot dict; materialises a loaded row (call before using ``_cols[row]``)."""
        slots = self._slot[row]
        if slots is None:
            base_cols, base_vals = self._base_row(row)
            cols, vals = array("i"), array("f")
            cols.frombytes(base_cols.tobytes())
            vals.frombytes(base_vals.tobytes())
            self._cols[row], self._vals[row] = cols, vals
            self._n_lazy -= 1
            slots = self._slot[row] = {c: k for k, c in enumerate(cols)}
        return slots

    def add(self, row: int, col: int, value: float) -> None:
        slots = self._slot[row]
        if slots is None:
            slots = self.slots(row)
        k = slots.get(col)
        cols, vals = self._cols[row], self._vals[row]
        assert cols is not None and vals is not None
        if k is None:
            slots[col] = len(cols)
            cols.append(col)
            vals.append(value)
        else:
            vals[k] += value

    def get(self, row: int, col: int) -> float:
        k = self.slots(row).get(col)
        vals = self._vals[row]
        return 0.0 if k is None or vals is None else float(vals[k])

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of one row as zero-copy numpy views; drop them before the row grows."""
        cols, vals = self._cols[row], self._vals[row]
        if cols is None or vals is None:
            return self._base_row(row)
        if not cols:
            return _NO_COLS, _NO_VALS
        return np.frombuffer(cols, dtype=np.int32), np.frombuffer(vals, dtype=np.float32)

    def buffers(self, row: int) -> tuple[array | np.ndarray, array | np.ndarray]:
        """(columns, values) of one row as buffers: the row's own arrays, or views of the loaded ones; cheaper than
        :meth:`row` where only their bytes are read (no numpy view of each). Drop them before the row grows."""
        cols = self._cols[row]
        if cols is None:
            return self._base_row(row)
        return cols, self._vals[row]  # type: ignore[return-value]

    def _base_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        lo = int(self._base_start[row])
        hi = lo + int(self._base_len[row])
        return self._base_indices[lo:hi], self._base_data[lo:hi]

    @property
    def nnz(self) -> int:
        return sum(len(self.row(r)[0]) for r in range(len(self)))

    def to_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, data); read-only arrays that share nothing with the rows."""
        indptr, indices, data = self.to_csr_chunks()
        return indptr, indices.array(), data.array()

    def to_csr_chunks(self) -> tuple[np.ndarray, codec.Chunks, codec.Chunks]:
        """(indptr, indices, data) with the last two as :class:`learner.codec.Chunks` of the rows' buffers (views of
        the loaded arrays for rows not yet materialised), for encoding them without a joined copy. Encode them
        right away: they show later changes of the values, and while a view of a row is held it cannot grow."""
        cols_of, vals_of = self._cols, self._vals
        if not self._n_lazy:  # every row materialised (always so in a model never loaded)
            col_parts: list = cols_of
            val_parts: list = vals_of
        else:
            col_parts, val_parts = [], []
            for r in range(len(cols_of)):
                cols, vals = self.row(r)
                col_parts.append(cols)
                val_parts.append(vals)
        indptr = np.zeros(len(col_parts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, col_parts), dtype=np.int64, count=len(col_parts)), out=indptr[1:])
        nnz = int(indptr[-1])
        native_i4, native_f4 = np.dtype(np.int32).str, np.dtype(np.float32).str  # the buffers' own byte order
        return indptr, codec.Chunks(native_i4, col_parts, nnz), codec.Chunks(native_f4, val_parts, nnz)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int) -> SparseRows:
        n_rows = len(indptr) - 1
        if n_rows < 0 or indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data):
            raise ValueError("malformed sparse rows")
        if np.any(np.diff(indptr) < 0) or (len(indices) and (indices.min() < 0 or indices.max() >= n_cols)):
            raise ValueError("malformed sparse rows")
        rows = cls()
        indptr = np.asarray(indptr, dtype=np.int64)
        rows._base_start = indptr[:-1].copy()
        rows._base_len = np.diff(indptr)
        rows._base_cap = rows._base_len.copy()
        rows._base_indices = np.ascontiguousarray(indices, dtype=np.int32)
        rows._base_data = np.ascontiguousarray(data, dtype=np.float32)
        rows._pool_end = len(indices)
        rows._cols = [None] * n_rows
        rows._vals = [None] * n_rows
        rows._slot = [None] * n_rows
        rows._n_lazy = n_rows
        return rows

    # -- a delta's entries, in place (a served model) ----------------------------------------

    def check_entries(
        self, rows: np.ndarray, slots: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int
    ) -> EntryPlan:
        """What :meth:`set_entries` writes once the matrix has ``n_rows`` rows (the new ones empty, added with
        :meth:`add_lazy_rows`). Raises ValueError unless the entries are sorted by row and slot, each once,
        within bounds, each existing slot keeping its column, and each row's new slots consecutive from its
        length. Changes nothing."""
        n = len(rows)
        if rows.ndim != 1 or slots.shape != rows.shape or cols.shape != rows.shape:
            raise ValueError("delta entries do not match their base")
        if n and (rows.min() < 0 or rows.max() >= n_rows or slots.min() < 0 or cols.min() < 0 or cols.max() >= n_cols):
            raise ValueError("delta entries outside the model")  # checked before the casts below, which could wrap
        rows, slots = rows.astype(np.int64), slots.astype(np.int64)
        cols = cols.astype(np.int32, copy=False)
        if n == 0:
            return EntryPlan(rows, slots, cols, rows, rows, rows, rows, np.zeros(0, dtype=bool))
        if n > 1 and np.any(np.diff(rows << 32 | slots) <= 0):
            raise ValueError("delta entries are not sorted by row and slot, each once")
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
        ends = np.append(first[1:], n)
        touched = rows[first]
        n_now = len(self._cols)
        if self._n_lazy == n_now:  # no row materialised (a served model, unless /v1/scores read some)
            lazy = np.ones(len(touched), dtype=bool)
        else:
            lazy = touched >= n_now
            old = ~lazy
            slot_of = self._slot
            lazy[old] = np.fromiter(map(_is_none, map(slot_of.__getitem__, touched[old].tolist())), dtype=bool,
                                    count=int(old.sum()))  # fmt: skip
        lengths = np.zeros(len(touched), dtype=np.int64)
        pooled = lazy & (touched < n_now)
        lengths[pooled] = self._base_len[touched[pooled]]
        cols_of = self._cols
        for k in np.flatnonzero(~lazy).tolist():
            lengths[k] = len(cols_of[int(touched[k])])  # type: ignore[arg-type]
        existing = slots < np.repeat(lengths, ends - first)
        added = (ends - first) - np.add.reduceat(existing.astype(np.int64), first)
        if np.any(np.maximum(slots[ends - 1] + 1 - lengths, 0) != added):
            raise ValueError("delta entries past a row's length are not its next slots")
        at = np.flatnonzero(existing)
        if at.size:
            in_pool = np.repeat(lazy, ends - first)[at]
            pool_at = at[in_pool]
            if np.any(self._base_indices[self._base_start[rows[pool_at]] + slots[pool_at]] != cols[pool_at]):
                raise ValueError("delta names another column at a slot the base has")
            for k in at[~in_pool].tolist():
                if cols_of[int(rows[k])][int(slots[k])] != int(cols[k]):  # type: ignore[index]
                    raise ValueError("delta names another column at a slot the base has")
        return EntryPlan(rows, slots, cols, touched, first, ends, lengths, lazy)

    def set_entries(self, plan: EntryPlan, vals: np.ndarray) -> None:
        """Write the entries of a :meth:`check_entries` plan, with values ``vals``: at an existing slot in place,
        new slots appended (a row out of room moves to the pool's end)."""
        if not len(plan.rows):
            return
        vals = vals.astype(np.float32, copy=False)
        rows, slots, cols, touched, first, ends, lengths, lazy = (
            plan.rows, plan.slots, plan.cols, plan.touched, plan.first, plan.ends, plan.lengths, plan.lazy,
        )  # fmt: skip
        for k in np.flatnonzero(~lazy).tolist():  # materialised rows (a served model reads them for /v1/scores)
            row = int(touched[k])
            row_cols, row_vals, row_slots = self._cols[row], self._vals[row], self._slot[row]
            for e in range(int(first[k]), int(ends[k])):
                slot, col, val = int(slots[e]), int(cols[e]), float(vals[e])
                if slot < len(row_cols):  # type: ignore[arg-type]
                    row_vals[slot] = val  # type: ignore[index]
                else:
                    row_slots[col] = slot  # type: ignore[index]
                    row_cols.append(col)  # type: ignore[union-attr]
                    row_vals.append(val)  # type: ignore[union-attr]
        if not lazy.any():
            return
        self.make_room()
        pool_rows, pool_lengths = touched[lazy], lengths[lazy]
        new_lengths = np.maximum(pool_lengths, slots[ends[lazy] - 1] + 1)
        moving = new_lengths > self._base_cap[pool_rows]
        if moving.any():
            self._move(pool_rows[moving], pool_lengths[moving], new_lengths[moving])
        in_pool = np.repeat(lazy, ends - first)
        where = self._base_start[rows[in_pool]] + slots[in_pool]
        self._base_indices[where] = cols[in_pool]
        self._base_data[where] = vals[in_pool]
        self._base_len[pool_rows] = new_lengths
        if self._garbage > POOL_GARBAGE_SHARE * self._pool_end:
            self._lay_out()

    def make_room(self) -> None:
        """The pool as arrays of this object's own (the loaded ones are the snapshot's, or its caller's, with no
        room in any row): laid out again once, with room in every row for a quarter more. The first
        :meth:`set_entries` does it; a process that loads a model to serve it calls it where it loads, so as not
        to pay it while it serves."""
        if not self._pool_owned:
            self._lay_out()

    def add_lazy_rows(self, count: int) -> None:
        """Append ``count`` empty rows held in the pool (a served model's new items), not materialised."""
        if count <= 0:
            return
        n = len(self._cols)
        self._cols.extend([None] * count)
        self._vals.extend([None] * count)
        self._slot.extend([None] * count)
        self._n_lazy += count
        size = n + count
        if len(self._base_start) < size:  # materialised rows added since the load have no place: zeros
            for name in ("_base_start", "_base_len", "_base_cap"):
                grown = np.zeros(max(size, len(self._base_start) * 5 // 4), dtype=np.int64)
                old = getattr(self, name)
                grown[: len(old)] = old
                setattr(self, name, grown)
        self._base_start[n:size] = self._pool_end
        self._base_len[n:size] = 0
        self._base_cap[n:size] = 0

    def _move(self, rows: np.ndarray, lengths: np.ndarray, new_lengths: np.ndarray) -> None:
        """Move ``rows`` (now ``lengths`` long) to the pool's end, with room for ``new_lengths`` and half again."""
        caps = new_lengths + new_lengths // 2 + 4
        starts = self._pool_end + np.cumsum(caps) - caps
        self._reserve(int(caps.sum()))
        self._copy_rows(rows, lengths, self._base_indices, self._base_data, starts)
        self._garbage += int(self._base_cap[rows].sum())
        self._pool_end += int(caps.sum())
        self._base_start[rows] = starts
        self._base_cap[rows] = caps

    def _copy_rows(
        self, rows: np.ndarray, lengths: np.ndarray, indices: np.ndarray, data: np.ndarray, starts: np.ndarray
    ) -> None:
        """Copy the pooled ``rows`` (``lengths`` long) to ``starts`` of ``indices`` and ``data``: long rows a slice
        each, the short ones (most rows, few entries) by one gather over all their entries."""
        src_starts = self._base_start[rows]
        long = lengths >= COPY_SLICE_MIN
        pool_indices, pool_data = self._base_indices, self._base_data
        for src, dst, n in zip(src_starts[long].tolist(), starts[long].tolist(), lengths[long].tolist(), strict=True):
            indices[dst : dst + n] = pool_indices[src : src + n]
            data[dst : dst + n] = pool_data[src : src + n]
        short = ~long
        lengths = lengths[short]
        total = int(lengths.sum())
        if total:
            offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            src = np.repeat(src_starts[short], lengths) + offset
            dst = np.repeat(starts[short], lengths) + offset
            indices[dst] = pool_indices[src]
            data[dst] = pool_data[src]

    def _reserve(self, extra: int) -> None:
        """Room for ``extra`` more entries past the pool's end (the pool grows by a quarter at least)."""
        need = self._pool_end + extra
        size = len(self._base_indices)
        if need <= size:
            return
        size = max(need, size + size // 4 + 1024)
        for name in ("_base_indices", "_base_data"):
            old = getattr(self, name)
            grown = np.empty(size, dtype=old.dtype)
            grown[: self._pool_end] = old[: self._pool_end]
            setattr(self, name, grown)

    def _lay_out(self) -> None:
        """Lay the pooled rows out one after the other in new arrays, each with room for a quarter more (no
        garbage left)."""
        n = min(len(self._cols), len(self._base_start))
        pooled = np.flatnonzero(np.fromiter(map(_is_none, self._slot[:n]), dtype=bool, count=n))
        lengths = self._base_len[pooled]
        caps = lengths + lengths // 4 + 4
        starts = np.cumsum(caps) - caps
        size = int(caps.sum())
        indices = np.empty(size + size // 8 + 1024, dtype=np.int32)
        data = np.empty(len(indices), dtype=np.float32)
        self._copy_rows(pooled, lengths, indices, data, starts)
        self._base_indices, self._base_data, self._pool_owned = indices, data, True
        self._base_start[pooled] = starts
        self._base_cap[pooled] = caps
        self._pool_end, self._garbage = size, 0


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
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
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
        self._recent = DecayedCounter(half_life_days)  # recent popularity: the tie-breaker
        self.half_life_days = self._recent.half_life_days
        self.users = IdIndex()
        self.items = IdIndex()
        self._rows = SparseRows()
        self._mass = np.zeros(16, dtype=np.float64)  # total weight per item
        self._candidate_damping = np.ones(16, dtype=np.float64)  # max(mass, 1) ** -beta, kept up to date
        self._row_damping = np.ones(16, dtype=np.float64)  # max(mass, 1) ** -alpha, kept up to date
        self._recency_powers = [self.recency**age for age in range(self.window)]
        self._history = UserHistories(self.window)  # per user: item row -> weight, oldest first
        self._scratch_buffer = np.empty(0, dtype=np.float64)
        self._last_pairs: tuple[int, int, list[tuple[array, int, array, int, float]]] | None = None
        # What changed since mark_changes() (learner.cooccurrence_delta): every co-occurrence entry touched, as
        # row << 32 | slot (None once over CHANGE_LOG_LIMIT: then only a whole snapshot says what changed), the
        # items learned (their mass, damping and recent popularity), and the sizes of the id lists then.
        self._change_log: array | None = None  # not recorded until the first mark_changes()
        self._changed_items: set[int] = set()
        self._marked_sizes = (0, 0)

    # -- River-style interface -------------------------------------------------------

    def advance_clock(self, ts: float) -> None:
        self._recent.advance(ts)

    def learn_one(self, user: str, item: str, y: float) -> None:
        u = self._user_row(user)
        i = self._item_row(item)
        log = self._change_log
        if log is not None:
            self._changed_items.add(i)  # every learned event's item: the learner's popularity counts it too
            if len(log) > CHANGE_LOG_LIMIT:
                self._change_log = None  # too much since the mark for a delta to pay: the next snapshot is whole
        if y <= 0:
            return
        history = self._history.for_update(u)
        forward, backward = self.forward, self.backward
        last = self._last_pairs
        if last is not None and last[0] == u and last[1] == i:
            # The same (user, item) again (a like right after its view): the history has not
            # changed but for this item's own weight, so the pairs and their slots are the same.
            for vals_j, k_j, vals_i, k_i, base in last[2]:
                inc = y * base
                vals_j[k_j] += forward * inc
                vals_i[k_i] += backward * inc
        else:
            self._last_pairs = (u, i, self._add_pairs(history, i, y))
        self._recent.add(i, y)
        mass = float(self._mass[i]) + y
        self._mass[i] = mass
        self._candidate_damping[i] = max(mass, 1.0) ** -self.beta
        self._row_damping[i] = max(mass, 1.0) ** -self.alpha
        history[i] = history.pop(i, 0.0) + y
        if len(history) > self.window:
            del history[next(iter(history))]
            self._last_pairs = None  # an item left the window: the next event must pair afresh

    def _add_pairs(self, history: dict[int, float], i: int, y: float) -> list[tuple[array, int, array, int, float]]:
        """``C[j, i]`` and ``C[i, j]`` for every remembered ``j``; returns the slots touched, for a repeat."""
        rows = self._rows
        cols_of, vals_of, slot_of = rows._cols, rows._vals, rows._slot
        slots_i = slot_of[i]
        if slots_i is None:
            slots_i = rows.slots(i)
        cols_i, vals_i = cols_of[i], vals_of[i]
        forward, backward, gamma = self.forward, self.backward, self.gamma
        touched = []
        log = self._change_log
        log_append = log.append if log is not None else None
        i_key = i << 32
        base = 1.0
        for j, w_j in reversed(history.items()):
            if j == i:  # a like after a view of the same item: pair it with the others only
                continue
            pair = base * w_j
            inc = y * pair
            base *= gamma
            # Inlined SparseRows.add: this loop is the replay's hot path.
            slots_j = slot_of[j]
            if slots_j is None:
                slots_j = rows.slots(j)
            k_j = slots_j.get(i)
            if k_j is None:
                k_j = slots_j[i] = len(cols_of[j])
                cols_of[j].append(i)
                vals_of[j].append(forward * inc)
            else:
                vals_of[j][k_j] += forward * inc
            k_i = slots_i.get(j)
            if k_i is None:
                k_i = slots_i[j] = len(cols_i)
                cols_i.append(j)
                vals_i.append(backward * inc)
            else:
                vals_i[k_i] += backward * inc
            touched.append((vals_of[j], k_j, vals_i, k_i, pair))
            if log_append is not None:
                log_append(j << 32 | k_j)
                log_append(i_key | k_i)
        return touched

    def predict_one(self, user: str, item: str) -> float:
        """``1 - exp(-evidence)``: monotone in the co-occurrence evidence, not a calibrated probability."""
        u = self.users.get(user)
        i = self.items.get(item)
        if u is None or i is None:
            return 0.0
        rows = self._rows
        slot_of, vals_of = rows._slot, rows._vals
        damping, powers = self._row_damping, self._recency_powers
        evidence = 0.0
        # _weighted_history inlined, each weight computed only for a remembered item that co-occurs with ``i``:
        # most do not, and this runs for every learned event (predicted before it is learned).
        for age, (j, w_j) in enumerate(reversed(self._history[u].items())):
            slots = slot_of[j]
            k = (slots if slots is not None else rows.slots(j)).get(i)
            if k is not None:
                evidence += w_j * powers[age] * float(damping[j]) * vals_of[j][k]
        return 1.0 - math.exp(-evidence * float(self._candidate_damping[i]))

    def knows_user(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and bool(self._history[u])

    def score_all(self, user: str) -> np.ndarray:
        """Co-occurrence evidence scaled to a maximum of 1, plus ``popularity_weight`` times recent
        popularity scaled the same way (so items without evidence are ordered by what is popular now)."""
        n_items = len(self.items)
        recent = self._recent
        kernel = kernels.compiled()
        if kernel is not None:  # the same numbers in two passes over the catalogue instead of six
            parts, weights = self._weighted_rows(user)
            scores = np.empty(n_items, dtype=np.float64)
            kernel.cooccurrence_scores(
                parts,
                array("d", weights),
                self._candidate_damping,
                recent.mass,
                self.popularity_weight,
                recent.max,
                scores,
            )
            return scores
        scores = self._evidence(user, n_items)
        if self.popularity_weight and recent.max > 0 and n_items:
            top = float(scores.max())
            # Leave the evidence unscaled and scale the prior by ``top`` instead: same ranking, one pass fewer.
            factor = self.popularity_weight * (top if top > 0 else 1.0) / recent.max
            prior = np.multiply(recent.mass[:n_items], factor, out=self._scratch(n_items))
            scores += prior
        return scores

    def _scratch(self, n: int) -> np.ndarray:
        if len(self._scratch_buffer) < n:
            self._scratch_buffer = np.empty(max(n, 2 * len(self._scratch_buffer)), dtype=np.float64)
        return self._scratch_buffer[:n]

    def _weighted_rows(self, user: str) -> tuple[list[tuple[array | np.ndarray, array | np.ndarray]], list[float]]:
        """The (columns, values) buffers of the user's remembered items' rows, and each row's ranking weight;
        none for a user the model does not know."""
        u = self.users.get(user)
        if u is None:
            return [], []
        weighted = self._weighted_history(u)
        buffers = self._rows.buffers
        return [buffers(j) for j, _ in weighted], [w for _, w in weighted]

    def _evidence(self, user: str, n_items: int) -> np.ndarray:
        parts, row_weights = self._weighted_rows(user)
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

    def recent_items(self, user: str) -> list[str]:
        """The user's remembered items, most recent last."""
        u = self.users.get(user)
        return [] if u is None else [self.items.ids[j] for j in self._history[u]]

    # -- changes since a mark (incremental snapshots: learner.cooccurrence_delta) ------------

    def mark_changes(self) -> None:
        """Start recording changes afresh: the state now is the base the next :meth:`changes` is relative to."""
        self._change_log = array("q")
        self._changed_items = set()
        self._history.take_changed_since_mark()
        self._recent.rescaled = False
        self._marked_sizes = (len(self.users), len(self.items))
        self._last_pairs = None  # its repeat path writes slots without logging them: pair afresh once

    def stop_changes(self) -> None:
        """Stop recording changes until the next :meth:`mark_changes`."""
        self._change_log = None
        self._changed_items = set()
        self._history.changed_since_mark = None

    def changes(self) -> Changes | None:
        """What changed since :meth:`mark_changes`, or None if it was not recorded (a delta cannot be made).

        Entries are (row, slot) keys of the co-occurrence rows, each once, sorted; items and users
        are those whose per-item arrays or history rows may differ (the new ones included).
        """
        if self._change_log is None:
            return None
        n_users0, n_items0 = self._marked_sizes
        keys = np.sort(np.frombuffer(self._change_log, dtype=np.int64))  # sort, then drop repeats: several times
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
        """The column and value of each co-occurrence entry named by ``keys`` (row << 32 | slot, sorted)."""
        cols_of, vals_of = self._rows._cols, self._rows._vals  # a touched row was materialised to be written
        rows = keys >> 32
        slots = keys & 0xFFFFFFFF
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if len(keys) else rows
        touched = rows[first].tolist()
        lengths = np.fromiter(map(len, map(cols_of.__getitem__, touched)), dtype=np.int64, count=len(touched))
        if int(lengths.sum()) > ENTRY_GATHER_JOIN_FACTOR * len(keys):  # few entries of long rows: one by one
            rows_list, slots_list = rows.tolist(), slots.tolist()
            # map, not a comprehension: ~40% faster for the ~16 entries an event touches
            cols = np.array(list(map(getitem, map(cols_of.__getitem__, rows_list), slots_list)), dtype=np.int32)
            vals = np.array(list(map(getitem, map(vals_of.__getitem__, rows_list), slots_list)), dtype=np.float32)
            return cols, vals
        # The touched rows joined into one buffer each (a copy at memory speed), then one vectorised gather:
        # about half the time of reading ~30,000 entries one by one after 2,500 events of the ingest bench.
        starts = np.zeros(len(touched), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        at = np.repeat(starts, np.diff(np.append(first, len(keys)))) + slots
        cols = np.frombuffer(b"".join(map(cols_of.__getitem__, touched)), dtype=np.int32)[at]
        vals = np.frombuffer(b"".join(map(vals_of.__getitem__, touched)), dtype=np.float32)[at]
        return cols, vals

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
        }

    def to_state(self) -> ModelState:
        state = self.to_encodable_state()
        for name in ("indices", "data"):
            state.arrays[name] = state.arrays[name].array()
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
            ids={"users": list(self.users.ids), "items": list(self.items.ids)},
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
        model._mass = ensure_rows(mass.copy(), n_items)
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
        """Register ids a delta adds (none known yet): items get empty rows in the pool, not materialised."""
        for user in users:
            self.users.add(user)
        self._history.extend(len(self.users))
        n_items0 = len(self.items)
        for item in items:
            self.items.add(item)
        n_items = len(self.items)
        if n_items == n_items0:
            return
        self._rows.add_lazy_rows(n_items - n_items0)
        self._mass = ensure_rows(self._mass, n_items - 1)
        self._recent.ensure(n_items - 1)
        if n_items > len(self._candidate_damping):
            self._candidate_damping = _grow_ones(self._candidate_damping, len(self._mass))
            self._row_damping = _grow_ones(self._row_damping, len(self._mass))

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

    def _weighted_history(self, u: int) -> list[tuple[int, float]]:
        """(item row, ranking weight) for the user's remembered items: recency and popularity damped."""
        damping, powers = self._row_damping, self._recency_powers
        return [
            (j, w_j * powers[age] * float(damping[j]))
            for age, (j, w_j) in enumerate(reversed(self._history[u].items()))
        ]

    def _user_row(self, user: str) -> int:
        row, new = self.users.add(user)
        if new:
            self._history.append({})
        return row

    def _item_row(self, item: str) -> int:
        row, new = self.items.add(item)
        if new:
            self._rows.add_row()
            self._mass = ensure_rows(self._mass, row)
            self._recent.ensure(row)
            if row >= len(self._candidate_damping):
                self._candidate_damping = _grow_ones(self._candidate_damping, len(self._mass))
                self._row_damping = _grow_ones(self._row_damping, len(self._mass))
        return row


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
        return np.maximum(mass, 1.0) ** -exponent
    if saved.shape != (n_items,):
        raise ValueError(f"{name} does not match the item list")
    return _grow_ones(np.asarray(saved, dtype=np.float64), len(mass))


def _grow_ones(values: np.ndarray, size: int) -> np.ndarray:
    grown = np.ones(size, dtype=values.dtype)
    grown[: len(values)] = values
    return grown

"""A growable sparse matrix whose rows live in one pool: the co-occurrence rows of :mod:`learner.item_cooccurrence`.

Every row's entries are in two flat arrays (int32 columns, float32 values): row ``r`` holds ``length[r]``
entries from ``start[r]``, with room for ``cap[r]``. An entry keeps its slot (its position in the row) for
good: a delta names entries by ``row << 32 | slot``. A row that outgrows its room moves to the pool's end with
room to grow by half again; the place it leaves is garbage, and the pool is laid out afresh once garbage is
half of it.

Learning finds an entry's slot in one table keyed by ``(row, column)`` (:class:`learner._kernels.SlotTable`, a
``dict`` where the compiled loops are not built), built from the rows when the model first learns or predicts
after a load. A served model (loaded to rank, taking deltas in place) never builds it: ranking reads whole rows,
and :meth:`SparseRows.evidence` scans them. The update (:meth:`SparseRows.add_pairs`) runs in C
(:class:`learner._kernels.PoolRows`) or, without the compiled loops, in Python with the same floating-point
operations in the same order: the same model bit for bit either way.

>>> rows = SparseRows()
>>> rows.add_rows(3)
>>> rows.add_pairs({0: 1.0, 1: 2.0}, 2, 1.0, 0.5, 1.0, 1.0)  # item 2 after items 0 then 1
>>> [(cols.tolist(), vals.tolist()) for cols, vals in map(rows.row, range(3))]
[([2], [0.5]), ([2], [2.0]), ([1, 0], [2.0, 0.5])]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from learner import codec, kernels
from learner.arrays import mapped_empty, resize_mapped

#: Co-occurrence entries recorded since the last mark beyond which recording stops (8 bytes each): a delta that
#: large would cost about what a whole snapshot does.
CHANGE_LOG_LIMIT = 8_000_000
#: Share of the pool that rows which moved may leave behind before it is laid out again (in one go: rare, as a row
#: that moves takes room to grow by half again; a copy of each row's memory where the kernels are built: 16-28 ms in
#: process at 10.5M entries on a slow VM, where numpy's gather took 141-437 ms, ~0.8 s inside the worker).
POOL_GARBAGE_SHARE = 0.5
#: Rows at least this long are copied a slice each when the pool is laid out or a row moves (the shorter ones
#: together, by one gather: a slice costs ~1 us of Python, a gathered entry ~10 ns).
COPY_SLICE_MIN = 128

# The state array both the Python code and the compiled update read and write (learner/_kernels.c, PoolRows).
END, GARBAGE, LOG, ROWS, NEED = range(5)
# add_pairs' status (the same numbers in learner/_kernels.c)
OK, NEEDS_ROOM, NEEDS_LOG, OK_MOVED = range(4)

_NO_COLS = np.zeros(0, dtype=np.int32)
_NO_VALS = np.zeros(0, dtype=np.float32)


def _grown_cap(need: Any) -> Any:
    """A row's room when it moves to hold ``need`` entries: room to grow by half again."""
    return need + need // 2 + 4


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


class SparseRows:
    """Rows of (column, value) entries in insertion order, all in one pool (module doc)."""

    def __init__(self) -> None:
        self._n = 0
        self._start = np.zeros(16, dtype=np.int64)  # per row (capacity past self._n)
        self._len = np.zeros(16, dtype=np.int64)
        self._cap = np.zeros(16, dtype=np.int64)
        self._cols = np.zeros(1024, dtype=np.int32)  # the pool (a loaded snapshot's arrays until first written)
        self._vals = np.zeros(1024, dtype=np.float32)
        self._state = np.zeros(5, dtype=np.int64)  # END, GARBAGE, LOG, ROWS, NEED (see above)
        self._pool_owned = True  # the pool's arrays are this object's (else the snapshot's or the caller's)
        self._table: Any = None  # (row, column) -> slot: a SlotTable, or a dict keyed row << 32 | column
        self._log: np.ndarray | None = None  # row << 32 | slot of every entry touched since start_log()
        self._kernel: Any = None  # the update bound to the arrays above (PoolRows or _PythonPoolRows)

    def __len__(self) -> int:
        return self._n

    # -- rows ----------------------------------------------------------------------------

    def add_rows(self, count: int) -> None:
        """Append ``count`` empty rows."""
        if count <= 0:
            return
        n, size = self._n, self._n + count
        if len(self._start) < size:
            grown = max(size, len(self._start) * 2)
            for name in ("_start", "_len", "_cap"):
                old = getattr(self, name)
                new = np.zeros(grown, dtype=np.int64)
                new[:n] = old[:n]
                setattr(self, name, new)
            self._kernel = None
        self._start[n:size] = self._state[END]
        self._len[n:size] = 0
        self._cap[n:size] = 0
        self._n = size
        self._state[ROWS] = size

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of one row as numpy views of the pool; drop them before the rows change."""
        lo = int(self._start[row])
        hi = lo + int(self._len[row])
        return self._cols[lo:hi], self._vals[lo:hi]

    def pool(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(columns, values, start, length): the pool and where each row is in it (row ``r`` holds ``length[r]``
        entries from ``start[r]``; the last two may run past the rows, with zeros), for the compiled ranking."""
        return self._cols, self._vals, self._start, self._len

    @property
    def nnz(self) -> int:
        return int(self._len[: self._n].sum())

    def growth_ahead(self) -> Callable[[], object] | None:
        """What makes the memory the slot table grows into next, now, when that is due (the compiled table half
        full or more: its ``prepare``), else None: to run in a thread while the rows are used. Made at the growth
        instead, the ~100,000 pages of a 400 MB table are faulted in by the updates after it, or all at once: a
        stall either way (``learner/_kernels.c``, SlotTable)."""
        table = self._table
        return table.prepare if getattr(table, "wants_spare", False) else None

    def get(self, row: int, col: int) -> float:
        cols, vals = self.row(row)
        at = np.flatnonzero(cols == col)
        return float(vals[at[0]]) if at.size else 0.0

    def entries_at(self, rows: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The column and value of each entry (``rows[e]``, ``slots[e]``)."""
        at = self._start[rows] + slots
        return self._cols[at], self._vals[at]

    # -- learning ------------------------------------------------------------------------

    def add_pairs(self, history: dict[int, float], i: int, y: float, gamma: float, forward: float, backward: float,
                  kept: dict[int, bytearray] | None = None, cap: int = 0) -> None:  # fmt: skip
        """For every remembered item ``j`` of ``history`` (item row -> weight, oldest first), newest first, ``i``
        itself left out, the k-th with pair weight ``gamma ** k * w_j``: ``C[j, i] += forward * y * pair`` and
        ``C[i, j] += backward * y * pair``, new entries appended to their rows; each entry touched is logged.

        ``kept``: the strongest ``cap`` entries of some rows, as the ranking kernels keep them (row -> bytearray).
        When every factor is at least 0 the values only grow, so a touched row's kept entries stay its
        strongest when a touched entry takes the weakest one's place if it is now better: the compiled update does
        that. Otherwise (or in Python) the touched rows' kept entries are dropped (they are selected again when
        read)."""
        kernel = self._kernel if self._kernel is not None else self._bind()
        # the values only grow when every factor is at least 0 (a NaN is not; the history's weights are sums of
        # positive y); an infinity may still make a value NaN (times 0): the compiled update drops that row's part
        grows = y >= 0 and gamma >= 0 and forward >= 0 and backward >= 0
        if kept and (isinstance(kernel, _PythonPoolRows) or not grows):
            for row in (i, *history):
                kept.pop(row, None)
            kept = None
        status = kernel.add_pairs(history, i, y, gamma, forward, backward, kept, cap)
        while status != OK:
            kernel = None  # it holds the pool's arrays, which change size in place only when nothing else does
            if status == OK_MOVED:  # rows moved, leaving garbage behind
                if self._state[GARBAGE] > POOL_GARBAGE_SHARE * self._state[END]:
                    self._lay_out()
                return
            if status == NEEDS_ROOM:
                self._reserve(int(self._state[NEED]) - int(self._state[END]))
            else:
                self._grow_log()
            kernel = self._bind()
            status = kernel.add_pairs(history, i, y, gamma, forward, backward, kept, cap)

    def evidence(self, history: dict[int, float], i: int, powers: Any, damping: np.ndarray) -> float:
        """The sum over the remembered items ``j`` (newest first, ``age`` counted over all) of ``w_j *
        powers[age] * damping[j] * C[j, i]``, for each ``j`` whose row has an entry for ``i``."""
        if self._kernel is not None:  # learning: the slot table is built
            return float(self._kernel.evidence(history, i, powers, damping))
        return _evidence(history, powers, damping, self._scanned_value(i))  # served: no table, rows scanned

    def _scanned_value(self, col: int) -> Callable[[int], float | None]:
        """A row's value at ``col`` found by scanning the row (None where it has none)."""

        def value(row: int) -> float | None:
            cols, vals = self.row(row)
            at = np.flatnonzero(cols == col)
            return float(vals[at[0]]) if at.size else None

        return value

    def _bind(self) -> Any:
        """The update bound to the arrays as they are now (the pool made this object's, the table built)."""
        self.make_room()
        if len(self._cols) != len(self._vals):  # a growth that failed half-way (out of memory): made whole
            self._reserve(0)
        compiled = kernels.compiled()
        if compiled is not None:
            if not isinstance(self._table, compiled.SlotTable):
                self._table = self._build_table(compiled.SlotTable(self.nnz))
            self._kernel = compiled.PoolRows(
                self._cols, self._vals, self._start, self._len, self._cap, self._state, self._table, self._log
            )
        else:
            if not isinstance(self._table, _DictTable):
                self._table = self._build_table(_DictTable())
            self._kernel = _PythonPoolRows(self)
        return self._kernel

    def _build_table(self, table: Any) -> Any:
        """``table`` filled with every entry's (row, column) -> slot."""
        lengths = self._len[: self._n]
        total = int(lengths.sum())
        rows = np.repeat(np.arange(self._n, dtype=np.int32), lengths)
        firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        slots = (np.arange(total, dtype=np.int64) - firsts).astype(np.int32)
        at = np.repeat(self._start[: self._n], lengths) + slots
        table.fill(rows, self._cols[at], slots)
        return table

    # -- the change log (deltas: learner.cooccurrence_delta) -----------------------------------

    def start_log(self) -> None:
        """Log afresh every entry touched from now on (row << 32 | slot)."""
        self._log = np.empty(min(4096, CHANGE_LOG_LIMIT), dtype=np.int64)
        self._state[LOG] = 0
        self._kernel = None

    @property
    def logging(self) -> bool:
        """Entries are being logged: since :meth:`start_log`, unless stopped (or past CHANGE_LOG_LIMIT)."""
        return self._log is not None

    def stop_log(self) -> None:
        self._log = None
        self._kernel = None

    def logged(self) -> np.ndarray | None:
        """The keys logged since :meth:`start_log` (repeats included, in order), or None if not logging (never
        started, stopped, or stopped past CHANGE_LOG_LIMIT)."""
        if self._log is None:
            return None
        return self._log[: int(self._state[LOG])].copy()

    def _grow_log(self) -> None:
        assert self._log is not None
        n = int(self._state[LOG])
        if len(self._log) >= CHANGE_LOG_LIMIT:
            self.stop_log()  # too much since the mark for a delta to pay: the next snapshot is whole
            return
        log = np.empty(min(2 * len(self._log), CHANGE_LOG_LIMIT), dtype=np.int64)
        log[:n] = self._log[:n]
        self._log = log
        self._kernel = None

    # -- snapshots ---------------------------------------------------------------------

    def to_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, data); read-only arrays that share nothing with the rows."""
        indptr, indices, data = self.to_csr_chunks()
        return indptr, indices.array(), data.array()

    def to_csr_chunks(self) -> tuple[np.ndarray, codec.Chunks, codec.Chunks]:
        """(indptr, indices, data) with the last two as :class:`learner.codec.Chunks`, for encoding them: views
        of the pool when its rows are end to end (a snapshot loaded, not yet learned from), else the rows gathered
        into two new arrays (compiled: ~20 ms for 10M entries; a view per row would cost a Python object per row,
        ~0.1 s at 100,000 rows with the collections they set off). Encode them right away: views show later
        changes."""
        n = self._n
        lengths = self._len[:n]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        nnz = int(indptr[-1])
        starts = self._start[:n]
        compiled = kernels.compiled()
        owned = False  # the parts are new arrays (codec.encode_later need not copy them)
        if nnz and np.array_equal(starts, indptr[:-1]):  # laid out end to end (a snapshot loaded, not yet written)
            col_parts: list = [self._cols[:nnz]]
            val_parts: list = [self._vals[:nnz]]
        elif compiled is not None:
            col_parts, val_parts = [np.empty(nnz, dtype=np.int32)], [np.empty(nnz, dtype=np.float32)]
            compiled.gather_rows(self._cols, self._vals, self._start, self._len, n, col_parts[0], val_parts[0])
            owned = True
        else:
            cols, vals = memoryview(self._cols), memoryview(self._vals)
            bounds = list(zip(starts.tolist(), (starts + lengths).tolist(), strict=True))
            col_parts = [cols[lo:hi] for lo, hi in bounds]
            val_parts = [vals[lo:hi] for lo, hi in bounds]
        native_i4, native_f4 = np.dtype(np.int32).str, np.dtype(np.float32).str  # the buffers' own byte order
        return (
            indptr,
            codec.Chunks(native_i4, col_parts, nnz, owned),
            codec.Chunks(native_f4, val_parts, nnz, owned),
        )

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int) -> SparseRows:
        n_rows = len(indptr) - 1
        if n_rows < 0 or indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data):
            raise ValueError("malformed sparse rows")
        if np.any(np.diff(indptr) < 0) or (len(indices) and (indices.min() < 0 or indices.max() >= n_cols)):
            raise ValueError("malformed sparse rows")
        rows = cls()
        indptr = np.asarray(indptr, dtype=np.int64)
        rows._start = indptr[:-1].copy()
        rows._len = np.diff(indptr)
        rows._cap = rows._len.copy()
        rows._cols = np.ascontiguousarray(indices, dtype=np.int32)
        rows._vals = np.ascontiguousarray(data, dtype=np.float32)
        rows._pool_owned = False
        rows._n = n_rows
        rows._state[END] = len(indices)
        rows._state[ROWS] = n_rows
        return rows

    # -- a delta's entries, in place (a served model) ----------------------------------------

    def check_entries(
        self, rows: np.ndarray, slots: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int
    ) -> EntryPlan:
        """What :meth:`set_entries` writes once the matrix has ``n_rows`` rows (the new ones empty, added with
        :meth:`add_rows`). Raises ValueError unless the entries are sorted by row and slot, each once,
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
            return EntryPlan(rows, slots, cols, rows, rows, rows, rows)
        if n > 1 and np.any(np.diff(rows << 32 | slots) <= 0):
            raise ValueError("delta entries are not sorted by row and slot, each once")
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
        ends = np.append(first[1:], n)
        touched = rows[first]
        lengths = np.zeros(len(touched), dtype=np.int64)
        old = touched < self._n
        lengths[old] = self._len[touched[old]]
        existing = slots < np.repeat(lengths, ends - first)
        added = (ends - first) - np.add.reduceat(existing.astype(np.int64), first)
        if np.any(np.maximum(slots[ends - 1] + 1 - lengths, 0) != added):
            raise ValueError("delta entries past a row's length are not its next slots")
        at = np.flatnonzero(existing)
        if at.size and np.any(self._cols[self._start[rows[at]] + slots[at]] != cols[at]):
            raise ValueError("delta names another column at a slot the base has")
        return EntryPlan(rows, slots, cols, touched, first, ends, lengths)

    def set_entries(self, plan: EntryPlan, vals: np.ndarray) -> None:
        """Write the entries of a :meth:`check_entries` plan, with values ``vals``: at an existing slot in place,
        new slots appended (a row out of room moves to the pool's end)."""
        if not len(plan.rows):
            return
        vals = vals.astype(np.float32, copy=False)
        rows, slots, cols, touched, ends = plan.rows, plan.slots, plan.cols, plan.touched, plan.ends
        lengths = plan.lengths
        self.make_room()
        new_lengths = np.maximum(lengths, slots[ends - 1] + 1)
        moving = new_lengths > self._cap[touched]
        if moving.any():
            self._move(touched[moving], lengths[moving], new_lengths[moving])
        where = self._start[rows] + slots
        self._cols[where] = cols
        self._vals[where] = vals
        self._len[touched] = new_lengths
        if self._table is not None:  # a learning model took a delta (tests do): its new entries are looked up too
            added = slots >= np.repeat(lengths, ends - plan.first)
            self._table.fill(rows[added].astype(np.int32), cols[added], slots[added].astype(np.int32))
        if self._state[GARBAGE] > POOL_GARBAGE_SHARE * self._state[END]:
            self._lay_out()

    def make_room(self) -> None:
        """The pool as arrays of this object's own (the loaded ones are the snapshot's, or its caller's, with no
        room in any row): laid out again once, with room in every row for a quarter more. The first
        :meth:`set_entries` or update does it; a process that loads a model to serve it calls it where it loads,
        so as not to pay it while it serves."""
        if not self._pool_owned:
            self._lay_out()

    def _move(self, rows: np.ndarray, lengths: np.ndarray, new_lengths: np.ndarray) -> None:
        """Move ``rows`` (now ``lengths`` long) to the pool's end, with room for ``new_lengths`` and half again."""
        caps = _grown_cap(new_lengths)
        end = int(self._state[END])
        starts = end + np.cumsum(caps) - caps
        self._reserve(int(caps.sum()))
        self._copy_rows(rows, lengths, self._cols, self._vals, starts)
        self._state[GARBAGE] += int(self._cap[rows].sum())
        self._state[END] = end + int(caps.sum())
        self._start[rows] = starts
        self._cap[rows] = caps

    def _copy_rows(
        self, rows: np.ndarray, lengths: np.ndarray, indices: np.ndarray, data: np.ndarray, starts: np.ndarray
    ) -> None:
        """Copy ``rows`` (``lengths`` long) to ``starts`` of ``indices`` and ``data``: by the compiled ``copy_rows``
        (a copy of each row's memory) where the kernels are built; else long rows a slice each, the short ones
        (most rows, few entries) by one gather over all their entries."""
        compiled = kernels.compiled()
        if compiled is not None:
            as_q = np.ascontiguousarray
            compiled.copy_rows(
                self._cols, self._vals, self._start, as_q(rows, np.int64), as_q(lengths, np.int64),
                as_q(starts, np.int64), indices, data,
            )  # fmt: skip
            return
        src_starts = self._start[rows]
        long = lengths >= COPY_SLICE_MIN
        pool_indices, pool_data = self._cols, self._vals
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
        end = int(self._state[END])
        need = end + extra
        size = min(len(self._cols), len(self._vals))
        if need <= size and len(self._cols) == len(self._vals):  # (not the same: a growth that failed half-way)
            return
        size = max(need, size + size // 4 + 1024)
        self._kernel = None  # its buffers would hold the arrays: they grow in place when nothing does
        resize_mapped(self, "_cols", size, keep=end)
        resize_mapped(self, "_vals", size, keep=end)

    def _lay_out(self) -> None:
        """Lay the rows out again with no garbage left: in place (:meth:`_compact`) where the pool is this object's
        and the kernels are built; else one after the other in new arrays, each with room for a quarter more."""
        if self._pool_owned and kernels.compiled() is not None:
            self._compact()
            return
        n = self._n
        rows = np.arange(n, dtype=np.int64)
        lengths = self._len[:n]
        caps = lengths + lengths // 4 + 4
        starts = np.cumsum(caps) - caps
        size = int(caps.sum())
        indices = mapped_empty(size + size // 8 + 1024, np.int32)
        data = mapped_empty(len(indices), np.float32)
        self._copy_rows(rows, lengths, indices, data, starts)
        self._cols, self._vals, self._pool_owned = indices, data, True
        self._start[:n] = starts
        self._cap[:n] = caps
        self._state[END], self._state[GARBAGE] = size, 0
        self._kernel = None

    def _compact(self) -> None:
        """Lay the rows out again within the pool's own arrays: each row with entries moved down over the garbage
        before it, in the order the rows are in the pool, with room for a quarter more where the garbage leaves
        that much (a row gets less only where the next row's entries, not yet moved, begin: never less than its
        length); the rows with no entries to the end, with no room, as new rows are. New memory would cost its page
        faults: a lay-out into new arrays took 0.13-0.46 s at 10.6-14M entries on a half-speed VM, with the GIL held
        (``/tmp/s44/pause10.py``), where this copies the entries alone (16-28 ms)."""
        n = self._n
        rows = np.flatnonzero(self._len[:n])
        rows = rows[np.argsort(self._start[rows], kind="stable")]
        starts, lengths = self._start[rows], self._len[rows]
        wanted = lengths + lengths // 4 + 4
        before = np.cumsum(wanted) - wanted
        # a row's new start: where the rows before it end with the room they want, or its own start if that is
        # less (x[k] = min(x[k-1] + wanted[k-1], start[k]), x[0] = 0, unrolled): never past its start, so a
        # row's entries, copied in this order, never land on another's not yet copied
        new_starts = before + np.minimum(np.minimum.accumulate(starts - before), 0)
        caps = np.empty_like(wanted)
        caps[:-1] = np.diff(new_starts)
        end = 0
        if len(rows):
            caps[-1] = min(int(wanted[-1]), len(self._cols) - int(new_starts[-1]))
            end = int(new_starts[-1] + caps[-1])
            self._copy_rows(rows, lengths, self._cols, self._vals, new_starts)
        self._start[:n] = end
        self._cap[:n] = 0
        self._start[rows] = new_starts
        self._cap[rows] = caps
        self._state[END], self._state[GARBAGE] = end, 0
        self._kernel = None
        size = end + end // 8 + 1024  # as a lay-out into new arrays: the pages past it go back to the system
        if size < len(self._cols):
            resize_mapped(self, "_cols", size, keep=end)
            resize_mapped(self, "_vals", size, keep=end)


class _DictTable:
    """:class:`learner._kernels.SlotTable` where it is not built: (row, column) -> slot in a dict."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}

    def fill(self, rows: np.ndarray, cols: np.ndarray, slots: np.ndarray) -> None:
        keys = rows.astype(np.int64) << 32 | cols.astype(np.int64)
        self.slots.update(zip(keys.tolist(), slots.tolist(), strict=True))


class _PythonPoolRows:
    """:class:`learner._kernels.PoolRows` in Python, for where the compiled loops are not built: the same steps
    with the same floating-point operations (a float32 value is read as a double, added to, and rounded back)."""

    def __init__(self, rows: SparseRows) -> None:
        self._rows = rows
        self._slots = rows._table.slots
        self._cols, self._vals = memoryview(rows._cols), memoryview(rows._vals)  # element access at Python speed
        self._start, self._len, self._cap, self._state = rows._start, rows._len, rows._cap, rows._state
        self._log = rows._log

    def add_pairs(self, history: dict[int, float], i: int, y: float, gamma: float, forward: float, backward: float,
                  kept: None = None, kept_cap: int = 0) -> int:  # noqa: ARG002  # fmt: skip
        # kept, kept_cap: the compiled update's arguments; SparseRows.add_pairs drops the touched rows' kept entries
        length, cap, state = self._len, self._cap, self._state
        n_rows = int(state[ROWS])
        if not 0 <= i < n_rows or not all(0 <= j < n_rows for j in history):
            raise ValueError("row outside the pool")  # as the compiled update says, with nothing changed
        js, pairs = [], []
        base = 1.0
        for j, w_j in reversed(history.items()):
            if j == i:  # a like after a view of the same item: pair it with the others only
                continue
            js.append(j)
            pairs.append(base * w_j)
            base *= gamma
        m = len(js)
        room = sum(_grown_cap(int(length[j]) + 1) for j in js if length[j] + 1 > cap[j])
        if length[i] + m > cap[i]:
            room += _grown_cap(int(length[i]) + m)
        if int(state[END]) + room > len(self._cols):
            state[NEED] = int(state[END]) + room
            return NEEDS_ROOM
        log = self._log
        if log is not None and int(state[LOG]) + 2 * m > len(log):
            return NEEDS_LOG
        garbage = int(state[GARBAGE])
        for k, (j, pair) in enumerate(zip(js, pairs, strict=True)):
            inc = y * pair
            k_j = self._add(j, i, forward * inc, int(length[j]) + 1)
            k_i = self._add(i, j, backward * inc, int(length[i]) + (m - k))
            if log is not None:
                at = int(state[LOG])
                log[at] = j << 32 | k_j
                log[at + 1] = i << 32 | k_i
                state[LOG] = at + 2
        return OK_MOVED if state[GARBAGE] != garbage else OK

    def _add(self, row: int, col: int, value: float, need: int) -> int:
        key = row << 32 | col
        k = self._slots.get(key)
        start = int(self._start[row])
        if k is not None:
            self._vals[start + k] = self._vals[start + k] + value
            return k
        k = int(self._len[row])
        if k == self._cap[row]:
            end, grown = int(self._state[END]), _grown_cap(need)
            self._cols[end : end + k] = self._cols[start : start + k]
            self._vals[end : end + k] = self._vals[start : start + k]
            self._state[GARBAGE] += int(self._cap[row])
            self._start[row] = start = end
            self._cap[row] = grown
            self._state[END] = end + grown
        self._cols[start + k] = col
        self._vals[start + k] = value
        self._len[row] = k + 1
        self._slots[key] = k
        return k

    def evidence(self, history: dict[int, float], i: int, powers: Any, damping: np.ndarray) -> float:
        slots, vals, start = self._slots, self._vals, self._start

        def value(row: int) -> float | None:
            k = slots.get(row << 32 | i)
            return None if k is None else vals[int(start[row]) + k]

        return _evidence(history, powers, damping, value)


def _evidence(
    history: dict[int, float], powers: Any, damping: np.ndarray, value: Callable[[int], float | None]
) -> float:
    """:meth:`SparseRows.evidence` with each remembered item's entry found by ``value`` (None: no entry): newest
    first, ``age`` counted over all, the same operations in the same order as the compiled loop."""
    evidence = 0.0
    for age, (j, w_j) in enumerate(reversed(history.items())):
        v = value(j)
        if v is not None:
            evidence += w_j * powers[age] * float(damping[j]) * v
    return evidence

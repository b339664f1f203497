"""The pooled co-occurrence rows (learner/sparse_rows.py): the compiled update and the Python one both give what a
plain dict of rows gives, bit for bit, through rows that move, a pool and a log that grow, lay-outs and loads."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import pytest

from learner import kernels, sparse_rows
from learner.arrays import map_of, mapped_empty
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.sparse_rows import SparseRows
from tests.conftest import loops


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test twice: with the compiled update (learner/_kernels.c), and with the Python one."""
    if request.param:
        request.getfixturevalue("built")
    else:
        monkeypatch.setattr(kernels, "_use", None)
    return request.param


class DictRows:
    """The reference: one dict per row (column -> float32 value, in insertion order), as the rows were kept
    before the pool; the same update written out directly."""

    def __init__(self) -> None:
        self.rows: list[dict[int, np.float32]] = []
        self.log: list[int] = []

    def add_pairs(self, history: dict[int, float], i: int, y: float, gamma: float, fwd: float, bwd: float) -> None:
        base = 1.0
        for j, w_j in reversed(history.items()):
            if j == i:
                continue
            inc = y * (base * w_j)
            base *= gamma
            for row, col, v in ((j, i, fwd * inc), (i, j, bwd * inc)):
                entries = self.rows[row]
                entries[col] = np.float32(float(entries.get(col, 0.0)) + v)
                self.log.append(row << 32 | list(entries).index(col))

    def evidence(self, history: dict[int, float], i: int, powers: Any, damping: np.ndarray) -> float:
        evidence = 0.0
        for age, (j, w_j) in enumerate(reversed(history.items())):
            if i in self.rows[j]:
                evidence += w_j * powers[age] * float(damping[j]) * float(self.rows[j][i])
        return evidence

    def csr(self) -> tuple[list[int], list[int], list[float]]:
        indptr = np.cumsum([0, *map(len, self.rows)]).tolist()
        cols = [c for row in self.rows for c in row]
        vals = [float(v) for row in self.rows for v in row.values()]
        return indptr, cols, vals


def _same(rows: SparseRows, reference: DictRows) -> None:
    indptr, cols, vals = rows.to_csr()
    want = reference.csr()
    assert indptr.tolist() == want[0] and cols.tolist() == want[1] and vals.tolist() == want[2]


def _run(rng: np.random.Generator, compiled: bool, *, window: int, n_items: int, events: int) -> None:
    """Random histories (items repeated, the event's item among them, now and then one longer than the compiled
    update keeps on its stack) against the reference; the rows saved and loaded halfway; the log compared."""
    rows, reference = SparseRows(), DictRows()
    rows.add_rows(n_items // 2)
    reference.rows.extend({} for _ in range(n_items // 2))
    rows.start_log()
    powers = np.array([0.8**a for a in range(200)])
    damping = rng.random(n_items)
    for event in range(events):
        if event == events // 2:  # saved and loaded: the loaded pool is read in place, then copied to learn
            logged = rows.logged()
            rows = SparseRows.from_csr(*rows.to_csr(), n_cols=n_items)
            rows.start_log()
            assert logged is not None and logged.tolist() == reference.log
            reference.log = []
        if event % 50 == 0 and len(rows) < n_items:  # new items: new empty rows
            rows.add_rows(5)
            reference.rows.extend({} for _ in range(5))
        size = int(rng.integers(0, 150)) if event % 97 == 0 else int(rng.integers(0, window + 1))
        items = rng.choice(len(rows), size=min(size, len(rows)), replace=False).tolist()
        history = {j: float(rng.choice([0.5, 1.0, 2.0, 3.7])) for j in items}
        i = int(items[-1]) if items and rng.random() < 0.2 else int(rng.integers(0, len(rows)))
        y, gamma = float(rng.choice([0.3, 1.0, 2.5])), 0.9
        assert rows.evidence(history, i, powers, damping) == reference.evidence(history, i, powers, damping)
        rows.add_pairs(history, i, y, gamma, 1.0, 0.7)
        reference.add_pairs(history, i, y, gamma, 1.0, 0.7)
        assert rows._kernel is None or isinstance(rows._kernel, sparse_rows._PythonPoolRows) != compiled
    _same(rows, reference)
    logged = rows.logged()
    assert logged is not None and logged.tolist() == reference.log


def _check_regions(rows: SparseRows) -> None:
    """Each row's room holds its entries, lies within the pool's end and overlaps no other row's; the end is the
    rooms and the garbage together."""
    n = len(rows)
    start, length, cap = rows._start[:n], rows._len[:n], rows._cap[:n]
    end = int(rows._state[sparse_rows.END])
    assert np.all(length <= cap) and np.all(start >= 0) and np.all(start + cap <= end) and end <= len(rows._cols)
    held = np.flatnonzero(cap)
    order = held[np.argsort(start[held])]
    assert np.all(start[order][:-1] + cap[order][:-1] <= start[order][1:])
    assert end == int(cap.sum()) + int(rows._state[sparse_rows.GARBAGE])


def test_the_pooled_update_is_the_dict_rows_update_bit_for_bit(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[int] = []
    move_cap = sparse_rows._grown_cap
    monkeypatch.setattr(sparse_rows, "_grown_cap", lambda need: (moved.append(need), move_cap(need))[1])
    monkeypatch.setattr(sparse_rows, "POOL_GARBAGE_SHARE", 0.3)  # laid out again in either half of the run
    laid_out: list[int] = []
    in_place: list[bool] = []
    lay_out = SparseRows._lay_out

    def checked_lay_out(self: SparseRows) -> None:
        laid_out.append(int(self._state[sparse_rows.GARBAGE]))
        memory, owned = map_of(self._cols), self._pool_owned  # (the map: a view would keep it from shrinking)
        _check_regions(self)
        lay_out(self)
        _check_regions(self)
        end = int(self._state[sparse_rows.END])
        assert self._state[sparse_rows.GARBAGE] == 0
        assert len(self._cols) <= end + end // 8 + 1024  # the room past that given back
        in_place.append(memory is not None and map_of(self._cols) is memory)
        assert in_place[-1] == (compiled and owned and memory is not None)  # where it can be: compiled, its own map

    monkeypatch.setattr(SparseRows, "_lay_out", checked_lay_out)
    _run(np.random.default_rng(11), compiled, window=12, n_items=400, events=3_000)
    assert max(laid_out) > 0  # the garbage of moved rows reached half the pool, and the pool was laid out again
    assert any(in_place) == compiled
    if not compiled:  # (the C update computes the same room itself)
        assert moved


@pytest.mark.usefixtures("built")
def test_a_lay_out_in_place_moves_rows_down_over_the_garbage_and_gives_no_room_it_has_not() -> None:
    rows = SparseRows()
    rows.add_rows(4)  # row 3 stays empty
    rows._cols, rows._vals = mapped_empty(12, np.int32), mapped_empty(12, np.float32)
    # row 1 at 0 (1 entry), garbage from 1 to 6, row 0 at 6 (3 entries), row 2 at 9 (3): the pool full to its end
    for row, start, cols in ((1, 0, [7]), (0, 6, [1, 2, 3]), (2, 9, [4, 5, 6])):
        rows._start[row], rows._len[row], rows._cap[row] = start, len(cols), len(cols)
        rows._cols[start : start + len(cols)] = cols
        rows._vals[start : start + len(cols)] = [c / 2 for c in cols]
    rows._start[3] = 12
    rows._state[sparse_rows.END], rows._state[sparse_rows.GARBAGE] = 12, 5
    _check_regions(rows)
    memory = map_of(rows._cols)
    rows._lay_out()
    _check_regions(rows)
    assert map_of(rows._cols) is memory is not None and rows._state[sparse_rows.GARBAGE] == 0
    # row 1 keeps its place with the room it wants (1 + 4), row 0 moves down to 5 with what is left before row 2
    # (4 of the 7 it wants), row 2 keeps the 3 places left at the pool's end; the empty row has no room, as new
    assert rows._start[:4].tolist() == [5, 0, 9, 12] and rows._cap[:4].tolist() == [4, 5, 3, 0]
    assert [rows.row(r)[0].tolist() for r in range(4)] == [[1, 2, 3], [7], [4, 5, 6], []]
    assert [rows.row(r)[1].tolist() for r in range(4)] == [[0.5, 1.0, 1.5], [3.5], [2.0, 2.5, 3.0], []]


@pytest.mark.usefixtures("built")
def test_the_pool_grows_in_place_unless_a_view_of_it_is_alive() -> None:
    rows, reference = SparseRows(), SparseRows()
    for r in (rows, reference):
        r.add_rows(3)
        r.add_pairs({1: 1.0, 2: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    rows._reserve(10_000)  # the first growth moves the pool into a memory map of its own
    memory = map_of(rows._cols)
    assert memory is not None
    size = len(rows._cols)
    rows._reserve(2 * size)  # nothing holds a view: the same map, grown
    assert map_of(rows._cols) is memory and len(memory) == 4 * len(rows._cols) and len(rows._cols) > 2 * size
    view = rows.row(0)[0]
    rows._reserve(2 * len(rows._cols))  # a view is alive: copied into a new map, and the view still reads its row
    assert map_of(rows._cols) is not memory and view.tolist() == [2, 1]
    for r in (rows, reference):  # and learning goes on as without the growths
        r.add_pairs({0: 1.0, 2: 1.0}, 1, 1.0, 0.9, 1.0, 1.0)
    assert [a.tolist() for a in rows.to_csr()] == [a.tolist() for a in reference.to_csr()]
    # the update that finds the pool full lets go of it (its compiled loop holds the arrays), so it grows in place
    memory, size = map_of(rows._cols), len(rows._cols)
    rows.add_rows(size // 2)
    for i in range(3):  # each event pairs item i with ~size / 2 others: 2 entries a pair
        rows.add_pairs(dict.fromkeys(range(3, 3 + size // 2), 1.0), i, 1.0, 1.0, 1.0, 1.0)
    assert len(rows._cols) > size and map_of(rows._cols) is memory


@pytest.mark.usefixtures("built")
def test_a_growth_that_failed_half_way_is_made_whole_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, reference = SparseRows(), SparseRows()
    for r in (rows, reference):
        r.add_rows(3)
        r.add_pairs({1: 1.0, 2: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    resize = sparse_rows.resize_mapped

    def values_out_of_memory(owner: object, name: str, size: int, keep: int) -> None:
        if name == "_vals":
            raise MemoryError
        resize(owner, name, size, keep)

    monkeypatch.setattr(sparse_rows, "resize_mapped", values_out_of_memory)
    with pytest.raises(MemoryError):
        rows._reserve(10_000)
    assert len(rows._cols) > len(rows._vals)  # the columns grew, the values did not
    monkeypatch.setattr(sparse_rows, "resize_mapped", resize)
    for r in (rows, reference):  # the next update that needs room grows both: it learns as without the failure
        r.add_pairs(dict.fromkeys(range(3), 1.0), 1, 1.0, 0.9, 1.0, 1.0)
    assert len(rows._cols) == len(rows._vals)
    assert [a.tolist() for a in rows.to_csr()] == [a.tolist() for a in reference.to_csr()]


def test_the_log_stops_past_its_limit_and_starts_again_at_the_next_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse_rows, "CHANGE_LOG_LIMIT", 40)
    rows = SparseRows()
    rows.add_rows(10)
    rows.start_log()
    rows.add_pairs({1: 1.0, 2: 1.0, 3: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    assert rows.logged() is not None and len(rows.logged()) == 6  # type: ignore[arg-type]
    for _ in range(6):
        rows.add_pairs({1: 1.0, 2: 1.0, 3: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    assert rows.logged() is None  # 42 entries would pass 40: stopped
    before = rows.to_csr()[2].copy()
    rows.add_pairs({1: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)  # still learns, unlogged
    assert rows.to_csr()[2].sum() == pytest.approx(before.sum() + 2.0)
    rows.start_log()
    assert rows.logged() is not None and len(rows.logged()) == 0  # type: ignore[arg-type]


@pytest.mark.usefixtures("compiled")  # both updates
def test_the_update_refuses_rows_outside_the_pool_and_changes_nothing() -> None:
    rows = SparseRows()
    rows.add_rows(4)
    rows.add_pairs({1: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    before = [a.copy() for a in rows.to_csr()]
    for history, i in (({1: 1.0, 9: 1.0}, 0), ({1: 1.0, 4: 1.0}, 0), ({1: 1.0}, 4), ({1: 1.0}, -1), ({-3: 1.0}, 0)):
        with pytest.raises(ValueError, match="outside the pool"):
            rows.add_pairs(history, i, 1.0, 0.9, 1.0, 1.0)
    with pytest.raises(TypeError):
        rows.add_pairs({"a": 1.0}, 0, 1.0, 0.9, 1.0, 1.0)  # type: ignore[dict-item]
    after = rows.to_csr()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_the_compiled_loops_refuse_what_they_cannot_use_instead_of_crashing(built: Any) -> None:
    rows = SparseRows()
    rows.add_rows(4)
    rows.add_pairs({1: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    before = [a.copy() for a in rows.to_csr()]
    with pytest.raises(TypeError, match="int item rows"):  # a subclass of int could run code while C reads the dict
        rows.add_pairs({True: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    with pytest.raises(TypeError, match="int item rows"):
        rows.evidence({np.int64(1): 1.0}, 0, np.ones(3), np.ones(4))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="outside the pool"):
        rows.evidence({7: 1.0}, 0, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="longer than its powers"):
        rows.evidence({1: 1.0, 2: 1.0}, 0, np.ones(1), np.ones(4))
    after = rows.to_csr()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    rows._table.set(0, 2, 5)  # a slot past row 0's length: a table that is not of these rows (never so in use)
    with pytest.raises(ValueError, match="not the table of these rows"):  # an error, not a write past the row
        rows.add_pairs({2: 1.0}, 0, 1.0, 0.9, 1.0, 1.0)
    with pytest.raises(MemoryError):
        built.SlotTable(2**60)  # refused, not a wrapped-around allocation
    pool = built.PoolRows
    arrays = (np.zeros(4, np.int32), np.zeros(4, np.float32), *[np.zeros(2, np.int64)] * 3, np.zeros(5, np.int64))
    with pytest.raises(RuntimeError, match="not called"):
        pool(*arrays, built.SlotTable.__new__(built.SlotTable), None)
    with pytest.raises(ValueError, match="different lengths"):
        pool(np.zeros(4, np.int32), np.zeros(3, np.float32), *arrays[2:], built.SlotTable(), None)
    with pytest.raises(TypeError, match="expected a buffer of 'q' items"):
        pool(*arrays[:2], *[np.zeros(2, np.int32)] * 3, arrays[5], built.SlotTable(), None)
    with pytest.raises(RuntimeError, match="not called"):
        pool.__new__(pool).add_pairs({}, 0, 1.0, 0.9, 1.0, 1.0)


def test_a_served_pool_scans_rows_for_evidence_and_builds_no_table() -> None:
    rng = np.random.default_rng(3)
    rows, reference = SparseRows(), DictRows()
    rows.add_rows(60)
    reference.rows.extend({} for _ in range(60))
    for _ in range(400):
        history = {int(j): 1.0 for j in rng.choice(60, size=5, replace=False)}
        i = int(rng.integers(0, 60))
        rows.add_pairs(history, i, 1.0, 0.9, 1.0, 0.5)
        reference.add_pairs(history, i, 1.0, 0.9, 1.0, 0.5)
    served = SparseRows.from_csr(*rows.to_csr(), n_cols=60)
    powers, damping = np.array([0.8**a for a in range(5)]), rng.random(60)
    for _ in range(200):
        history = {int(j): float(rng.random()) for j in rng.choice(60, size=5, replace=False)}
        i = int(rng.integers(0, 60))
        assert served.evidence(history, i, powers, damping) == reference.evidence(history, i, powers, damping)
    assert served._table is None and served._kernel is None


def test_gathering_rows_refuses_what_does_not_fit(built: Any) -> None:
    cols, vals = np.arange(6, dtype=np.int32), np.arange(6, dtype=np.float32)
    start, length = np.array([4, 0]), np.array([2, 3])
    out_cols, out_vals = np.zeros(5, np.int32), np.zeros(5, np.float32)
    built.gather_rows(cols, vals, start, length, 2, out_cols, out_vals)
    assert out_cols.tolist() == [4, 5, 0, 1, 2] and out_vals.tolist() == [4.0, 5.0, 0.0, 1.0, 2.0]
    for changed, error in (
        ({"n": 3}, "fewer rows than n"),
        ({"out_cols": np.zeros(4, np.int32), "out_vals": np.zeros(4, np.float32)}, "more entries than out holds"),
        ({"out_cols": np.zeros(6, np.int32), "out_vals": np.zeros(6, np.float32)}, "more entries than the rows"),
        ({"start": np.array([5, 0])}, "outside the pool"),
        ({"length": np.array([-1, 3])}, "outside the pool"),
        ({"out_vals": np.zeros(4, np.float32)}, "different lengths"),
    ):
        a = {"start": start, "length": length, "n": 2, "out_cols": out_cols, "out_vals": out_vals, **changed}
        with pytest.raises(ValueError, match=error):
            built.gather_rows(cols, vals, a["start"], a["length"], a["n"], a["out_cols"], a["out_vals"])


def test_copying_rows_compiled_is_the_numpy_copy(built: Any) -> None:
    """``copy_rows`` copies what ``SparseRows._copy_rows`` copies without the kernels: into new arrays (a layout) and
    within the pool, past its rows (rows moved to its end), long rows and short ones alike."""
    rng = np.random.default_rng(5)
    rows = SparseRows()
    rows.add_rows(300)
    for _ in range(2_000):
        history = {int(j): 1.0 for j in rng.choice(300, size=int(rng.integers(1, 9)), replace=False)}
        rows.add_pairs(history, int(rng.integers(0, 300)), 1.0, 0.9, 1.0, 1.0)
    rows.add_pairs({j: 1.0 for j in range(1, 200)}, 0, 1.0, 0.9, 1.0, 1.0)  # rows longer than COPY_SLICE_MIN
    assert rows._len.max() >= sparse_rows.COPY_SLICE_MIN > rows._len[: len(rows)].min()
    which = rng.permutation(len(rows))[:200].astype(np.int64)
    lengths = rows._len[which]
    starts = np.cumsum(lengths + 3) - lengths - 3 + 7
    size = int(starts[-1] + lengths[-1] + 5)
    copies = []
    for compiled in (True, False):
        cols, vals = np.full(size, -1, np.int32), np.full(size, -1.0, np.float32)
        with contextlib.nullcontext() if compiled else kernels.numpy_only():
            rows._copy_rows(which, lengths, cols, vals, starts)
        copies.append((cols.tolist(), vals.tolist()))
    assert copies[0] == copies[1] and sum(c >= 0 for c in copies[0][0]) == lengths.sum()
    # within the pool: to its end
    end = int(rows._state[sparse_rows.END])
    rows._reserve(size)
    pool_cols, pool_vals = rows._cols.copy(), rows._vals.copy()
    built.copy_rows(rows._cols, rows._vals, rows._start, which, lengths, starts + end, rows._cols, rows._vals)
    want_cols, want_vals = pool_cols.copy(), pool_vals.copy()
    for row, n, to in zip(which.tolist(), lengths.tolist(), (starts + end).tolist(), strict=True):
        at = int(rows._start[row])
        want_cols[to : to + n], want_vals[to : to + n] = pool_cols[at : at + n], pool_vals[at : at + n]
    # (bytes: the room past the pool's end is uninitialised, NaNs among it)
    assert rows._cols.tobytes() == want_cols.tobytes() and rows._vals.tobytes() == want_vals.tobytes()


def test_copying_rows_refuses_what_does_not_fit(built: Any) -> None:
    cols, vals = np.arange(6, dtype=np.int32), np.arange(6, dtype=np.float32)
    start, which, length, to = np.array([4, 0]), np.array([1, 0]), np.array([3, 2]), np.array([0, 3])
    out_cols, out_vals = np.zeros(5, np.int32), np.zeros(5, np.float32)
    built.copy_rows(cols, vals, start, which, length, to, out_cols, out_vals)
    assert out_cols.tolist() == [0, 1, 2, 4, 5] and out_vals.tolist() == [0.0, 1.0, 2.0, 4.0, 5.0]
    for changed, error in (
        ({"which": np.array([2, 0])}, "outside the pool"),
        ({"which": np.array([-1, 0])}, "outside the pool"),
        ({"start": np.array([5, 0])}, "outside the pool"),
        ({"length": np.array([-1, 2])}, "outside the pool"),
        ({"to": np.array([0, 4])}, "past the end of out"),
        ({"to": np.array([-1, 3])}, "outside the pool"),
        ({"length": np.array([3])}, "different lengths"),
        ({"out_vals": np.zeros(4, np.float32)}, "different lengths"),
    ):
        a = {"start": start, "which": which, "length": length, "to": to, "out_vals": out_vals, **changed}
        with pytest.raises(ValueError, match=error):
            built.copy_rows(cols, vals, a["start"], a["which"], a["length"], a["to"], out_cols, a["out_vals"])
    with pytest.raises(TypeError):
        built.copy_rows(cols, vals, start, which.astype(np.int32), length, to, out_cols, out_vals)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_growth_prepared_ahead_learns_the_same_model(compiled: bool) -> None:
    """``OnlineLearner.growth_ahead`` (the worker runs what it returns in a thread while it learns): where the slot
    table is compiled, a function once the table is half full (from 1 MiB), which makes the table it grows into;
    learning on, through the growth, gives the model a learner that never prepared anything has, bit for bit.
    Without the compiled loops there is nothing to prepare."""
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 400, 60_000), rng.integers(0, 4_000, 60_000)
    events = [(f"u{u}", f"i{i}", 1_700_000_000.0 + n) for n, (u, i) in enumerate(zip(users, items, strict=True))]
    with loops(compiled):
        prepared, plain = OnlineLearner(model=ItemCooccurrence()), OnlineLearner(model=ItemCooccurrence())
        ahead, at = None, 0
        while ahead is None and at < len(events):
            for one in (prepared, plain):
                one.learn(events[at][0], events[at][1], "like", None, None, ts=events[at][2])
            at += 1
            if at % 500 == 0:
                ahead = prepared.growth_ahead()
        assert (ahead is not None) is compiled
        places = prepared.model.rows._table.nbytes // 12 if compiled else 0  # the table's size when asked
        meanwhile, rest = events[at : at + 300], events[at + 300 :]
        made: list[object] = []
        thread = threading.Thread(target=lambda: made.append(ahead())) if ahead is not None else None
        if thread is not None:
            thread.start()
        for user, item, ts in meanwhile:  # learned while it prepares, as the worker does
            prepared.learn(user, item, "like", None, None, ts=ts)
        if thread is not None:
            thread.join()
        for one, more in ((plain, meanwhile), (plain, rest), (prepared, rest)):
            for user, item, ts in more:
                one.learn(user, item, "like", None, None, ts=ts)
        if compiled:
            assert made == [True]  # made, while the table was in use
            assert len(prepared.model.rows._table) > 0.7 * places  # grown into what was prepared
        assert prepared.to_bytes() == plain.to_bytes()

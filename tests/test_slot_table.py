"""The compiled slot table (learner/_kernels.c SlotTable) answers as a dict of (row, column) -> slot does."""

from __future__ import annotations

import os
import resource
import threading
from typing import Any

import numpy as np
import pytest


def test_the_slot_table_answers_as_a_dict_through_growth(built: Any) -> None:
    table_type = built.SlotTable
    rng = np.random.default_rng(5)
    table, reference = table_type(), {}
    for step in range(60_000):
        row, col = int(rng.integers(0, 300)), int(rng.integers(0, 2**31 - 1 if step % 7 == 0 else 400))
        if rng.random() < 0.6:
            slot = int(rng.integers(0, 2**31 - 1))
            table.set(row, col, slot)
            reference[(row, col)] = slot
        assert table.get(row, col) == reference.get((row, col))
        if step % 5_000 == 0:  # every entry still there after the growths so far
            assert len(table) == len(reference)
            assert all(table.get(r, c) == s for (r, c), s in reference.items())
    assert len(table) == len(reference) > 30_000
    assert table.nbytes >= 12 * len(table) / 0.7  # within its load limit


def test_filling_a_table_sets_every_entry_of_a_snapshot(built: Any) -> None:
    table_type = built.SlotTable
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 50, size=200)
    rows = np.repeat(np.arange(200, dtype=np.int32), lengths)
    cols = np.concatenate([rng.choice(10_000, size=n, replace=False) for n in lengths]).astype(np.int32)
    slots = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    table = table_type(capacity=len(rows))
    capacity = table.nbytes
    table.fill(rows, cols, slots)
    assert table.nbytes == capacity  # sized for them up front
    assert len(table) == len(rows)
    assert all(table.get(int(r), int(c)) == int(s) for r, c, s in zip(rows, cols, slots, strict=True))
    assert table.get(0, 10_001) is None


def test_the_slot_table_refuses_what_it_cannot_hold(built: Any) -> None:
    kernels = built
    table = kernels.SlotTable()
    for args in ((-1, 0, 0), (0, 2**31, 0), (0, 0, -5)):
        with pytest.raises(ValueError, match=r"outside 0\.\.2\*\*31-1"):
            table.set(*args)
    with pytest.raises(ValueError, match="outside"):
        table.get(2**31, 0)
    with pytest.raises(ValueError, match="one item per entry"):
        table.fill(np.zeros(3, np.int32), np.zeros(2, np.int32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        table.fill(np.zeros(1, np.int32), np.full(1, -1, np.int32), np.zeros(1, np.int32))
    with pytest.raises(TypeError, match="'i' items"):
        table.fill(np.zeros(2, np.int64), np.zeros(2, np.int32), np.zeros(2, np.int32))
    assert len(table) == 0  # nothing set by a refused call
    with pytest.raises(RuntimeError, match="once"):
        table.__init__()
    with pytest.raises(RuntimeError, match="not called"):
        kernels.SlotTable.__new__(kernels.SlotTable).get(0, 0)


def test_a_growing_table_moves_its_entries_a_few_at_a_time(built: Any) -> None:
    """A table that grows keeps its old places until later reservations have moved them (8 a reserved entry, and
    64): lookups find every entry meanwhile, a slot set meanwhile wins over its old copy, and nothing is counted
    twice."""
    table = built.SlotTable(capacity=700)  # 1,024 places: 716 entries within the load limit
    reference: dict[tuple[int, int], int] = {}
    entry_bytes = 12
    for e in range(716):
        table.set(e % 97, e, e)
        reference[(e % 97, e)] = e
    assert table.nbytes == 1_024 * entry_bytes
    table.set(5, 5_000, 1)  # the 717th: 2,048 new places, the 1,024 old kept while they move
    reference[(5, 5_000)] = 1
    assert table.nbytes == (2_048 + 1_024) * entry_bytes
    sets = 0
    while table.nbytes > 2_048 * entry_bytes:
        e = sets * 37  # every other one an old entry set again (a new slot), the others new entries
        row, col = (e % 97, e) if sets % 2 == 0 else (1, 10_000 + sets)
        table.set(row, col, 7_000 + sets)
        reference[(row, col)] = 7_000 + sets
        sets += 1
        assert len(table) == len(reference)
        assert all(table.get(r, c) == s for (r, c), s in reference.items())
    assert sets == -(-1_024 // (8 + 64))  # 72 old places moved with each set
    assert len(table) == len(reference) and table.get(96, 1) is None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_large_table_is_populated_when_it_is_made_and_given_back_when_it_goes(built: Any) -> None:
    """From 1 MiB an array of the table is a map of its own, its pages faulted in at once (MAP_POPULATE), not one
    by one by the lookups and insertions that land all over it (a fault storm in a grown worker, ~1 s of freshness);
    its pages go back to the system with it."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("no /proc/self/statm to read the resident size from (not Linux)")
    before = _resident_bytes()
    table = built.SlotTable(capacity=5_000_000)  # 8,388,608 places: 96 MiB of keys and slots
    assert table.nbytes == 12 * 8_388_608
    grown = _resident_bytes() - before
    assert grown > 0.9 * table.nbytes  # resident already, before any entry is set
    del table
    assert _resident_bytes() - before < 0.1 * grown


def test_a_large_table_answers_through_its_growth(built: Any) -> None:
    """Filled past its load limit, a mapped table grows into a mapped one twice its size, its old one given back
    once every place has moved: every entry is found throughout."""
    rng = np.random.default_rng(11)
    n = 120_000  # 262,144 places (3 MiB) fit 183,500 entries: the later sets double the table
    rows, cols = rng.integers(0, 5_000, n, dtype=np.int32), np.arange(n, dtype=np.int32)
    slots = rng.integers(0, 2**31 - 1, n, dtype=np.int32)
    table = built.SlotTable(capacity=n)
    table.fill(rows, cols, slots)
    first = table.nbytes
    for k in range(n, 2 * n):
        table.set(k % 5_000, k, k)
        if k % 20_000 == 0:
            probe = rng.integers(0, n, 200)
            assert all(table.get(int(rows[e]), int(cols[e])) == int(slots[e]) for e in probe)
    assert table.nbytes == 2 * first and len(table) == 2 * n  # grown, and every old place moved (freed)
    assert all(table.get(int(rows[e]), int(cols[e])) == int(slots[e]) for e in range(0, n, 7))
    assert all(table.get(k % 5_000, k) == k for k in range(n, 2 * n, 7))


def test_the_table_a_large_one_grows_into_is_made_ahead_in_a_thread(built: Any) -> None:
    """From half full, a mapped table wants the table it doubles into made ahead (``prepare``, in a thread with the
    GIL released, while the table is used): the growth then takes it, resident already, and every entry is found."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("no /proc/self/statm to read the resident size from (not Linux)")
    table = built.SlotTable(capacity=1_000_000)  # 2,097,152 places (24 MiB)
    places = table.nbytes // 12
    assert not table.wants_spare and table.prepare() is False  # empty: nothing to prepare yet
    n = places // 2
    table.fill(np.zeros(n, dtype=np.int32), np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32))
    assert table.wants_spare
    made: list[bool] = []
    thread = threading.Thread(target=lambda: made.append(table.prepare()))
    before = _resident_bytes()
    thread.start()
    for k in range(n, n + 20_000):  # used meanwhile
        table.set(1, k, k)
    thread.join()
    assert made == [True] and not table.wants_spare and table.prepare() is False  # made once
    assert table.nbytes == 12 * 3 * places and _resident_bytes() - before > 0.9 * 12 * 2 * places
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for k in range(n + 20_000, int(0.75 * places)):  # past 7/10: grows into it, its pages faulted in already
        table.set(2, k, k)
    pages = 12 * 2 * places // os.sysconf("SC_PAGE_SIZE")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 0.1 * pages
    assert table.nbytes <= 12 * 3 * places
    assert all(table.get(0, k) == k for k in range(0, n, 997)) and table.get(1, n + 5) == n + 5
    assert table.get(2, int(0.75 * places) - 1) == int(0.75 * places) - 1

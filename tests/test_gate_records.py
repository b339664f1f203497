"""The behaviour rules' tables (learner.gate.records.Records): order, eviction, reuse of record numbers."""

from __future__ import annotations

import random
from array import array
from collections import OrderedDict

import pytest

from learner.gate.records import Records


def test_records_are_read_and_written_in_place_and_kept_apart() -> None:
    table = Records(3)
    a = table.add("a", (1.0, 2.0, 3.0))
    b = table.add("b", array("d", (4.0, 5.0, 6.0)))
    table.data[a * 3 + 2] = 30.0
    table.data[b * 3] += 0.5
    assert table["a"] == [1.0, 2.0, 30.0] and table["b"] == [4.5, 5.0, 6.0]
    assert list(table) == ["a", "b"] and "a" in table and "c" not in table and len(table) == 2
    copy = table.copy_of("a")
    assert copy is not None and copy.tolist() == [1.0, 2.0, 30.0]
    copy[0] = 99.0  # a copy: the record is unchanged
    assert table["a"][0] == 1.0 and table.copy_of("zz") is None
    with pytest.raises(ValueError, match="3 fields"):
        table.add("c", (1.0, 2.0))
    with pytest.raises(ValueError, match="3 fields"):  # it would shift b's record
        table.put("a", array("d", (1.0, 2.0)))
    with pytest.raises(ValueError, match="has a record already"):
        table.add("a", (0.0, 0.0, 0.0))
    assert table["b"] == [4.5, 5.0, 6.0] and list(table) == ["a", "b"]


def test_put_moves_a_record_last_and_evict_goes_in_that_order() -> None:
    table = Records(2)
    for key, seen in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        table.add(key, (0.0, seen))
    table.put("a", array("d", (7.0, 4.0)))  # touched: last now
    assert list(table) == ["b", "c", "a"] and table["a"] == [7.0, 4.0]
    # horizon 2.5: b (seen at 2) goes; c (3) stays and stops the scan, though a later one may be older
    assert table.evict(horizon=2.5, cap=10, seen_at=1) == ("c", 3.0)
    assert list(table) == ["c", "a"]
    assert table.evict(horizon=0.0, cap=1, seen_at=1) == ("a", 4.0)  # over the cap: the oldest goes
    table.pop_oldest()
    assert len(table) == 0 and table.evict(horizon=0.0, cap=1, seen_at=1) == (None, float("-inf"))


def test_forgotten_record_numbers_are_reused_and_new_records_start_from_their_values() -> None:
    """Against a plain OrderedDict of lists over a random run of adds, puts (of known and new keys), evictions and
    pops of the oldest: same keys in the same order, same values; the flat array grows only to the most records
    held at once."""
    rnd = random.Random(3)
    table, reference = Records(2), OrderedDict()
    most = 0
    for step in range(20_000):
        key = f"k{rnd.randrange(300)}"
        values = (float(step), rnd.random())
        if key in table or rnd.random() < 0.5:
            table.put(key, array("d", values))  # a new key too: added last
            reference.pop(key, None)
        else:
            table.add(key, values)
        reference[key] = list(values)
        most = max(most, len(table))
        if rnd.random() < 0.3:
            table.evict(horizon=step - 200, cap=150, seen_at=0)
            while reference and (next(iter(reference.values()))[0] < step - 200 or len(reference) > 150):
                reference.popitem(last=False)
        if rnd.random() < 0.05 and len(table):
            table.pop_oldest()
            reference.popitem(last=False)
        if step % 97 == 0:
            assert list(table.items()) == list(reference.items())
        assert len(table) == len(reference)
    assert list(table.items()) == list(reference.items())
    assert len(table.data) == 2 * most  # numbers of forgotten records were taken again before the array grew

"""Fixed-width records of floats by key, least recently touched first: the behaviour rules' tables.

A table is an index of key -> record number (its order is the rules' eviction order) over one
flat ``array('d')`` in which record ``r`` is ``data[r * width : (r + 1) * width]``. The rules read
and write fields in place, ``data[r * width + field]``. The numbers of forgotten records are reused
(last forgotten, first taken; so the array keeps its peak size: the most records held at once).
The compiled index returns a new ``int`` for each number asked (its rules' compiled checks ask for
none: they read the records by number in C); :class:`OrderedIndex` stores the shared ``int``
objects of :func:`learner.id_index.row_object`.

The index is the compiled ``LruIndex`` (``learner/_kernels.c``) where the kernels are built, and
:class:`OrderedIndex` (an ``OrderedDict``) otherwise: for str keys, the same operations with the
same results (:class:`RecordIndex`: ``get``, ``insert``, ``remove``, ``move_to_end``,
``pop_first``, ``evict``, ``order``, ``len``, ``in``). Neither reads keys back: ``pop_first`` and ``evict``
answer record numbers. The compiled one knows a key by its fingerprint (str's 64-bit hash of its
text, kept in the str object), not its text: a 16-byte entry a record (the fingerprint and the
record's neighbours in the order), whatever the key's length, and a hash table of 8-byte slots kept
at most half full (doubled a little at a time: no insert moves them all): 32 to ~50 bytes a record,
by where the table is in its doubling, where an ``OrderedDict`` entry costs ~80 bytes and keeps the
key's str object (~64 bytes for a 12-character id: the learner's packed ids, ``learner.id_index``,
hold no str objects for it to share). Two keys of one fingerprint would share a record: for ``n``
keys held at once, a chance of about ``n**2 / 2**65`` that any two do (~3e-8 at a million), far below
the 1% of the established-users filter the item-surge rule already trusts; the fingerprints live only
in the process (their hash key is the process's own), never in a snapshot.

Why not an ``array('d')`` object per record, as at first: each such object costs 64 bytes of
header on top of its fields; with three tables per active user and one per item, that was
~0.17 GB at 500,000 users and 500,000 items (``python -m bench.memory --records``).

>>> table = Records(2)
>>> r = table.add("a", (1.0, 2.0))
>>> table.data[r * 2 + 1] += 1.0
>>> table["a"], "a" in table, len(table)
([1.0, 3.0], True, 1)
>>> table.evict(horizon=5.0, cap=10, seen_at=0)  # "a" was seen at 1.0, before the horizon: forgotten
(None, -inf)
>>> len(table), table.add("b", (7.0, 0.0))  # b takes a's record number
(0, 0)
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from learner import kernels
from learner.id_index import row_object


class RecordIndex(Protocol):
    """What :class:`Records` and the rules use of their index (the compiled ``LruIndex`` or :class:`OrderedIndex`)."""

    def get(self, key: str, default: None = None) -> int | None: ...
    def insert(self, key: str) -> int: ...
    def remove(self, key: str) -> None: ...
    def move_to_end(self, key: str) -> None: ...
    def pop_first(self) -> int: ...
    def order(self) -> list[int]: ...
    def evict(self, data: array, width: int, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]: ...
    def __getitem__(self, key: str) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


class OrderedIndex(OrderedDict[str, int]):
    """Key -> record number, least recently touched first: the compiled ``LruIndex``'s operations on an
    ``OrderedDict`` (the index where the kernels are not built, and the reference tests compare it with). Only
    :class:`RecordIndex`'s methods keep the numbers right (``OrderedDict.pop`` and the like do not free them)."""

    def __init__(self) -> None:
        super().__init__()
        self._free: list[int] = []  # numbers of forgotten records, the last forgotten taken first

    def insert(self, key: str) -> int:
        """A new record number for ``key`` (KeyError if it has one), last in the order."""
        if key in self:
            raise KeyError(key)
        free = self._free
        self[key] = number = free.pop() if free else row_object(len(self))  # numbers are 0 .. len + free - 1
        return number

    def remove(self, key: str) -> None:
        """Forget ``key``'s record (KeyError if it has none); its number is the next taken."""
        self._free.append(self.pop(key))

    def pop_first(self) -> int:
        """Forget the least recently touched record: its number."""
        _, number = self.popitem(last=False)
        self._free.append(number)
        return number

    def order(self) -> list[int]:
        """The held records' numbers, least recently touched first."""
        return list(self.values())

    def evict(self, data: array, width: int, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]:
        """:meth:`Records.evict` on the table's ``data``."""
        while self:
            number = next(iter(self.values()))
            seen = data[number * width + seen_at]
            if seen >= horizon and len(self) <= cap:
                return number, seen
            self.pop_first()
        return None, -math.inf


def new_index() -> RecordIndex:
    """The compiled index where the kernels are built (and not switched off), else an :class:`OrderedIndex`."""
    kernel = kernels.compiled()
    return OrderedIndex() if kernel is None else kernel.LruIndex()


class Records:
    """Records of ``width`` floats by key; ``table[key]`` reads a record as a list (a copy). Keys are not read back."""

    __slots__ = ("data", "index", "width")

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError("width must be >= 1")
        self.width = width
        self.index = new_index()  # key -> record number, least recently touched first
        self.data = array("d")  # the records, one after the other

    def add(self, key: str, values: Iterable[float]) -> int:
        """A new record for ``key`` (not in the table), last in the order; returns its number."""
        data, width = self.data, self.width
        if key in self.index:
            raise ValueError(f"{key!r} has a record already")
        fields = values if type(values) is array and values.typecode == "d" else array("d", values)
        self._check(fields)
        index = self.index
        number = index.insert(key)
        start = number * width
        try:
            if start == len(data):
                data.extend(fields)
            else:  # a forgotten record's number
                data[start : start + width] = fields
        except BaseException:  # no memory, or the array's buffer is exported: no number without its record
            index.remove(key)
            raise
        return number

    def copy_of(self, key: str) -> array | None:
        """A copy of ``key``'s record as an ``array('d')``, or None."""
        number = self.index.get(key)
        if number is None:
            return None
        start = number * self.width
        return self.data[start : start + self.width]

    def put(self, key: str, values: array) -> int:
        """Set ``key``'s record to ``values`` (an ``array('d')`` of its fields), last in the order (added if new);
        returns its number."""
        index = self.index
        number = index.get(key)
        if number is None:
            return self.add(key, values)
        self._check(values)
        index.move_to_end(key)
        start = number * self.width
        self.data[start : start + self.width] = values
        return number

    def _check(self, fields: array) -> None:
        if len(fields) != self.width:  # a slice assignment of another length would shift every later record
            raise ValueError(f"a record has {self.width} fields, not {len(fields)}")

    def pop_oldest(self) -> None:
        """Forget the least recently touched record."""
        self.index.pop_first()

    def evict(self, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]:
        """Forget least-recently-touched records whose field ``seen_at`` is before ``horizon``, and any beyond ``cap``.

        Returns the least recently touched record left (its number, its ``seen_at``), or (None, -inf)
        when none is: the rules keep it, and call this again only when the table's size, the horizon
        or a touch of that record (which moves it to the end) may make it due (a condition they check
        inline), so that the oldest record, usually out of the CPU caches, is not read for every
        event. (A number identifies one held record at a time: it is reused only once its record is
        forgotten, which only this and ``pop_oldest`` do.)
        """
        return self.index.evict(self.data, self.width, horizon, cap, seen_at)

    def in_order(self) -> list[tuple[int, list[float]]]:
        """Each record held, as its number and a copy of its fields, least recently touched first."""
        data, width = self.data, self.width
        return [(number, data[number * width : (number + 1) * width].tolist()) for number in self.index.order()]

    def __getitem__(self, key: str) -> list[float]:
        start = self.index[key] * self.width
        return self.data[start : start + self.width].tolist()

    def __contains__(self, key: object) -> bool:
        return key in self.index

    __iter__ = None  # keys are not read back (the compiled index keeps none): not iterable, though indexable

    def __len__(self) -> int:
        return len(self.index)

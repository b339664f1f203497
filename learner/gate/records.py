"""Fixed-width records of floats by key, least recently touched first: the behaviour rules' tables.

A table is an index of key -> record number (its order is the rules' eviction order) over one
flat ``array('d')`` in which record ``r``'s float64 fields are ``data[r * width : (r + 1) * width]``,
and, for a table with float32 fields too (``narrow``: counters, and decayed counts whose float32
rounding the rules accept), one flat ``array('f')`` in which they are
``narrow[r * narrow_width : (r + 1) * narrow_width]``, and for a table with int32 fields
(``ints``: clocks kept relative to a base their rule keeps, and when a user was last seen, a
stamp: :meth:`Records.stamp`), one flat ``array('i')`` in which they are
``whole[r * ints : (r + 1) * ints]``. The rules read and write fields in place,
``data[r * width + field]``. A record as a whole (``add``, ``put``, ``copy_of``, ``table[key]``) is
its float64 fields, then its float32 ones, then its int32 ones; a float32 field is rounded when
written, as ``array('f')`` does, and an int32 one must be a whole number. The numbers of forgotten
records are reused (last forgotten, first taken; so the arrays keep their peak size: the most
records held at once).
The compiled index returns a new ``int`` for each number asked (its rules' compiled checks ask for
none: they read the records by number in C); :class:`OrderedIndex` stores the shared ``int``
objects of :func:`learner.id_index.row_object`.

The index is the compiled ``LruIndex`` (``learner/_kernels.c``) where the kernels are built, and
:class:`OrderedIndex` (an ``OrderedDict``) otherwise: for str keys, the same operations with the
same results (:class:`RecordIndex`: ``get``, ``insert``, ``remove``, ``move_to_end``,
``pop_first``, ``evict``, ``order``, ``len``, ``in``). Neither reads keys back: ``pop_first`` and ``evict``
answer record numbers. The compiled one knows a key by its fingerprint (str's 64-bit hash of its
text, kept in the str object), not its text: a 12-byte entry a record (the record's neighbours in
the order and the fingerprint's low 32 bits), whatever the key's length, and a hash table of 4-byte
slots (each the record's number and the fingerprint's high bits above the slots' mask) kept at most
half full (doubled a little at a time: no insert moves them all): 20 to ~29 bytes a record, by
where the table is in its doubling, where an ``OrderedDict`` entry costs ~80 bytes and keeps the
key's str object (~64 bytes for a 12-character id: the learner's packed ids, ``learner.id_index``,
hold no str objects for it to share). A key is known by ``64 - log2(slots)`` bits of its fingerprint
(44 at 2**20 slots): two keys alike in those would be taken for one another, for ``n`` keys held at
once a chance of about ``n**2 * slots / 2**65`` that any two are (~0.7% at 500,000, ~6% at a million: two
users of the million then counted as one), where the established-users filter the item-surge rule
trusts takes 1% of new users for established; the fingerprints live only in the process (their hash
key is the process's own), never in a snapshot.

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
>>> mixed = Records(1, narrow=2)  # one float64 field, two float32 ones
>>> n = mixed.add("u", (1e9 + 0.5, 3.0, 0.1))
>>> mixed.narrow[n * 2] += 1.0
>>> mixed["u"] == [1e9 + 0.5, 4.0, float(array("f", [0.1])[0])]
True
>>> clocks = Records(0, narrow=1, ints=2)  # no float64 field: one float32, two int32
>>> n = clocks.add("i", (0.5, -7, 3.0))
>>> clocks.whole[n * 2 + 1] += 1
>>> clocks["i"], clocks.whole.tolist()
([0.5, -7.0, 4.0], [-7, 4])
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from learner import kernels
from learner.id_index import row_object

#: A record's ``seen`` stamp (:meth:`Records.stamp`): ticks of a second, rounded up, from a base its index keeps
SEEN_TICKS = 256
#: ... moved up to now once now is this many ticks past it (~48.5 days); a table's idle horizon is shorter
SEEN_SPAN = 2**30


def _whole_number(value: object) -> int:
    """An int32 field's value: an int, or a float that is a whole number (a record read back as floats)."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise TypeError(f"an int32 field is a whole number, not {value!r}")


def _shift(whole: array, ints: int, field: int, by: int, floor: int) -> None:
    """``by`` subtracted from int32 field ``field`` of every record of ``whole`` (``ints`` fields), none below
    ``floor``: :meth:`Records.shift_ints` without the kernels."""
    for at in range(field, len(whole), ints):
        value = whole[at] - by
        whole[at] = value if value > floor else floor


class RecordIndex(Protocol):
    """What :class:`Records` and the rules use of their index (the compiled ``LruIndex`` or :class:`OrderedIndex`)."""

    def get(self, key: str, default: None = None) -> int | None: ...
    def insert(self, key: str) -> int: ...
    def remove(self, key: str) -> None: ...
    def move_to_end(self, key: str) -> None: ...
    def pop_first(self) -> int: ...
    def order(self) -> list[int]: ...
    def evict(self, data: array, width: int, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]: ...
    def stamp(self, now: float, whole: array, ints: int, field: int) -> int: ...
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
        self.seen_base = 0  # the ticks its table's seen stamps count from (stamp)

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

    def stamp(self, now: float, whole: array, ints: int, field: int) -> int:
        """:meth:`Records.stamp`: ``now`` as a seen stamp of field ``field`` of ``whole`` (records of ``ints`` int32
        fields), the base moved up to now (every record's field shifted down) once now is a span past it."""
        if not abs(now) <= 1e15:
            raise ValueError("a gate table's time must be finite (within 1e15 s)")
        if not 0 <= field < ints:
            raise ValueError("stamp: 0 <= field < ints")
        t = math.ceil(now * SEEN_TICKS) - self.seen_base
        if t >= SEEN_SPAN:
            _shift(whole, ints, field, t, -SEEN_SPAN)
            self.seen_base += t
            return 0
        return t if t >= -SEEN_SPAN else -SEEN_SPAN

    def evict(self, data: array, width: int, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]:
        """:meth:`Records.evict` on the table's ``data`` (its float64 fields, or its int32 ones where ``seen_at`` is
        a seen stamp: :meth:`stamp`)."""
        stamps, base = data.typecode == "i", self.seen_base
        least = horizon * SEEN_TICKS - base if stamps else horizon
        while self:
            number = next(iter(self.values()))
            kept = data[number * width + seen_at]
            if kept >= least and len(self) <= cap:
                return number, (base + kept) / SEEN_TICKS if stamps else kept
            self.pop_first()
        return None, -math.inf


def new_index() -> RecordIndex:
    """The compiled index where the kernels are built (and not switched off), else an :class:`OrderedIndex`."""
    kernel = kernels.compiled()
    return OrderedIndex() if kernel is None else kernel.LruIndex()


class Records:
    """Records of ``width`` float64 fields (then ``narrow`` float32 ones, then ``ints`` int32 ones) by key;
    ``table[key]`` reads a record as a list (a copy). Keys are not read back."""

    __slots__ = ("data", "index", "ints", "narrow", "narrow_width", "whole", "width")

    def __init__(self, width: int, narrow: int = 0, ints: int = 0) -> None:
        if width < 0 or narrow < 0 or ints < 0 or width + narrow + ints == 0:
            raise ValueError("a record has at least one field, and width, narrow and ints are >= 0")
        self.width = width
        self.narrow_width = narrow
        self.ints = ints
        self.index = new_index()  # key -> record number, least recently touched first
        self.data = array("d")  # the records' float64 fields, one record after the other
        self.narrow = array("f")  # their float32 fields, likewise
        self.whole = array("i")  # their int32 fields, likewise

    def add(self, key: str, values: Iterable[float]) -> int:
        """A new record for ``key`` (not in the table), last in the order; returns its number."""
        if key in self.index:
            raise ValueError(f"{key!r} has a record already")
        if self.narrow_width or self.ints:  # split between the arrays: a tuple slices and extends them without a copy
            fields: array | tuple = values if type(values) is tuple else tuple(values)
        else:
            fields = values if type(values) is array and values.typecode == "d" else array("d", values)
        self._check(fields)
        index = self.index
        number = index.insert(key)
        try:
            self._write(number, fields)
        except BaseException:  # no memory, a field not a number, or an array's buffer is exported: no number
            index.remove(key)  # without its record
            raise
        return number

    def _write(self, number: int, fields: array | tuple) -> None:
        """Record ``number``'s fields (as many as a record has: an ``array('d')``, or a tuple where there are float32
        ones), at the end of the arrays or where a forgotten record was. If they cannot be written the arrays keep
        their lengths."""
        data, width, narrow, narrow_width, ints = self.data, self.width, self.narrow, self.narrow_width, self.ints
        start = number * width
        if narrow_width == 0 and ints == 0:
            if start == len(data):
                data.extend(fields)
            else:
                data[start : start + width] = fields
            return
        wide, small, whole = fields[:width], fields[width : width + narrow_width], fields[width + narrow_width :]
        at, end, narrow_end, whole_end = number * narrow_width, len(data), len(narrow), len(self.whole)
        try:
            if start == end:
                data.extend(wide)
            else:
                data[start : start + width] = wide if type(wide) is array else array("d", wide)
            if at == narrow_end:
                narrow.extend(small if type(small) is tuple else small.tolist())
            else:
                narrow[at : at + narrow_width] = array("f", small)
            if ints:
                numbers = array("i", map(_whole_number, whole))
                if number * ints == whole_end:
                    self.whole.extend(numbers)
                else:
                    self.whole[number * ints : (number + 1) * ints] = numbers
        except BaseException:
            del data[end:], narrow[narrow_end:], self.whole[whole_end:]  # as they were (if extended, maybe in part)
            raise

    def copy_of(self, key: str) -> array | None:
        """A copy of ``key``'s record as an ``array('d')``, or None."""
        number = self.index.get(key)
        if number is None:
            return None
        return self._read(number)

    def _read(self, number: int) -> array:
        start = number * self.width
        fields = self.data[start : start + self.width]
        narrow_width = self.narrow_width
        if narrow_width:
            at = number * narrow_width
            fields.fromlist(self.narrow[at : at + narrow_width].tolist())
        ints = self.ints
        if ints:
            fields.fromlist(self.whole[number * ints : (number + 1) * ints].tolist())
        return fields

    def put(self, key: str, values: array) -> int:
        """Set ``key``'s record to ``values`` (an ``array('d')`` of its fields), last in the order (added if new);
        returns its number."""
        index = self.index
        number = index.get(key)
        if number is None:
            return self.add(key, values)
        self._check(values)
        index.move_to_end(key)
        self._write(number, values)
        return number

    def _check(self, fields: array | tuple) -> None:
        expected = self.width + self.narrow_width + self.ints  # a slice of another length would shift every later one
        if len(fields) != expected:
            raise ValueError(f"a record has {expected} fields, not {len(fields)}")

    def pop_oldest(self) -> None:
        """Forget the least recently touched record."""
        self.index.pop_first()

    def evict(self, horizon: float, cap: int, seen_at: int) -> tuple[int | None, float]:
        """Forget least-recently-touched records whose field ``seen_at`` (a float64 one, or the int32 seen stamp:
        :meth:`stamp`, read as seconds) is before ``horizon``, and any beyond ``cap``.

        Returns the least recently touched record left (its number, its ``seen_at``), or (None, -inf)
        when none is: the rules keep it, and call this again only when the table's size, the horizon
        or a touch of that record (which moves it to the end) may make it due (a condition they check
        inline), so that the oldest record, usually out of the CPU caches, is not read for every
        event. (A number identifies one held record at a time: it is reused only once its record is
        forgotten, which only this and ``pop_oldest`` do.)
        """
        at = seen_at - self.width - self.narrow_width  # an int32 field: a seen stamp (stamp)
        if at >= 0:
            return self.index.evict(self.whole, self.ints, horizon, cap, at)
        if not 0 <= seen_at < self.width:
            raise ValueError(f"evict reads a float64 field or a seen stamp, not field {seen_at}")
        return self.index.evict(self.data, self.width, horizon, cap, seen_at)

    def prefetch(self, events: list[tuple[Any, ...]], field: int) -> int:
        """Have the CPU fetch ahead what looking up each event's key (``event[field]``) will read: its slot, then
        its entry and record (a compiled index's ``prefetch``; the Python one fetches nothing). Changes nothing;
        returns how many keys' records were fetched."""
        prefetch = getattr(self.index, "prefetch", None)
        if prefetch is None:
            return 0
        tables = ((self.data, 8 * self.width), (self.narrow, 4 * self.narrow_width), (self.whole, 4 * self.ints))
        return prefetch(events, field, tuple(table for table in tables if table[1]))

    def stamp(self, now: float) -> int:
        """``now`` as a record's seen stamp, for its last int32 field (:meth:`evict` reads it as seconds again):
        ticks of 1/256 s (:data:`SEEN_TICKS`), rounded up (a record seen at ``now`` is forgotten at most ~4 ms
        after its horizon passes, never before), from a base the index keeps. Once now is :data:`SEEN_SPAN` ticks
        (~48.5 days) past the base, the base moves up to now and every record's stamp is shifted down (none below a
        span before the new base: a table's idle horizon is shorter than a span, so such a stamp is past it); a now
        a span before the base or more is stamped a span before it (a clock stepping back that far keeps records
        longer, never forgets them sooner)."""
        return self.index.stamp(now, self.whole, self.ints, self.ints - 1)

    def seen(self, key: str) -> float:
        """When ``key``'s record was last stamped (:meth:`stamp`), in seconds (KeyError if it has none)."""
        stamp = self.whole[self.index[key] * self.ints + self.ints - 1]
        return (self.index.seen_base + stamp) / SEEN_TICKS

    def shift_ints(self, fields: Iterable[int], by: int, floor: int) -> None:
        """Subtract ``by`` (>= 0) from int32 fields ``fields`` (numbers among the ``ints``) of every record, none
        below ``floor`` (a rule moving the base its clocks are kept from; forgotten records' fields too, never read)."""
        whole, ints = self.whole, self.ints
        if by < 0:
            raise ValueError("a base only moves forward: by >= 0")
        kernel = kernels.compiled()
        for field in fields:
            if not 0 <= field < ints:
                raise ValueError(f"an int32 field is 0 to {ints - 1}, not {field}")
            if kernel is not None:
                kernel.shift_ints(whole, ints, field, by, floor)
            else:
                _shift(whole, ints, field, by, floor)

    def in_order(self) -> list[tuple[int, list[float]]]:
        """Each record held, as its number and a copy of its fields, least recently touched first."""
        return [(number, self._read(number).tolist()) for number in self.index.order()]

    def __getitem__(self, key: str) -> list[float]:
        return self._read(self.index[key]).tolist()

    def __contains__(self, key: object) -> bool:
        return key in self.index

    __iter__ = None  # keys are not read back (the compiled index keeps none): not iterable, though indexable

    def __len__(self) -> int:
        return len(self.index)

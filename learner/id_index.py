"""A dense, append-only mapping between string ids and array rows.

>>> index = IdIndex(["a"])
>>> index.add("b")
(1, True)
>>> index.add("a")
(0, False)
>>> index.get("zzz") is None
True

What it costs per id (CPython 3.11, 64-bit), and why it is built this way:

* the id string itself (about 49 bytes plus its length, rounded up to 16: 64 bytes for a
  12-character ASCII id) -- shared, not copied, with every other index and list holding it;
* one slot of ``_rows`` (a dict of str keys: a 16-byte entry, room for 1.5 to 3 of them, plus
  4-byte hash slots: 22 to 44 bytes, depending on where the dict is in its doubling; 31 at
  500,000 ids);
* one pointer in ``ids`` (8 bytes, about 9 with the list's over-allocation);
* no row number object of its own: the values of ``_rows`` come from one pool shared by every
  index in the process (:func:`row_object`), so row ``r`` of the users, of the items and of any
  other index is the same ``int``. A fresh ``int`` per id would cost 32 bytes more in each
  index, as much as the dict slot; the pool costs 32 + 8 bytes per row number once, for the
  largest index (users and items of a million ids in all: about 20 MB instead of 32 MB).

A lookup is a single dict lookup, as fast as a plain ``dict[str, int]``; only adding a new id
does more (it takes the pooled row object). Ids read from a snapshot are new strings: a second
list of ids that the index already holds can share its strings through :meth:`IdIndex.canonical`.

Reading version after version of the same model (the API does, every checkpoint), most of an
index is the previous version's: ids are only ever appended. Inside :func:`reusing`, an index
whose ids start with exactly the ids of one of the given indexes copies that index's dict and
list (C-level copies, ~5 ms for 200,000 ids) and adds only the rest, instead of hashing every id
again (~38 ms); it also keeps the previous strings instead of the snapshot's new copies. The
given indexes are not changed.

>>> old = IdIndex(["a", "b"])
>>> with reusing([old]):
...     new = IdIndex(["a", "b", "c"])
>>> new.get("c"), new.ids[0] is old.ids[0], len(old)
(2, True, 2)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ROWS: list[int] = []  # _ROWS[r] is r: the one int object for row r, shared by every IdIndex
_ROWS_GROW = threading.Lock()  # taken only to grow the pool; keeps _ROWS[r] == r under threads


def row_object(row: int) -> int:
    """The shared ``int`` for ``row`` (grows the pool on first use; never shrinks).

    The pool holds one ``int`` for each row number up to the largest any index has used
    (32 bytes each, plus an 8-byte list slot), however many indexes use them.
    """
    rows = _ROWS
    if row >= len(rows):
        with _ROWS_GROW:
            while len(rows) <= row:
                rows.append(len(rows))
    return rows[row]


def row_pool() -> list[int]:
    """The pool itself (``row_pool()[r] is row_object(r)``), for code that reads it without a call per row; grow
    it only through :func:`row_object`."""
    return _ROWS


_REUSABLE: ContextVar[tuple[IdIndex, ...]] = ContextVar("reusable_id_indexes", default=())


@contextmanager
def reusing(indexes: Iterable[IdIndex]) -> Iterator[None]:
    """Indexes built inside may start from a copy of one of ``indexes`` (see the module doc)."""
    token = _REUSABLE.set(tuple(indexes))
    try:
        yield
    finally:
        _REUSABLE.reset(token)


class IdIndex:
    """Assigns row numbers 0, 1, 2, ... to ids in order of first appearance."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        given = list(ids)
        for previous in _REUSABLE.get():
            n = len(previous.ids)
            # the last id first: a different index (or lineage) is refused without comparing them all
            if 0 < n <= len(given) and given[n - 1] == previous.ids[-1] and given[:n] == previous.ids:
                self.ids, self._rows = previous.ids[:], previous._rows.copy()
                for id_ in given[n:]:
                    self.add(id_)
                return
        if given:
            row_object(len(given) - 1)  # grow the pool once for all of them
        # In one step (a snapshot's ids are distinct: about 2.5x faster than adding one by one);
        # a repeated id makes the dict shorter than the list, and then ids are added in order.
        rows = dict(zip(given, _ROWS, strict=False))  # the pool may be longer than the list
        if len(rows) == len(given):
            self.ids: list[str] = given
            self._rows: dict[str, int] = rows
        else:
            self.ids, self._rows = [], {}
            for id_ in given:
                self.add(id_)

    def add(self, id_: str) -> tuple[int, bool]:
        """Return ``(row, created)`` for ``id_``, creating a row if it is new."""
        row = self._rows.get(id_)
        if row is not None:
            return row, False
        row = len(self.ids)
        pool = _ROWS
        row = pool[row] if row < len(pool) else row_object(row)
        self._rows[id_] = row
        self.ids.append(id_)
        return row, True

    def get(self, id_: str) -> int | None:
        return self._rows.get(id_)

    def rows(self, ids: Iterable[str]) -> list[int]:
        """Rows of the ids that are known; unknown ids are left out."""
        return [row for row in map(self._rows.get, ids) if row is not None]  # one lookup an id

    def canonical(self, ids: Iterable[str]) -> list[str]:
        """``ids`` as a list, each id this index holds replaced by the index's own string object.

        A second list of the same ids (popularity's, next to the model's items, both read from a
        snapshot) then keeps no second copy of their strings (about 64 bytes an id).
        """
        rows, own = self._rows, self.ids
        return [i if (row := rows.get(i)) is None else own[row] for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

"""A dense, append-only mapping between string ids and array rows.

>>> index = IdIndex(["a"])
>>> index.add("b")
(1, True)
>>> index.add("a")
(0, False)
>>> index.get("zzz") is None
True
>>> index.ids[1], list(index.ids), index.ids == ["a", "b"]
('b', ['a', 'b'], True)

Where the compiled kernels are built (``learner/_kernels.c``), an index keeps its ids packed in an
``IdTable``: each id's text in one arena (a byte a character for ASCII ids; at most 4 GiB of it, ~350
million 12-character ids, beyond which ``add`` raises OverflowError), where it ends (4 bytes), its
kind (a byte, kept only once an id of 2 or 4 bytes a character comes: until then each is 1) and an
open-addressing table of 4-byte slots at most 2/3 full (6 to 12 bytes an id): ~27 bytes a
12-character id, against ~105 for a dict of str -> row plus a list of the str
objects (the str 64, a dict slot ~31, a list pointer ~9), which is what an index is where the
kernels are not built (:class:`_DictTable`). A million users and items then cost ~27 MB of ids
instead of ~105 MB, in the worker and in every API process. A lookup hashes the str (its hash is
kept in it) and compares text only when the hash's bits match, as a dict does; ``add`` and ``get``
are the table's own C methods (no Python call). ``ids`` is the table itself: a read-only sequence,
each id read back as a new str (``ids[r]``, slices, iteration), equal to a list of the same ids; a
snapshot writes it packed, and reads it back as a table, without making the str objects (``IdTable.packed``,
``id_table_from_packed``: :mod:`learner.codec`); an index made from such a table copies it whole.
No ``add`` stalls as the table grows: its slots double a little at a time (the old ones kept, and
their entries moved 32 slots with each id added after, a lookup probing both meanwhile), and its
arrays of a MB and more are memory maps of their own, grown by ``mremap`` (no copy). A doubling at
350,000 ids held one ``add`` for ~10 ms before, linear in the ids.

Reading version after version of the same model (the API does, every checkpoint), most of an
index is the previous version's: ids are only ever appended. Inside :func:`reusing`, an index
whose ids start with exactly the ids of one of the given indexes copies that index's table (a
memory copy; a dict and list copy without the kernels) and adds only the rest, instead of hashing
every id again. The given indexes are not changed.

>>> old = IdIndex(["a", "b"])
>>> with reusing([old]):
...     new = IdIndex(["a", "b", "c"])
>>> new.get("c"), len(old)
(2, 2)

Row numbers: the compiled table returns a new ``int`` for each lookup (freed with it). Without the
kernels, the dict's values come from one pool shared by every index in the process
(:func:`row_object`), so that a stored row costs no ``int`` of its own; the quality gate's tables
number their records from the same pool (``learner.gate.records``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from learner import kernels

#: How :meth:`IdIndex.blank` names an erased id's row (followed by the row number): ``~`` is in no valid id
#: (recstream.events.ID_PATTERN), so no event can name it.
ERASED_PREFIX = "~erased~"

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


class GrowingIds(Protocol):
    """An index's ids in row order that ``extend`` grows: a list, or a packed ``IdTable`` (which skips the ids it
    holds already)."""

    def __getitem__(self, row: int) -> str: ...
    def __len__(self) -> int: ...
    def extend(self, ids: Iterable[str]) -> None: ...


_REUSABLE: ContextVar[tuple[IdIndex, ...]] = ContextVar("reusable_id_indexes", default=())


@contextmanager
def reusing(indexes: Iterable[IdIndex]) -> Iterator[None]:
    """Indexes built inside may start from a copy of one of ``indexes`` (see the module doc)."""
    token = _REUSABLE.set(tuple(indexes))
    try:
        yield
    finally:
        _REUSABLE.reset(token)


class _DictTable:
    """An index's ids in a dict (id -> row, the values from the shared pool) and a list (row -> id): where the
    kernels are not built, the compiled ``IdTable``'s methods on Python containers."""

    __slots__ = ("_rows", "ids")

    def __init__(self, ids: list[str]) -> None:
        for id_ in ids:  # as the compiled table (and add) refuse them
            if type(id_) is not str:
                raise TypeError(f"ids are str, not {type(id_).__name__}")
        if ids:
            row_object(len(ids) - 1)  # grow the pool once for all of them
        # In one step (a snapshot's ids are distinct: about 2.5x faster than adding one by one);
        # a repeated id makes the dict shorter than the list, and then ids are added in order.
        rows = dict(zip(ids, _ROWS, strict=False))  # the pool may be longer than the list
        if len(rows) == len(ids):
            self.ids: list[str] = ids[:]  # its own (the caller's list stays as it is)
            self._rows: dict[str, int] = rows
        else:
            self.ids, self._rows = [], {}
            self.extend(ids)

    def add(self, id_: str) -> tuple[int, bool]:
        row = self._rows.get(id_)
        if row is not None:
            return row, False
        if not isinstance(id_, str):  # as the compiled table (a non-str would never be found again)
            raise TypeError(f"ids are str, not {type(id_).__name__}")
        row = len(self.ids)
        pool = _ROWS
        row = pool[row] if row < len(pool) else row_object(row)
        self._rows[id_] = row
        self.ids.append(id_)
        return row, True

    def get(self, id_: str, default: None = None) -> int | None:
        return self._rows.get(id_, default)

    def rows(self, ids: Iterable[str]) -> list[int]:
        return [row for row in map(self._rows.get, ids) if row is not None]  # one lookup an id

    def extend(self, ids: Iterable[str]) -> None:
        for id_ in ids:
            self.add(id_)

    def copy(self) -> _DictTable:
        copy = _DictTable([])
        copy.ids, copy._rows = self.ids[:], self._rows.copy()  # C-level copies, the same str objects
        return copy

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows


def _new_table(ids: list[str]) -> Any:
    """The compiled ``IdTable`` of ``ids`` where the kernels are built (and not switched off), else a
    :class:`_DictTable`."""
    kernel = kernels.compiled()
    return _DictTable(ids) if kernel is None else kernel.IdTable(ids)


class IdIndex:
    """Assigns row numbers 0, 1, 2, ... to ids in order of first appearance.

    ``add(id) -> (row, created)``, ``get(id, default=None)``, ``rows(ids)`` (the rows of the known ones, in
    order) are the table's own methods; ``ids`` is the ids in row order (a list without the kernels, a packed
    read-only sequence with them: index it, slice it, iterate it, compare it with a list)."""

    __slots__ = ("_table", "add", "get", "ids", "rows")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        kernel = kernels.compiled()
        if kernel is not None and type(ids) is kernel.IdTable:  # e.g. a snapshot's packed ids: copied whole
            self._use(ids.copy())
            return
        given = ids if type(ids) is list else list(ids)
        table = None
        for previous in _REUSABLE.get():
            n = len(previous)
            # the last id first: a different index (or lineage) is refused without comparing them all
            if 0 < n <= len(given) and given[n - 1] == previous.ids[-1] and previous.ids == given[:n]:
                table = previous._table.copy()
                table.extend(given[n:])
                break
        if table is None:
            table = _new_table(given)
        self._use(table)

    def _use(self, table: Any) -> None:
        self._table = table
        self.ids: Sequence[str] = table.ids
        self.add: Callable[[str], tuple[int, bool]] = table.add
        self.get: Callable[[str], int | None] = table.get
        self.rows: Callable[[Iterable[str]], list[int]] = table.rows

    def canonical(self, ids: Iterable[str]) -> list[str]:
        """``ids`` as a list, each id this index holds as a str object replaced by the index's own (without the
        kernels): a second list of the same ids (popularity's, next to the model's items, both read from a
        snapshot) then keeps no second copy of their strings (about 64 bytes an id). A packed index holds no str
        objects: the list is returned as it is."""
        table = self._table
        if not isinstance(table, _DictTable):
            return ids if type(ids) is list else list(ids)
        rows, own = table._rows, table.ids
        return [i if (row := rows.get(i)) is None else own[row] for i in ids]

    def blank(self, ids: Iterable[str]) -> list[int]:
        """Replace each of ``ids`` held with a placeholder no event can carry (``~erased~<row>``: an id has no
        ``~``), its row kept, so no array moves (users erased: :mod:`learner.erasure`); the rows of those held.

        It builds the table again, once for all of them (every id: ~0.5 s a million ids), and it is the one change
        to an index that is not an append: a delta carries only the ids added (learner.cooccurrence_delta), so the
        snapshot after it must be whole, and an index reusing this one's table (:func:`reusing`) finds the ids
        differ and does not."""
        rows = self.rows(dict.fromkeys(ids))
        if rows:
            every = list(self.ids)
            for row in rows:
                every[row] = f"{ERASED_PREFIX}{row}"
            self._use(_new_table(every))
        return rows

    @property
    def nbytes(self) -> int | None:
        """Bytes the packed table allocated (None without the kernels)."""
        return getattr(self._table, "nbytes", None)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._table

"""A dense, append-only mapping between string ids and array rows.

>>> index = IdIndex(["a"])
>>> index.add("b")
(1, True)
>>> index.add("a")
(0, False)
>>> index.get("zzz") is None
True
"""

from __future__ import annotations

from collections.abc import Iterable


class IdIndex:
    """Assigns row numbers 0, 1, 2, ... to ids in order of first appearance."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}
        for id_ in ids:
            self.add(id_)

    def add(self, id_: str) -> tuple[int, bool]:
        """Return ``(row, created)`` for ``id_``, creating a row if it is new."""
        row = self._rows.get(id_)
        if row is not None:
            return row, False
        row = len(self.ids)
        self._rows[id_] = row
        self.ids.append(id_)
        return row, True

    def get(self, id_: str) -> int | None:
        return self._rows.get(id_)

    def rows(self, ids: Iterable[str]) -> list[int]:
        """Rows of the ids that are known; unknown ids are left out."""
        rows = self._rows
        return [rows[i] for i in ids if i in rows]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

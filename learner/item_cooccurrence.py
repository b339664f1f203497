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

Storage is one growable sparse row per item (column and value arrays plus a column-to-slot
dict built on the first update after a load), so an update costs ``2 * window`` dict lookups
and scoring a user costs ``window`` numpy scatter-adds, never a loop over the catalogue.

>>> m = ItemCooccurrence(window=3)
>>> for user, items in {"ann": "abc", "bob": "abd", "cid": "xyz"}.items():
...     for item in items:
...         m.learn_one(user, item, 1.0)
>>> m.learn_one("dan", "a", 1.0)
>>> scores = m.score_all("dan")
>>> [m.items.ids[i] for i in np.argsort(-scores, kind="stable")[:3]]
['b', 'c', 'd']
>>> float(scores[m.items.get("x")])
0.0
"""

from __future__ import annotations

import math

import numpy as np

from learner.arrays import ensure_rows
from learner.base import ModelState
from learner.id_index import IdIndex


class SparseRows:
    """A growable square-ish sparse matrix: per row, parallel column/value arrays in insertion order."""

    def __init__(self) -> None:
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._len: list[int] = []
        self._slot: list[dict[int, int] | None] = []  # column -> slot, built lazily after a load

    def __len__(self) -> int:
        return len(self._cols)

    def add_row(self) -> None:
        self._cols.append(np.zeros(8, dtype=np.int32))
        self._vals.append(np.zeros(8, dtype=np.float32))
        self._len.append(0)
        self._slot.append({})

    def add(self, row: int, col: int, value: float) -> None:
        slots = self._slot[row]
        if slots is None:
            n = self._len[row]
            slots = self._slot[row] = {c: k for k, c in enumerate(self._cols[row][:n].tolist())}
        k = slots.get(col)
        if k is not None:
            self._vals[row][k] += value
            return
        k = self._len[row]
        if k == len(self._cols[row]):
            self._cols[row] = np.concatenate([self._cols[row], np.zeros(k, dtype=np.int32)])
            self._vals[row] = np.concatenate([self._vals[row], np.zeros(k, dtype=np.float32)])
        self._cols[row][k] = col
        self._vals[row][k] = value
        self._len[row] = k + 1
        slots[col] = k

    def get(self, row: int, col: int) -> float:
        slots = self._slot[row]
        if slots is None:
            n = self._len[row]
            hits = np.flatnonzero(self._cols[row][:n] == col)
            return float(self._vals[row][hits[0]]) if hits.size else 0.0
        k = slots.get(col)
        return 0.0 if k is None else float(self._vals[row][k])

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of one row, as views: do not modify."""
        n = self._len[row]
        return self._cols[row][:n], self._vals[row][:n]

    @property
    def nnz(self) -> int:
        return sum(self._len)

    def to_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indptr = np.zeros(len(self._cols) + 1, dtype=np.int64)
        np.cumsum(self._len, out=indptr[1:])
        if not self._cols:
            return indptr, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        indices = np.concatenate([c[:n] for c, n in zip(self._cols, self._len, strict=True)])
        data = np.concatenate([v[:n] for v, n in zip(self._vals, self._len, strict=True)])
        return indptr, indices.astype(np.int32, copy=False), data.astype(np.float32, copy=False)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int) -> SparseRows:
        n_rows = len(indptr) - 1
        if n_rows < 0 or indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data):
            raise ValueError("malformed sparse rows")
        if np.any(np.diff(indptr) < 0) or (len(indices) and (indices.min() < 0 or indices.max() >= n_cols)):
            raise ValueError("malformed sparse rows")
        rows = cls()
        for r in range(n_rows):
            lo, hi = int(indptr[r]), int(indptr[r + 1])
            rows._cols.append(np.array(indices[lo:hi], dtype=np.int32))
            rows._vals.append(np.array(data[lo:hi], dtype=np.float32))
            rows._len.append(hi - lo)
            rows._slot.append(None)
        return rows


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
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = int(window)
        self.gamma = float(gamma)
        self.recency = float(recency)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.forward = float(forward)
        self.backward = float(backward)
        self.users = IdIndex()
        self.items = IdIndex()
        self._rows = SparseRows()
        self._mass = np.zeros(16, dtype=np.float64)  # total weight per item
        self._candidate_damping = np.ones(16, dtype=np.float64)  # max(mass, 1) ** -beta, kept up to date
        self._history: list[dict[int, float]] = []  # per user: item row -> weight, oldest first

    # -- River-style interface -------------------------------------------------------

    def learn_one(self, user: str, item: str, y: float) -> None:
        u = self._user_row(user)
        i = self._item_row(item)
        if y <= 0:
            return
        history = self._history[u]
        add = self._rows.add
        decay = y
        for j, w_j in reversed(history.items()):
            if j == i:  # a like after a view of the same item: pair it with the others only
                continue
            inc = decay * w_j
            add(j, i, self.forward * inc)
            add(i, j, self.backward * inc)
            decay *= self.gamma
        mass = self._mass[i] + y
        self._mass[i] = mass
        self._candidate_damping[i] = max(mass, 1.0) ** -self.beta
        history[i] = history.pop(i, 0.0) + y
        if len(history) > self.window:
            del history[next(iter(history))]

    def predict_one(self, user: str, item: str) -> float:
        """``1 - exp(-evidence)``: monotone in the co-occurrence evidence, not a calibrated probability."""
        u = self.users.get(user)
        i = self.items.get(item)
        if u is None or i is None:
            return 0.0
        evidence = 0.0
        for j, weight in self._weighted_history(u):
            evidence += weight * self._rows.get(j, i)
        return 1.0 - math.exp(-evidence * float(self._candidate_damping[i]))

    def knows_user(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and bool(self._history[u])

    def score_all(self, user: str) -> np.ndarray:
        n_items = len(self.items)
        scores = np.zeros(n_items, dtype=np.float64)
        u = self.users.get(user)
        if u is None:
            return scores
        for j, weight in self._weighted_history(u):
            cols, vals = self._rows.row(j)
            scores[cols] += weight * vals
        scores *= self._candidate_damping[:n_items]
        return scores

    def recent_items(self, user: str) -> list[str]:
        """The user's remembered items, most recent last."""
        u = self.users.get(user)
        return [] if u is None else [self.items.ids[j] for j in self._history[u]]

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> ModelState:
        indptr, indices, data = self._rows.to_csr()
        n_users, n_items = len(self.users), len(self.items)
        hist_items = np.full((n_users, self.window), -1, dtype=np.int32)
        hist_weights = np.zeros((n_users, self.window), dtype=np.float64)
        for u, history in enumerate(self._history):
            for k, (j, w) in enumerate(history.items()):
                hist_items[u, k] = j
                hist_weights[u, k] = w
        return ModelState(
            kind=self.kind,
            params={
                "window": self.window,
                "gamma": self.gamma,
                "recency": self.recency,
                "alpha": self.alpha,
                "beta": self.beta,
                "forward": self.forward,
                "backward": self.backward,
            },
            ids={"users": list(self.users.ids), "items": list(self.items.ids)},
            arrays={
                "indptr": indptr,
                "indices": indices,
                "data": data,
                "mass": self._mass[:n_items].copy(),
                "history_items": hist_items,
                "history_weights": hist_weights,
            },
        )

    @classmethod
    def from_state(cls, state: ModelState) -> ItemCooccurrence:
        if state.kind != cls.kind:
            raise ValueError(f"state is for model kind {state.kind!r}, not {cls.kind!r}")
        p = state.params
        model = cls(
            window=int(p["window"]),
            gamma=float(p["gamma"]),
            recency=float(p["recency"]),
            alpha=float(p["alpha"]),
            beta=float(p["beta"]),
            forward=float(p["forward"]),
            backward=float(p["backward"]),
        )
        model.users = IdIndex(state.ids["users"])
        model.items = IdIndex(state.ids["items"])
        n_users, n_items = len(model.users), len(model.items)
        a = state.arrays
        mass = np.asarray(a["mass"], dtype=np.float64)
        hist_items = np.asarray(a["history_items"])
        hist_weights = np.asarray(a["history_weights"], dtype=np.float64)
        if len(a["indptr"]) != n_items + 1 or mass.shape != (n_items,):
            raise ValueError("state arrays do not match its id lists")
        if hist_items.shape != (n_users, model.window) or hist_weights.shape != hist_items.shape:
            raise ValueError("history arrays do not match the user list")
        if hist_items.size and (hist_items.max() >= n_items or hist_items.min() < -1):
            raise ValueError("history refers to unknown items")
        model._rows = SparseRows.from_csr(np.asarray(a["indptr"]), np.asarray(a["indices"]), a["data"], n_items)
        model._mass = ensure_rows(mass.copy(), n_items)
        model._candidate_damping = np.maximum(model._mass, 1.0) ** -model.beta
        model._history = [
            {int(j): float(w) for j, w in zip(row_items, row_weights, strict=True) if j >= 0}
            for row_items, row_weights in zip(hist_items.tolist(), hist_weights.tolist(), strict=True)
        ]
        return model

    # -- internals -------------------------------------------------------------------

    def _weighted_history(self, u: int) -> list[tuple[int, float]]:
        """(item row, ranking weight) for the user's remembered items: recency and popularity damped."""
        mass = self._mass
        out = []
        for age, (j, w_j) in enumerate(reversed(self._history[u].items())):
            out.append((j, w_j * self.recency**age * max(float(mass[j]), 1.0) ** -self.alpha))
        return out

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
            if row >= len(self._candidate_damping):
                grown = np.ones(len(self._mass), dtype=np.float64)
                grown[: len(self._candidate_damping)] = self._candidate_damping
                self._candidate_damping = grown
        return row

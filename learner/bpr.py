"""Online pairwise factor model (BPR-style): rank what a person took above sampled other items.

For an event with weight ``y >= min_weight`` (by default likes and shares, not plain views)
the model takes ``negatives`` items drawn uniformly from the catalogue and makes one SGD step
on ``y * log sigmoid(x_ui - x_uj)`` for each, all negatives in one vectorised update.
``x_ui = b_i + p_u . q_i``. Users start at the zero vector (so a new user is ranked by item
bias, a popularity-like prior) and items at small random vectors.

>>> m = OnlineBPR(n_factors=8, seed=0)
>>> for _ in range(30):
...     for item in ("a1", "a2", "a3"):
...         m.learn_one("ann", item, 1.0)
...     for item in ("b1", "b2", "b3"):
...         m.learn_one("bob", item, 1.0)
>>> m.predict_one("ann", "a1") > m.predict_one("ann", "b1")
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from learner.arrays import grow_rows, mapped_copy
from learner.base import ModelState, expect_kind, restore_rng, rng_state
from learner.id_index import IdIndex
from learner.ranking import scores_for_user

FLOAT = np.float32


class OnlineBPR:
    """Bayesian-personalised-ranking factors with item biases, one event at a time."""

    kind = "bpr"
    reward = "weight"

    def __init__(
        self,
        n_factors: int = 32,
        lr: float = 0.1,
        l2: float = 0.001,
        negatives: int = 4,
        min_weight: float = 0.5,
        init_scale: float = 0.1,
        seed: int = 42,
    ) -> None:
        self.n_factors = int(n_factors)
        self.lr = float(lr)
        self.l2 = float(l2)
        self.negatives = int(negatives)
        self.min_weight = float(min_weight)
        self.init_scale = float(init_scale)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self.users = IdIndex()
        self.items = IdIndex()
        self._p = np.zeros((0, self.n_factors), dtype=FLOAT)
        self._q = np.zeros((0, self.n_factors), dtype=FLOAT)
        self._b = np.zeros(0, dtype=FLOAT)

    def learn_one(self, user: str, item: str, y: float) -> None:
        u = self._user_row(user)
        i = self._item_row(item)
        n_items = len(self.items)
        if y < self.min_weight or y <= 0 or n_items < 2 or self.negatives < 1:
            return
        js = self._rng.integers(0, n_items, size=self.negatives)
        js = np.unique(js[js != i])
        if not js.size:
            return
        p, q, b = self._p[u].copy(), self._q, self._b
        diff = q[i] - q[js]  # (n, k)
        x = b[i] - b[js] + diff @ p
        g = (y / (1.0 + np.exp(np.clip(x, -30.0, 30.0)))).astype(FLOAT)  # y * sigmoid(-x)
        lr, l2 = self.lr, self.l2
        self._p[u] += lr * (g @ diff - l2 * p)
        q[i] += lr * (g.sum() * p - l2 * q[i])
        q[js] -= lr * (g[:, None] * p + l2 * q[js])
        b[i] += lr * (g.sum() - l2 * b[i])
        b[js] -= lr * (g + l2 * b[js])

    def predict_one(self, user: str, item: str) -> float:
        u, i = self.users.get(user), self.items.get(item)
        if i is None:
            return 0.5
        z = float(self._b[i]) + (float(self._p[u] @ self._q[i]) if u is not None else 0.0)
        return 1.0 / (1.0 + math.exp(-min(max(z, -30.0), 30.0)))

    def knows_user(self, user: str) -> bool:
        return user in self.users

    def forget_users(self, users: Sequence[str]) -> int:
        """Erase ``users``: their factors zeroed (a new user's start) and their ids blanked (learner.erasure); how many
        the model held."""
        rows = self.users.blank(users)
        self._p[rows] = 0.0
        return len(rows)

    def score_all(self, user: str) -> np.ndarray:
        n = len(self.items)
        u = self.users.get(user)
        if u is None:
            return self._b[:n].astype(np.float64)
        return scores_for_user(self._p[u], self._q[:n], self._b[:n]).astype(np.float64)

    def to_state(self) -> ModelState:
        n_users, n_items = len(self.users), len(self.items)
        return ModelState(
            kind=self.kind,
            params={
                "n_factors": self.n_factors,
                "lr": self.lr,
                "l2": self.l2,
                "negatives": self.negatives,
                "min_weight": self.min_weight,
                "init_scale": self.init_scale,
                "seed": self.seed,
                # The sampler's position, so a restored model samples the same negatives next.
                "rng_state": rng_state(self._rng),
            },
            ids={"users": list(self.users.ids), "items": list(self.items.ids)},
            arrays={
                "user_factors": self._p[:n_users].copy(),
                "item_factors": self._q[:n_items].copy(),
                "item_bias": self._b[:n_items].copy(),
            },
        )

    @classmethod
    def from_state(cls, state: ModelState) -> OnlineBPR:
        expect_kind(state, cls.kind)
        p = state.params
        model = cls(
            n_factors=int(p["n_factors"]),
            lr=float(p["lr"]),
            l2=float(p["l2"]),
            negatives=int(p["negatives"]),
            min_weight=float(p["min_weight"]),
            init_scale=float(p["init_scale"]),
            seed=int(p["seed"]),
        )
        restore_rng(model._rng, p)
        model.users = IdIndex(state.ids["users"])
        model.items = IdIndex(state.ids["items"])
        uf = np.asarray(state.arrays["user_factors"], dtype=FLOAT)
        itf = np.asarray(state.arrays["item_factors"], dtype=FLOAT)
        ib = np.asarray(state.arrays["item_bias"], dtype=FLOAT)
        k = model.n_factors
        if uf.shape != (len(model.users), k) or itf.shape != (len(model.items), k) or ib.shape != (len(model.items),):
            raise ValueError("state arrays do not match its id lists")
        # in maps of their own, so that the first new user or item grows them in place (learner.arrays)
        model._p, model._q, model._b = mapped_copy(uf, 0), mapped_copy(itf, 0), mapped_copy(ib, 0)
        return model

    def _user_row(self, user: str) -> int:
        row, new = self.users.add(user)
        if new:
            grow_rows(self, "_p", row)
            self._p[row] = 0.0
        return row

    def _item_row(self, item: str) -> int:
        row, new = self.items.add(item)
        if new:
            grow_rows(self, "_q", row)
            grow_rows(self, "_b", row)
            self._q[row] = self._rng.normal(0.0, self.init_scale, self.n_factors).astype(FLOAT)
            self._b[row] = 0.0
        return row

"""River's own ``reco.BiasedMF`` behind the recommender interface, with its factors mirrored in arrays.

River keeps latent vectors in dicts and ranks by calling ``predict_one`` per item; here every
update River makes is copied into growable numpy arrays, so ranking the catalogue is one
matrix-vector product and a snapshot is a few arrays (River's dicts are rebuilt on load).

River's model is pointwise (squared loss on ``y``) and implicit data has no negatives, so for
every event with a positive weight the adapter also teaches ``negatives`` random catalogue
items with ``y = 0``, like :class:`~learner.implicit_mf.ImplicitMF` does.

>>> m = RiverBiasedMF(n_factors=4, seed=1)
>>> for item in "abcdefgh":
...     m.learn_one("zoe", item, 0.0)         # weight 0: the items are registered, nothing learned
>>> for _ in range(20):
...     m.learn_one("ann", "a", 1.0)
>>> m.predict_one("ann", "a") > m.predict_one("ann", "h")
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import optim, reco

from learner.arrays import grow_rows, mapped_copy
from learner.base import ModelState, expect_kind, restore_rng, rng_state
from learner.id_index import IdIndex


class RiverBiasedMF:
    """``river.reco.BiasedMF`` trained on event weights plus sampled zero-weight negatives."""

    kind = "river_biased_mf"
    reward = "weight"

    def __init__(
        self, n_factors: int = 16, lr: float = 0.05, l2: float = 0.001, negatives: int = 2, seed: int = 42
    ) -> None:
        self.n_factors = int(n_factors)
        self.lr = float(lr)
        self.l2 = float(l2)
        self.negatives = int(negatives)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self.river = reco.BiasedMF(
            n_factors=self.n_factors,
            bias_optimizer=optim.SGD(self.lr),
            latent_optimizer=optim.SGD(self.lr),
            l2_bias=self.l2,
            l2_latent=self.l2,
            seed=self.seed,
        )
        self.users = IdIndex()
        self.items = IdIndex()
        self._uf = np.zeros((0, self.n_factors), dtype=np.float64)
        self._ub = np.zeros(0, dtype=np.float64)
        self._if = np.zeros((0, self.n_factors), dtype=np.float64)
        self._ib = np.zeros(0, dtype=np.float64)

    def learn_one(self, user: str, item: str, y: float) -> None:
        u = self._user_row(user)
        i = self._item_row(item)
        if y <= 0:
            return
        self.river.learn_one(user, item, float(y))
        self._mirror_item(i, item)
        if self.negatives > 0 and len(self.items) > 1:
            ids = self.items.ids
            for j in self._rng.integers(0, len(self.items), size=self.negatives).tolist():
                if j != i:
                    self.river.learn_one(user, ids[j], 0.0)
                    self._mirror_item(j, ids[j])
        self._mirror_user(u, user)

    def predict_one(self, user: str, item: str) -> float:
        u, i = self.users.get(user), self.items.get(item)
        score = self.river.global_mean.get()
        if i is not None:
            score += self._ib[i]
        if u is not None:
            score += self._ub[u]
            if i is not None:
                score += float(self._uf[u] @ self._if[i])
        return float(min(max(score, 0.0), 1.0))

    def knows_user(self, user: str) -> bool:
        return user in self.users

    def score_all(self, user: str) -> np.ndarray:
        n = len(self.items)
        scores = self.river.global_mean.get() + self._ib[:n]
        u = self.users.get(user)
        if u is not None:
            scores = scores + self._ub[u] + self._if[:n] @ self._uf[u]
        return np.asarray(scores, dtype=np.float64)

    def to_state(self) -> ModelState:
        n_users, n_items = len(self.users), len(self.items)
        mean = self.river.global_mean
        return ModelState(
            kind=self.kind,
            params={
                "n_factors": self.n_factors,
                "lr": self.lr,
                "l2": self.l2,
                "negatives": self.negatives,
                "seed": self.seed,
                "rng_state": rng_state(self._rng),  # where negative sampling resumes
            },
            ids={"users": list(self.users.ids), "items": list(self.items.ids)},
            arrays={
                "user_factors": self._uf[:n_users].copy(),
                "user_bias": self._ub[:n_users].copy(),
                "item_factors": self._if[:n_items].copy(),
                "item_bias": self._ib[:n_items].copy(),
                "global_mean": np.array([float(mean.get()), float(mean.n)]),
            },
        )

    @classmethod
    def from_state(cls, state: ModelState) -> RiverBiasedMF:
        expect_kind(state, cls.kind)
        p = state.params
        model = cls(
            n_factors=int(p["n_factors"]),
            lr=float(p["lr"]),
            l2=float(p["l2"]),
            negatives=int(p["negatives"]),
            seed=int(p["seed"]),
        )
        restore_rng(model._rng, p)
        users, items = state.ids["users"], state.ids["items"]
        a = {k: np.asarray(v, dtype=np.float64) for k, v in state.arrays.items()}
        k = model.n_factors
        if (
            a["user_factors"].shape != (len(users), k)
            or a["user_bias"].shape != (len(users),)
            or a["item_factors"].shape != (len(items), k)
            or a["item_bias"].shape != (len(items),)
            or a["global_mean"].shape != (2,)
        ):
            raise ValueError("state arrays do not match its id lists")
        model.users, model.items = IdIndex(users), IdIndex(items)
        # in maps of their own, so that the first new user or item grows them in place (learner.arrays)
        model._uf, model._ub = mapped_copy(a["user_factors"], 0), mapped_copy(a["user_bias"], 0)
        model._if, model._ib = mapped_copy(a["item_factors"], 0), mapped_copy(a["item_bias"], 0)
        river = model.river
        for row, user in enumerate(users):
            river.u_latents[user] = model._uf[row].copy()
            river.u_biases[user] = float(model._ub[row])
        for row, item in enumerate(items):
            river.i_latents[item] = model._if[row].copy()
            river.i_biases[item] = float(model._ib[row])
        river.global_mean._mean, river.global_mean.n = float(a["global_mean"][0]), float(a["global_mean"][1])
        return model

    def forget_users(self, users: Sequence[str]) -> int:
        """Erase ``users``: their factors and biases zeroed, River's entries for them dropped and their ids blanked
        (learner.erasure); how many the model held."""
        rows = self.users.blank(users)
        self._uf[rows] = 0.0
        self._ub[rows] = 0.0
        for user in users:
            self.river.u_latents.pop(user, None)
            self.river.u_biases.pop(user, None)
        return len(rows)

    def _mirror_user(self, row: int, user: str) -> None:
        self._uf[row] = self.river.u_latents[user]
        self._ub[row] = self.river.u_biases[user]

    def _mirror_item(self, row: int, item: str) -> None:
        self._if[row] = self.river.i_latents[item]
        self._ib[row] = self.river.i_biases[item]

    def _user_row(self, user: str) -> int:
        row, new = self.users.add(user)
        if new:
            grow_rows(self, "_uf", row)
            grow_rows(self, "_ub", row)
            # Draw the start vector here rather than letting River's initialiser do it, so a
            # restored model (rng_state included) continues exactly like the original.
            self.river.u_latents[user] = self._rng.normal(0.0, 0.1, self.n_factors)
            self._mirror_user(row, user)
        return row

    def _item_row(self, item: str) -> int:
        row, new = self.items.add(item)
        if new:
            grow_rows(self, "_if", row)
            grow_rows(self, "_ib", row)
            self.river.i_latents[item] = self._rng.normal(0.0, 0.1, self.n_factors)
            self._mirror_item(row, item)
        return row

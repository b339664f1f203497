"""A read-only view of a snapshot for serving: factor arrays, id maps, popularity, top-K.

Built once per model version (never per request). Scores are the model's logits; the
response reports them as probabilities.

>>> from learner.online_learner import OnlineLearner
>>> learner = OnlineLearner()
>>> for item in ("a", "b", "c"):
...     _ = learner.learn("u1", item, "like", None, None)
>>> _ = learner.learn("u2", "a", "like", None, None)
>>> view = ServingModel.from_bytes(learner.to_bytes(), version=1)
>>> rec = view.recommend("u2", k=5, exclude={"a"})
>>> rec.source, sorted(item for item, _ in rec.items)
('model', ['b', 'c'])
>>> view.recommend("nobody", k=1, exclude=set()).source
'popular'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from learner import codec
from learner.id_index import IdIndex
from learner.ranking import scores_for_user, top_k


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]
    source: str  # "model" (personal) or "popular" (user unknown to the model)


class ServingModel:
    """Immutable arrays of one model version, ready for top-K queries."""

    def __init__(
        self,
        version: int,
        users: IdIndex,
        items: IdIndex,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        item_bias: np.ndarray,
        popularity_ids: list[str],
        popularity: np.ndarray,
        events_learned: int,
    ) -> None:
        self.version = version
        self.users = users
        self.items = items
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.item_bias = item_bias
        order = np.argsort(-popularity, kind="stable")
        self.popular_ids = [popularity_ids[i] for i in order]
        self.popular_scores = popularity[order]
        self.events_learned = events_learned

    @classmethod
    def from_bytes(cls, blob: bytes, version: int) -> ServingModel:
        header, arrays = codec.decode(blob)
        return cls(
            version=version,
            users=IdIndex(header["ids"]["users"]),
            items=IdIndex(header["ids"]["items"]),
            user_factors=arrays["user_factors"],
            item_factors=arrays["item_factors"],
            item_bias=arrays["item_bias"],
            popularity_ids=list(header["popularity_ids"]),
            popularity=np.asarray(arrays["popularity"], dtype=np.float64),
            events_learned=int(header["events_learned"]),
        )

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> Recommendation:
        """Top ``k`` items for the user, never one in ``exclude`` (what they already saw)."""
        row = self.users.get(user_id)
        if row is None or not len(self.items):
            return Recommendation(self.popular(k, exclude), source="popular")
        scores = scores_for_user(self.user_factors[row], self.item_factors, self.item_bias)
        best = top_k(scores, k, exclude=self.items.rows(exclude))
        ids = self.items.ids
        return Recommendation([(ids[i], _sigmoid(s)) for i, s in best], source="model")

    def popular(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        total = float(self.popular_scores.sum()) or 1.0
        picked = []
        for item, count in zip(self.popular_ids, self.popular_scores, strict=True):
            if item in exclude:
                continue
            picked.append((item, float(count) / total))
            if len(picked) == k:
                break
        return picked

    def score(self, user_id: str, item_ids: list[str]) -> list[float | None]:
        """Probability of a like for each item (None for items the model has never seen)."""
        u = self.users.get(user_id)
        out: list[float | None] = []
        for item in item_ids:
            i = self.items.get(item)
            if i is None:
                out.append(None)
                continue
            z = float(self.item_bias[i]) + (float(self.user_factors[u] @ self.item_factors[i]) if u is not None else 0.0)
            out.append(_sigmoid(z))
        return out


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

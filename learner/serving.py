"""A model version ready for serving: factor arrays, id maps, popularity, top-K.

Built once per model version (never per request), or brought to the next version by a delta in place
(:meth:`ServingModel.apply_delta`). A personal list carries the model's ranking scores (higher is
better); a popular list carries each item's share of positives.

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

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import numpy as np

from learner import cooccurrence_delta
from learner.base import Recommender
from learner.codec import CodecError
from learner.id_index import GrowingIds, IdIndex
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.ranking import top_k

#: How many more than ``k`` items a ranking takes when some items are hidden (:meth:`ServingModel.recommend`).
HIDDEN_SLACK = 16


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]
    source: str  # "model" (personal) or "popular" (user unknown to the model)


class ServingModel:
    """One model version, decoded once, ready for top-K queries. Treat it as read-only: only :meth:`apply_delta`
    changes it (to the next version), where no request is being answered meanwhile."""

    def __init__(
        self,
        version: int,
        model: Recommender,
        popularity_ids: GrowingIds,
        popularity: np.ndarray,
        events_learned: int,
    ) -> None:
        self.version = version
        self.model = model
        self.events_learned = events_learned
        self._popularity_ids = popularity_ids
        self._popularity = popularity
        # rows of popularity, most popular first (ties: first registered first); sorted on the first popular
        # list asked for, not per version: a large catalogue's sort and id list cost tens of ms a load
        self._popular_order: np.ndarray | None = None
        self._popular_total = float(popularity.sum()) or 1.0
        # ItemCooccurrence.ranking_head of this version, made on the first recommendation asked for
        self._ranking_head: np.ndarray | None = None
        self._half_applied = False  # a delta that failed part-way (see apply_delta): the model is not to be trusted

    @classmethod
    def from_bytes(cls, blob: bytes, version: int) -> ServingModel:
        return cls.from_learner(OnlineLearner.from_bytes(blob), version)

    @classmethod
    def from_parts(cls, header: dict[str, Any], arrays: dict[str, np.ndarray], version: int) -> ServingModel:
        """From a snapshot's decoded parts (``learner.codec.decode``, or a delta applied to its base)."""
        return cls.from_learner(OnlineLearner.from_parts(header, arrays), version)

    @classmethod
    def from_learner(cls, learner: OnlineLearner, version: int) -> ServingModel:
        ids = learner.popularity.items.ids
        return cls(
            version=version,
            model=learner.model,
            # A packed index's ids are kept as they are (a list of them would make a str an item: ~36 MB at 500,000
            # items); apply_delta extends them only by the items they lack, so when popularity counts over the
            # model's own items (which the delta has extended already) that adds nothing. A list (without the
            # kernels) is copied, sharing its str objects: apply_delta appends to the copy.
            popularity_ids=list(ids) if isinstance(ids, list) else ids,
            popularity=learner.popularity.counts.copy(),
            events_learned=learner.events_learned,
        )

    @property
    def takes_deltas(self) -> bool:
        """Whether :meth:`apply_delta` can bring it to a later version (the default model, unless applying one
        failed part-way)."""
        return isinstance(self.model, ItemCooccurrence) and not self._half_applied

    def make_room_for_deltas(self) -> None:
        """Prepare to take deltas (:meth:`apply_delta`): the model's rows laid out in arrays of its own with room
        to grow (~0.2 s and a quarter more memory for the rows at 10M co-occurrence entries; otherwise the
        first delta pays it). Nothing for a model that takes no deltas."""
        if isinstance(self.model, ItemCooccurrence):
            self.model.make_room_for_deltas()

    def apply_delta(self, header: dict[str, Any], arrays: dict[str, np.ndarray], version: int) -> None:
        """Become ``version`` by applying a delta made against the version served (decoded parts, several composed
        if versions were skipped; :mod:`learner.cooccurrence_delta`), in place: what :meth:`from_parts` of the
        whole snapshot would serve, for the cost of what the delta carries. Call it where no request is being
        answered meanwhile (the API's event loop: a request reads the model without awaiting). A delta that does
        not fit raises :class:`~learner.codec.CodecError` and changes nothing."""
        if not isinstance(self.model, ItemCooccurrence):
            raise CodecError(f"a {self.model.kind} model takes no deltas")
        try:
            events_learned = int(header.get("events_learned", self.events_learned))
        except (TypeError, ValueError) as exc:
            raise CodecError(f"delta's events_learned is not a number: {exc}") from exc
        if self._half_applied:
            raise CodecError("a delta failed part-way on this model: it takes no more deltas (load a whole version)")
        self._ranking_head = None  # the rows' priors change
        try:
            popularity = cooccurrence_delta.apply_in_place(self.model, self._popularity, header, arrays)
        except cooccurrence_delta.HalfApplied:
            self._half_applied = True
            raise
        self._popularity_ids.extend(header["ids_added"]["items"])
        self._popularity = popularity
        self._popular_order = None
        self._popular_total = float(popularity.sum()) or 1.0
        self.events_learned = events_learned
        self.version = version

    def id_indexes(self) -> list[IdIndex]:
        """The model's id indexes (users, items; of each part of a blend), for the next version to reuse."""
        found: dict[int, IdIndex] = {}
        for model in (self.model, *getattr(self.model, "models", ())):
            for name in ("users", "items"):
                index = getattr(model, name, None)
                if isinstance(index, IdIndex):
                    found[id(index)] = index
        return list(found.values())

    @property
    def item_index(self) -> IdIndex:
        """The model's item ids and their rows (the rows :meth:`recommend` takes in ``exclude_rows``)."""
        return self.model.items

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude: set[str],
        exclude_rows: np.ndarray | None = None,
        hidden: Set[str] = frozenset(),
    ) -> Recommendation:
        """Top ``k`` items for the user, never one in ``exclude`` (what they already saw) nor in ``hidden`` (what an
        operator took down: the same for every user); ``exclude_rows``: the rows of ``exclude`` in
        :attr:`item_index` if the caller has them already.

        Hidden items are few among any one user's best, however many there are: the best ``k`` +
        :data:`HIDDEN_SLACK` are ranked without the seen ones, and the hidden ones dropped from them (the others keep
        their order, so that is exact while ``k`` are left, or when the catalogue ran out); only when more of them were
        hidden is the ranking done again without every hidden item. Leaving 10,000 hidden items out of each ranking
        instead cost ~9 times the ranking's time at 100,000 items, a table of the excluded rows made per request
        (``python -m bench.hidden``).

        >>> from learner.online_learner import OnlineLearner
        >>> learner = OnlineLearner()
        >>> for user, item in [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a")]:
        ...     _ = learner.learn(user, item, "like", None, None)
        >>> view = ServingModel.from_bytes(learner.to_bytes(), version=1)
        >>> sorted(item for item, _ in view.recommend("u2", k=5, exclude={"a"}, hidden={"b"}).items)
        ['c']
        >>> [item for item, _ in view.recommend("nobody", k=5, exclude=set(), hidden={"a", "c"}).items]
        ['b']
        """
        model = self.model
        if not model.knows_user(user_id) or not len(model.items):
            return Recommendation(self.popular(k, exclude, hidden), source="popular")
        rows = np.fromiter(model.items.rows(exclude), np.int64) if exclude_rows is None else exclude_rows
        ids = model.items.ids
        if hidden:
            wanted = k + min(len(hidden), HIDDEN_SLACK)
            best = self._best(user_id, wanted, rows)
            kept = [(ids[i], s) for i, s in best if ids[i] not in hidden]
            if len(kept) >= k or len(best) < wanted:
                return Recommendation(kept[:k], source="model")
            rows = np.concatenate((rows, np.fromiter(model.items.rows(hidden), np.int64)))
        return Recommendation([(ids[i], s) for i, s in self._best(user_id, k, rows)], source="model")

    def _best(self, user_id: str, k: int, rows: np.ndarray) -> list[tuple[int, float]]:
        """The model's ``k`` best (row, score) pairs for a user it knows, leaving out ``rows``."""
        model = self.model
        best = None
        if isinstance(model, ItemCooccurrence):  # from the user's rows alone, unless that does not settle it
            head = self._ranking_head
            if head is None:
                head = self._ranking_head = model.ranking_head()
            best = model.top(user_id, k, rows, head)
        if best is None:
            best = top_k(model.score_all(user_id), k, exclude=rows, owned=True)
        return best

    def popular(self, k: int, exclude: Set[str], hidden: Set[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``k`` most popular items in neither ``exclude`` nor ``hidden``, each with its share of positives."""
        order = self._popular_order
        if order is None:
            order = self._popular_order = np.argsort(-self._popularity, kind="stable")
        ids, counts, total = self._popularity_ids, self._popularity, self._popular_total
        picked: list[tuple[str, float]] = []
        for row in order:  # stops after k (plus the excluded ones met on the way)
            item = ids[row]
            if item in exclude or item in hidden:
                continue
            picked.append((item, float(counts[row]) / total))
            if len(picked) == k:
                break
        return picked

    def score(self, user_id: str, item_ids: list[str]) -> list[float | None]:
        """The model's prediction of a like for each item (its ``predict_one``: a probability for the factor models,
        ``1 - exp(-evidence)`` for co-occurrence, which saturates at 1, need not order items as the
        recommendation list does, and is 0 for a user the model does not know). None for items not in the model's
        catalogue: never in any event it was given; an item it registered but learned nothing about gets its
        prior."""
        model = self.model
        return [model.predict_one(user_id, item) if item in model.items else None for item in item_ids]

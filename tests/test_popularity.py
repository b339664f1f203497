"""Popularity over its own item index or over the model's, and through snapshots, for every model kind."""

from __future__ import annotations

import numpy as np
import pytest

from learner import codec
from learner.id_index import IdIndex
from learner.implicit_mf import ImplicitMF
from learner.online_learner import OnlineLearner
from learner.popularity import Popularity
from learner.registry import MODELS, build_model
from tests.small_models import small_model

KINDS = sorted(MODELS)


def _events(n_users: int = 8, n_items: int = 30, n: int = 400, seed: int = 0) -> list[tuple[str, str, str, float]]:
    """Views, likes and skips; some items only ever viewed (no label), a few only liked."""
    rng = np.random.default_rng(seed)
    kinds = ["view", "view", "like", "skip"]
    return [
        (f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", kinds[rng.integers(4)], 1_700_000_000.0 + 60 * k)
        for k in range(n)
    ]


def _learn(learner: OnlineLearner, events: list[tuple[str, str, str, float]]) -> OnlineLearner:
    for user, item, kind, ts in events:
        learner.learn(user, item, kind, None, None, ts=ts)
    return learner


def _counts(pop: Popularity) -> dict[str, float]:
    return dict(zip(pop.items.ids, pop.counts.tolist(), strict=True))


def _expected_counts(events: list[tuple[str, str, str, float]]) -> dict[str, float]:
    """Every item seen, in order of first appearance, with its number of likes."""
    counts: dict[str, float] = {}
    for _, item, kind, _ in events:
        counts[item] = counts.get(item, 0.0) + (kind == "like")
    return counts


def test_own_index_counts_positives_and_lists_every_item_seen() -> None:
    pop = Popularity()
    for item, y in [("a", None), ("b", 1.0), ("a", 0.0), ("c", 1.0), ("c", 1.0)]:
        pop.learn_one(item, y)
    assert not pop.shared
    assert _counts(pop) == {"a": 0.0, "b": 1.0, "c": 2.0}
    assert pop.ranked_ids(3) == ["c", "b", "a"]
    assert pop.count("a") == 0.0 and pop.count("zzz") == 0.0


def test_a_shared_index_is_grown_by_its_owner_only() -> None:
    items = IdIndex()
    pop = Popularity(items=items)
    for k in range(100):  # the owner registers more items than popularity has room for
        items.add(f"i{k}")
    pop.learn_one("i90", 1.0)
    assert pop.items is items and pop.shared
    assert len(pop.counts) == len(items) == 100
    assert pop.count("i90") == 1.0 and pop.ranked_ids(1) == ["i90"]
    with pytest.raises(ValueError, match="not in the shared item index"):
        pop.learn_one("stranger", None)
    assert len(items) == 100


def test_from_arrays_shares_only_an_index_with_exactly_its_ids() -> None:
    items = IdIndex(["a", "b"])
    shared = Popularity.from_arrays(["a", "b"], np.array([2.0, 5.0]), items=items)
    assert shared.items is items and shared.ranked_ids(2) == ["b", "a"]
    with pytest.raises(ValueError, match="shared index"):
        Popularity.from_arrays(["b", "a"], np.array([2.0, 5.0]), items=items)
    with pytest.raises(ValueError, match="do not match"):
        Popularity.from_arrays(["a", "b"], np.array([1.0]))


@pytest.mark.parametrize("kind", KINDS)
def test_popularity_shares_the_model_index_of_every_model_kind(kind: str) -> None:
    events = _events()
    learner = _learn(OnlineLearner(model=small_model(kind)), events)
    # weight models register every event's item; the label model (implicit_mf) through register_item
    assert learner.popularity.items is learner.model.items
    # Either way popularity is what it always was: every item seen, in order of first appearance.
    assert _counts(learner.popularity) == _expected_counts(events)
    assert list(_counts(learner.popularity)) == list(_expected_counts(events))


@pytest.mark.parametrize("kind", KINDS)
def test_a_snapshot_round_trip_keeps_popularity_and_its_rows_in_line_with_the_model(kind: str) -> None:
    events = _events()
    learner = _learn(OnlineLearner(model=small_model(kind)), events[:300])
    blob = learner.to_bytes()
    header, _ = codec.decode(blob)
    assert header["popularity_ids"] == learner.popularity.items.ids  # the format is unchanged
    clone = OnlineLearner.from_bytes(blob)
    assert (clone.popularity.items is clone.model.items) == (learner.popularity.items is learner.model.items)
    assert _counts(clone.popularity) == _counts(learner.popularity)
    # Both keep learning the same way, new items included.
    more = [*events[300:], ("u1", "brand-new", "like", 1.8e9), ("u2", "viewed-only", "view", 1.9e9)]
    _learn(learner, more)
    _learn(clone, more)
    assert list(_counts(clone.popularity).items()) == list(_counts(learner.popularity).items())
    assert clone.popularity.ranked_ids(10) == learner.popularity.ranked_ids(10)
    model_rows = {item: clone.model.items.get(item) for item in clone.popularity.items.ids}
    if clone.popularity.items is clone.model.items:
        assert all(row == k for k, row in enumerate(model_rows.values()))
    elif isinstance(clone.model.items.ids, list):  # own index (no kernels): the items' strings are the model's
        for k, item in enumerate(clone.popularity.items.ids[:300]):
            row = model_rows[item]
            if row is not None:
                assert item is clone.model.items.ids[row], f"popularity row {k} keeps its own copy of {item!r}"


def test_an_older_snapshot_whose_popularity_order_differs_still_loads_as_it_was_written() -> None:
    """Popularity ids that are not the model's list (reordered here) keep their own index."""
    learner = _learn(OnlineLearner(model=build_model("item_cooccurrence")), _events())
    header, arrays = codec.decode(learner.to_bytes())
    order = np.arange(len(header["popularity_ids"]))[::-1]
    header["popularity_ids"] = [header["popularity_ids"][k] for k in order]
    arrays = {**arrays, "popularity": arrays["popularity"][order]}
    clone = OnlineLearner.from_bytes(codec.encode(header, arrays))
    assert clone.popularity.items is not clone.model.items
    assert clone.popularity.items.ids == header["popularity_ids"]
    assert _counts(clone.popularity) == _counts(learner.popularity)
    clone.learn("u1", "brand-new", "like", None, None)
    assert clone.popularity.count("brand-new") == 1.0


def test_a_label_model_without_register_item_keeps_popularitys_own_index_of_every_item_seen() -> None:
    class NoRegister(ImplicitMF):
        register_item = None  # a label model that cannot register the items of unlabelled events

    events = [*_events(), ("u1", "viewed-only", "view", 1.9e9)]
    learner = _learn(OnlineLearner(model=NoRegister(n_factors=4)), events)
    assert learner.popularity.items is not learner.model.items
    assert len(learner.popularity.items) > len(learner.model.items)  # the plain views' items too
    assert list(_counts(learner.popularity)) == list(_expected_counts(events))

"""Every recommender in the registry: state round trips, serving, cold start, and the hand-checkable maths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.arrays import map_of
from learner.base import ModelState, Recommender, is_personal, reward_of
from learner.blend import Blend
from learner.event_weights import EventWeights
from learner.implicit_mf import ImplicitMF
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.popularity_models import DAY_SECONDS, AllTimePopularity, DecayedPopularity
from learner.registry import DEFAULT_MODEL, MODELS, build_model, model_from_state
from learner.serving import ServingModel
from tests.small_models import small_model

KINDS = sorted(MODELS)


def _model(kind: str) -> Recommender:
    return small_model(kind)


def _taste_stream(seed: int = 0, users: int = 12, rounds: int = 6) -> list[tuple[str, str, str, float]]:
    """Two taste groups (a*, b*) that view and like within their group, one event a minute."""
    rng = np.random.default_rng(seed)
    events = []
    t = 1_700_000_000.0
    for _ in range(rounds):
        for u in range(users):
            group = "a" if u % 2 == 0 else "b"
            item = f"{group}{int(rng.integers(0, 8))}"
            for kind in ("view", "like") if rng.random() < 0.7 else ("view",):
                events.append((f"{group}-user{u}", item, kind, t))
            t += 60.0
    return events


def _learned(kind: str, events: list[tuple[str, str, str, float]] | None = None) -> OnlineLearner:
    learner = OnlineLearner(model=_model(kind))
    for user, item, event_type, ts in events if events is not None else _taste_stream():
        learner.learn(user, item, event_type, None, None, ts=ts)
    return learner


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_follows_the_protocol_and_scores_every_item(kind: str) -> None:
    learner = _learned(kind)
    model = learner.model
    assert isinstance(model, Recommender)
    assert reward_of(model) in ("label", "weight")
    scores = model.score_all("a-user0")
    assert scores.shape == (len(model.items),)
    assert np.all(np.isfinite(scores))
    assert 0.0 <= model.predict_one("a-user0", "a1") <= 1.0
    # score_all's array is the caller's (ranking masks seen items in it): writing to it changes nothing in the model
    for user in ("a-user0", "nobody"):
        before = model.score_all(user).copy()
        model.score_all(user)[:] = -np.inf
        np.testing.assert_array_equal(model.score_all(user), before)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_keeps_scores_and_continues_identically(kind: str) -> None:
    events = _taste_stream(seed=3)
    head, tail = events[: len(events) // 2], events[len(events) // 2 :]
    original = _learned(kind, head)
    state = original.model.to_state()
    restored = model_from_state(ModelState(state.kind, dict(state.params), dict(state.ids), dict(state.arrays)))
    for user in ("a-user0", "b-user1", "nobody"):
        np.testing.assert_allclose(restored.score_all(user), original.model.score_all(user), rtol=1e-6)
    assert restored.items.ids == original.model.items.ids

    # A restored model must learn on exactly like the original (checkpoint, crash, resume).
    clone = OnlineLearner.from_bytes(original.to_bytes())
    for user, item, event_type, ts in tail:
        original.learn(user, item, event_type, None, None, ts=ts)
        clone.learn(user, item, event_type, None, None, ts=ts)
    for user in ("a-user0", "b-user1", "a-user4"):
        np.testing.assert_allclose(clone.model.score_all(user), original.model.score_all(user), rtol=1e-5, atol=1e-7)
    assert clone.clock == original.clock == tail[-1][3]


@pytest.mark.parametrize("kind", KINDS)
def test_serving_view_excludes_seen_items_and_serves_new_users_popular_items(kind: str) -> None:
    learner = _learned(kind)
    view = ServingModel.from_bytes(learner.to_bytes(), version=1)
    seen = {"a1", "a2", "a3"}
    rec = view.recommend("a-user0", k=20, exclude=seen)
    assert rec.items and not seen & {item for item, _ in rec.items}

    # A brand-new user gets the most popular items, whichever path (fallback or model) serves them.
    fresh = view.recommend("someone-new", k=3, exclude=set())
    counts = learner.popularity.counts
    most_liked = {learner.popularity.items.ids[i] for i in np.argsort(-counts, kind="stable")[:3]}
    if is_personal(learner.model):
        assert fresh.source == "popular"
        assert {item for item, _ in fresh.items} == most_liked
    else:
        assert fresh.source == "model"
        # Non-personal models rank by their own (weighted) popularity; the top item is the same here.
        assert fresh.items[0][0] in most_liked


# Not all-time popularity: four likes cannot outweigh years of counts, which is exactly its known weakness.
@pytest.mark.parametrize("kind", ["item_cooccurrence", "blend", "decayed_popularity"])
def test_a_brand_new_item_is_recommended_right_after_it_is_liked(kind: str) -> None:
    learner = _learned(kind)
    # Several people go from a1 to the brand-new item; then someone takes a1.
    for n in range(4):
        learner.learn(f"fan{n}", "a1", "like", None, None, ts=1.8e9 + n)
        learner.learn(f"fan{n}", "brand-new", "like", None, None, ts=1.8e9 + n + 0.5)
    learner.learn("newcomer", "a1", "like", None, None, ts=1.9e9)
    rec = ServingModel.from_bytes(learner.to_bytes(), version=2).recommend("newcomer", k=5, exclude={"a1"})
    assert "brand-new" in [item for item, _ in rec.items]


def test_label_models_still_learn_only_labelled_events_and_weight_models_learn_views() -> None:
    labelled = OnlineLearner(model=ImplicitMF(n_factors=4))
    labelled.learn("u", "seen-only", "view", None, None, ts=1.0)
    model = labelled.model
    # plain view: no label, nothing learned; the item is registered (part of the catalogue) all the same
    assert not model.knows_user("u") and labelled.events_labelled == 0
    row = model.items.get("seen-only")
    assert row is not None and model.item_bias[row] == 0.0
    for n in range(20):
        labelled.learn(f"fan{n}", "liked", "like", None, None, ts=2.0 + n)
    # a known user's ranking can reach it (a label model no longer ranks only items with a label)
    rec = ServingModel.from_bytes(labelled.to_bytes(), version=1).recommend("fan0", k=5, exclude={"liked"})
    assert "seen-only" in [item for item, _ in rec.items]
    weighted = OnlineLearner(model=ItemCooccurrence())
    weighted.learn("u", "seen-only", "view", None, None, ts=1.0)
    assert "seen-only" in weighted.model.items and weighted.model.knows_user("u")


def test_event_weights_scale_views_by_the_fraction_watched() -> None:
    w = EventWeights(like=2.0, share=3.0, view=0.8, skip=0.0)
    assert w.weight("like", None, None) == 2.0
    assert w.weight("share", None, None) == 3.0
    assert w.weight("view", 30.0, 120.0) == pytest.approx(0.2)  # a quarter watched
    assert w.weight("view", 500.0, 120.0) == pytest.approx(0.8)  # capped at the full weight
    assert w.weight("skip", None, None) == 0.0


def test_decayed_popularity_halves_every_half_life_of_stream_time() -> None:
    pop = DecayedPopularity(half_life_days=2.0)
    pop.advance_clock(0.0)
    for _ in range(3):
        pop.learn_one("u", "old", 1.0)  # 3 at t=0
    pop.advance_clock(4 * DAY_SECONDS)  # two half-lives: "old" is worth 3/4 now
    pop.learn_one("u", "new", 1.0)
    scores = pop.score_all("anyone")
    old, new = scores[pop.items.get("old")], scores[pop.items.get("new")]
    assert new / old == pytest.approx(1.0 / 0.75)
    assert pop.predict_one("u", "new") == pytest.approx(1.0 / 1.75)


def test_decayed_popularity_survives_centuries_of_stream_time_without_overflow() -> None:
    pop = DecayedPopularity(half_life_days=1.0)
    pop.advance_clock(0.0)
    pop.learn_one("u", "a", 1.0)
    for day in range(1, 400, 7):  # 57 steps past the rescale threshold of 60 half-lives
        pop.advance_clock(day * DAY_SECONDS)
        pop.learn_one("u", "b", 1.0)
    scores = pop.score_all("anyone")
    assert np.all(np.isfinite(scores)) and scores[pop.items.get("b")] > 0
    assert scores[pop.items.get("a")] == pytest.approx(0.0, abs=1e-30)  # 2**-393 of b's last event


def test_all_time_popularity_never_decays() -> None:
    pop = AllTimePopularity()
    pop.advance_clock(0.0)
    pop.learn_one("u", "a", 2.0)
    pop.advance_clock(1e9)
    pop.learn_one("u", "b", 1.0)
    scores = pop.score_all("x")
    assert scores[pop.items.get("a")] == 2.0 and scores[pop.items.get("b")] == 1.0


def test_cooccurrence_counts_and_scores_match_a_hand_computation() -> None:
    # window 3, distance decay gamma 0.5, backward pairs count half, no damping, no prior.
    m = ItemCooccurrence(window=3, gamma=0.5, recency=0.5, alpha=0.0, beta=0.0, backward=0.5, popularity_weight=0.0)
    for item in "abc":
        m.learn_one("u", item, 1.0)
    # b after a: C[a,b] += 1, C[b,a] += 0.5.  c after b (distance 1): C[b,c] += 1, C[c,b] += 0.5;
    # c after a (distance 2, x0.5): C[a,c] += 0.5, C[c,a] += 0.25.
    m.learn_one("v", "b", 1.0)
    scores = dict(zip(m.items.ids, m.score_all("v"), strict=True))  # v's history is b alone: row b
    assert scores == pytest.approx({"a": 0.5, "b": 0.0, "c": 1.0})
    m.learn_one("w", "c", 1.0)
    m.learn_one("w", "a", 2.0)  # w: c then a (weight 2); a is the most recent, c one step older
    # a pairs with c: C[c,a] += 2 * 1 -> 2.25; C[a,c] += 0.5 * 2 -> 1.5.
    # Score = a's row x 2 (weight) + c's row x 1 x recency 0.5:
    #   b: 2*C[a,b] + 0.5*C[c,b] = 2*1 + 0.5*0.5 = 2.25;  c: 2*C[a,c] = 3;  a: 0.5*C[c,a] = 1.125
    scores = dict(zip(m.items.ids, m.score_all("w"), strict=True))
    assert scores == pytest.approx({"a": 1.125, "b": 2.25, "c": 3.0})
    assert m.predict_one("w", "c") == pytest.approx(1.0 - math.exp(-3.0))


def test_cooccurrence_forgets_items_that_left_the_window() -> None:
    m = ItemCooccurrence(window=2, gamma=1.0, alpha=0.0, beta=0.0, popularity_weight=0.0)
    for item in "abcd":
        m.learn_one("u", item, 1.0)
    m.learn_one("v", "a", 1.0)
    scores = dict(zip(m.items.ids, m.score_all("v"), strict=True))
    assert scores["b"] == 1.0 and scores["c"] == 1.0  # a was still in the window for b and c
    assert scores["d"] == 0.0  # a had left u's window when d came


def test_a_like_right_after_its_view_pairs_like_a_separate_event() -> None:
    """The repeat fast path (same user and item twice in a row) must count what the slow path counts."""
    fast, slow = ItemCooccurrence(popularity_weight=0.0), ItemCooccurrence(popularity_weight=0.0)
    for model, interleave in ((fast, False), (slow, True)):
        for item in ("x", "y", "z"):
            model.learn_one("u", item, 1.0)
        model.learn_one("u", "new", 0.3)
        if interleave:  # breaks the repeat cache without touching u's history
            model.learn_one("other", "zzz", 1.0)
        model.learn_one("u", "new", 1.0)
    model_items = fast.items.ids
    assert slow.items.ids[: len(model_items)] == model_items
    for probe in ("x", "y", "z", "new"):
        fast.learn_one(f"probe-{probe}", probe, 1.0)
        slow.learn_one(f"probe-{probe}", probe, 1.0)
        n = len(model_items)
        np.testing.assert_allclose(fast.score_all(f"probe-{probe}")[:n], slow.score_all(f"probe-{probe}")[:n])


def test_cooccurrence_rejects_a_state_whose_arrays_do_not_match() -> None:
    state = _learned("item_cooccurrence").model.to_state()
    state.arrays["history_items"] = state.arrays["history_items"][:-1]
    with pytest.raises(ValueError, match="history"):
        ItemCooccurrence.from_state(state)


def test_blend_adds_normalised_parts_and_refuses_label_models() -> None:
    blend = Blend([{"kind": "popularity", "weight": 1.0}, {"kind": "decayed_popularity", "weight": 0.5}])
    blend.advance_clock(0.0)
    for item, n in (("a", 4), ("b", 2)):
        for _ in range(n):
            blend.learn_one("u", item, 1.0)
    blend.advance_clock(365 * DAY_SECONDS)  # one half-life for the decayed part
    blend.learn_one("u", "c", 3.0)
    # all-time: a 4, b 2, c 3 -> /4;  decayed (units of "now"): a 2, b 1, c 3 -> /3, x0.5
    expected = {"a": 1.0 + 0.5 * 2 / 3, "b": 0.5 + 0.5 * 1 / 3, "c": 0.75 + 0.5}
    assert dict(zip(blend.items.ids, blend.score_all("anyone"), strict=True)) == pytest.approx(expected)
    assert blend.knows_user("anyone")  # no personal part: it ranks for everyone
    with pytest.raises(ValueError, match="labels"):
        Blend([{"kind": "implicit_mf"}])


def test_the_default_model_is_registered_and_learns_from_weights() -> None:
    model = build_model(DEFAULT_MODEL)
    assert reward_of(model) == "weight" and hasattr(model, "advance_clock")


def _row_maps(obj: object, path: str = "model", depth: int = 3) -> dict[str, object]:
    """The arrays of ``obj`` (and of the learner objects it holds, ``depth`` deep) that are whole memory maps
    (learner.arrays), by where they are: {path: its map}."""
    found: dict[str, object] = {}
    values = vars(obj).items() if hasattr(obj, "__dict__") else ()
    for name, value in values:
        if isinstance(value, np.ndarray):
            memory = map_of(value)
            if memory is not None:
                found[f"{path}.{name}"] = memory
        elif depth and type(value).__module__.startswith("learner."):
            found.update(_row_maps(value, f"{path}.{name}", depth - 1))
        elif depth and isinstance(value, list | tuple):
            for k, part in enumerate(value):
                if type(part).__module__.startswith("learner."):
                    found.update(_row_maps(part, f"{path}.{name}[{k}]", depth - 1))
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_per_user_and_per_item_arrays_grow_in_place_as_ids_come(kind: str) -> None:
    """Nothing holds a view of a model's row arrays while they grow (learner.arrays.grow_rows): learned from,
    and after a restore, each one stays the memory map it was, grown, and is not copied into a new one."""

    def learn_new_ids(learner: OnlineLearner, start: int, n: int) -> None:
        for k in range(start, start + n):
            learner.learn(f"user-{k}", f"item-{k}", "like", None, None, ts=1_700_000_000.0 + k)

    learner = OnlineLearner(model=_model(kind))
    learn_new_ids(learner, 0, 40)
    restored = OnlineLearner.from_bytes(learner.to_bytes())
    learned_maps = set()
    for current in (learner, restored):
        before = _row_maps(current, "learner", 4)
        if current is learner:
            # the co-occurrence pool is laid out into new maps after a load (tests/test_sparse_rows.py)
            learned_maps = {path for path in before if "._rows." not in path}
        else:
            assert learned_maps <= set(before), f"loaded as plain arrays: {sorted(learned_maps - set(before))}"
        sizes = {path: len(memory) for path, memory in before.items()}
        learn_new_ids(current, 40, 300)
        after = _row_maps(current, "learner", 4)
        copied = sorted(path for path, memory in before.items() if after.get(path) is not memory)
        assert not copied, f"copied instead of grown in place: {copied}"
        assert all(len(after[path]) > size for path, size in sizes.items())
    assert "learner.popularity._counts" in before, "the learner's popularity counts are a memory map"
    if kind in ("implicit_mf", "bpr", "river_biased_mf", "item_cooccurrence", "decayed_popularity", "blend"):
        assert any(path.startswith("learner.model.") for path in before), f"{kind} keeps its rows in memory maps"

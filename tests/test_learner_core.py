"""The worker's learner and the API's serving view, on plain data (no broker, no Redis)."""

from __future__ import annotations

import numpy as np
import pytest

from learner import codec, kernels, ranking
from learner.implicit_mf import ImplicitMF
from learner.online_learner import OnlineLearner
from learner.ranking import top_k
from learner.serving import ServingModel
from learner.target import TargetRule
from tests.conftest import skip_unless_ci
from tests.taste_stream import GROUP_A, GROUP_B, taste_events


def _learned(events: list[dict], learner: OnlineLearner | None = None) -> OnlineLearner:
    learner = learner or OnlineLearner()
    for e in events:
        learner.learn(e["user_id"], e["item_id"], e["type"], e.get("watch_seconds"), e.get("item_duration_seconds"))
    return learner


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_new_user_gets_the_taste_of_similar_users(seed: int) -> None:
    learner = _learned(taste_events(seed=seed))
    for item in GROUP_A[:3]:
        learner.learn("target", item, "like", None, None)
    view = ServingModel.from_bytes(learner.to_bytes(), version=1)
    rec = view.recommend("target", k=10, exclude=set(GROUP_A[:3]))
    assert rec.source == "model"
    assert sum(item in GROUP_A for item, _ in rec.items) >= 7, rec.items
    scores = view.score("target", GROUP_A[3:] + GROUP_B)
    assert np.mean(scores[:17]) > np.mean(scores[17:])


def test_predictions_are_made_before_learning_and_only_for_labelled_events() -> None:
    learner = OnlineLearner()
    assert learner.learn("u", "v", "like", None, None) == pytest.approx(0.5)  # nothing known yet
    assert learner.learn("u", "w", "view", 20.0, 30.0) is None  # a long view has no label
    assert learner.learn("u", "x", "view", 2.0, 30.0) is not None  # a short view is a negative
    assert (learner.events_learned, learner.events_labelled, learner.metrics.count) == (3, 2, 2)
    second = learner.learn("u", "v", "like", None, None)
    assert second is not None and second > 0.5  # it learned from the first like


def test_target_rule_is_configurable() -> None:
    rule = TargetRule(positive_types=frozenset({"share"}), negative_types=frozenset(), short_watch_fraction=0.5)
    assert rule.label("like", None, None) is None
    assert rule.label("share", None, None) == 1.0
    assert rule.label("view", 10.0, 30.0) == 0.0
    assert rule.label("skip", None, None) is None


def test_snapshot_round_trip_keeps_predictions_and_counts() -> None:
    learner = _learned(taste_events(seed=1, users_per_group=10))
    clone = OnlineLearner.from_bytes(learner.to_bytes())
    assert clone.events_learned == learner.events_learned
    for user, item in [("A000", "a01"), ("B003", "a05"), ("A001", "b07")]:
        assert clone.model.predict_one(user, item) == pytest.approx(learner.model.predict_one(user, item))
    assert clone.popularity.ranked_ids(5) == learner.popularity.ranked_ids(5)
    # The clone keeps learning exactly like the original.
    learner.learn("A000", "a02", "like", None, None)
    clone.learn("A000", "a02", "like", None, None)
    assert clone.model.predict_one("A000", "a02") == pytest.approx(learner.model.predict_one("A000", "a02"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-3],
        lambda b: b"XXXX" + b[4:],
        lambda b: b + b"\x00",
        lambda b: b.replace(b'"<f4"', b'"|O"', 1),
    ],
    ids=["truncated", "bad-magic", "trailing", "object-dtype"],
)
def test_codec_refuses_damaged_snapshots(damage) -> None:
    blob = OnlineLearner().to_bytes()
    with pytest.raises(codec.CodecError):
        codec.decode(damage(blob))


@pytest.fixture(params=["compiled", "numpy"])
def ranking_path(request: pytest.FixtureRequest):
    """Each top-K test runs twice: with the compiled loop (learner/_kernels.c) and with numpy alone."""
    if request.param == "numpy":
        with kernels.numpy_only():
            yield "numpy"
        return
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built (no C compiler at install time)")
    yield "compiled"


@pytest.mark.usefixtures("ranking_path")
def test_top_k_excludes_and_orders() -> None:
    scores = np.array([0.3, 0.9, 0.1, 0.8, 0.5])
    assert [row for row, _ in top_k(scores, 3, exclude=[1])] == [3, 4, 0]
    assert [row for row, _ in top_k(scores, 10, exclude=[0, 1, 2])] == [3, 4]
    assert top_k(scores, 3, exclude=range(5)) == []


@pytest.mark.usefixtures("ranking_path")
def test_top_k_matches_a_full_sort_with_ties_and_exclusions() -> None:
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(1, 400))
        scores = np.round(rng.normal(size=n), 1)  # rounding makes ties common
        exclude = [int(r) for r in rng.integers(0, n, size=int(rng.integers(0, n + 1)))]
        k = int(rng.integers(1, 30))
        given = scores.copy()
        got = top_k(scores, k, exclude=exclude)
        assert np.array_equal(scores, given), trial  # not owned: the caller's array is left as it was
        allowed = sorted((float(scores[r]) for r in range(n) if r not in set(exclude)), reverse=True)
        assert [s for _, s in got] == allowed[:k], trial
        assert [r for r, _ in got] == _reference_top_k(scores, k, exclude), trial  # equal scores: lower row first
        rows = [r for r, _ in got]
        assert len(set(rows)) == len(rows) and not set(rows) & set(exclude)
        assert all(float(scores[r]) == s for r, s in got)
        # owned: the same answer, the excluded rows set to -inf in the caller's array and the others left as they were
        owned = scores.copy()
        assert top_k(owned, k, exclude=exclude, owned=True) == got, trial
        masked = np.zeros(n, dtype=bool)
        masked[exclude] = True
        assert np.all(owned[masked] == -np.inf) and np.array_equal(owned[~masked], scores[~masked]), trial


def _reference_top_k(scores: np.ndarray, k: int, exclude: list[int]) -> list[int]:
    """Rows by score descending, equal scores lower row first, NaN last: a full sort."""
    rows = [r for r in range(scores.size) if r not in set(exclude)]
    numbers = sorted((r for r in rows if not np.isnan(scores[r])), key=lambda r: (-scores[r], r))
    return (numbers + [r for r in rows if np.isnan(scores[r])])[:k]


@pytest.mark.parametrize(
    "shape", ["random", "ties", "all_equal", "few_best", "few_nan", "nan", "minus_inf", "small_with_nan"]
)
def test_top_k_is_the_exact_full_sort(shape: str, ranking_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From 8,192 scores on, top_k takes a threshold from a sample first: same rows, same order."""
    sampled = []  # how many times the sampled threshold gave the candidates
    real = ranking._at_or_above_sampled_threshold

    def counted(scores: np.ndarray, k: int) -> np.ndarray | None:
        rows = real(scores, k)
        sampled.append(rows is not None)
        return rows

    monkeypatch.setattr(ranking, "_at_or_above_sampled_threshold", counted)
    rng = np.random.default_rng(11)
    for trial in range(8):
        n = int(rng.integers(8_192, 40_000)) if shape != "small_with_nan" else int(rng.integers(5, 300))
        scores = {
            "random": rng.random(n) * rng.random(n),
            "ties": np.round(rng.normal(size=n), 1),
            "all_equal": np.full(n, 0.25),
            "few_best": np.where(rng.random(n) < 0.0005, 1.0, 0.0),  # fewer best than k, then a sea of ties
            "few_nan": np.where(np.arange(n) % 997 == 0, np.nan, np.round(rng.random(n), 2)),  # some in the sample
            "nan": np.where(rng.random(n) < 0.3, np.nan, rng.random(n)),
            "minus_inf": np.where(rng.random(n) < 0.999, -np.inf, rng.random(n)),
            "small_with_nan": np.where(rng.random(n) < 0.7, np.nan, rng.random(n)),  # fewer numbers than k
        }[shape]
        exclude = [int(r) for r in rng.integers(0, n, size=int(rng.integers(0, min(n, 200))))]
        if trial % 3 == 0:  # exclusions among the sample's best: no usable sampled threshold
            exclude += [int(r) for r in np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")[:300]]
        k = int(rng.integers(1, 60))
        got = top_k(scores, k, exclude=exclude)
        want = _reference_top_k(scores, k, exclude)
        assert [r for r, _ in got] == want, (shape, trial)
        assert all(s == scores[r] or (np.isnan(s) and np.isnan(scores[r])) for r, s in got)
    if shape in ("random", "ties", "few_nan") and ranking_path == "numpy":
        assert any(sampled), "the sampled threshold was never used"


@pytest.mark.usefixtures("ranking_path")
def test_top_k_with_nan_among_the_sampled_scores_still_returns_k() -> None:
    """NaN in the sample must not lift the threshold above the k-th best number (a review found it did)."""
    scores = np.zeros(8_192)
    scores[[0, 8, 16]] = np.nan  # in the evenly spaced sample
    scores[24:80:8] = 1.0  # 7 ones, also in the sample
    assert [r for r, _ in top_k(scores, 10)] == [24, 32, 40, 48, 56, 64, 72, 1, 2, 3]
    assert top_k(np.array([np.nan, np.nan, np.nan, 0.5]), 2, exclude=[3]) == [
        (0, pytest.approx(np.nan, nan_ok=True)),
        (1, pytest.approx(np.nan, nan_ok=True)),
    ]


def test_seen_items_are_never_recommended_and_strangers_get_popular_items() -> None:
    learner = OnlineLearner(model=ImplicitMF(seed=3))
    for user, item in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "a"), ("u3", "c")]:
        learner.learn(user, item, "like", None, None)
    view = ServingModel.from_bytes(learner.to_bytes(), version=7)
    rec = view.recommend("u1", k=10, exclude={"a", "b"})
    assert [item for item, _ in rec.items] == ["c"]
    stranger = view.recommend("nobody", k=2, exclude=set())
    assert stranger.source == "popular"
    assert [item for item, _ in stranger.items] == ["a", "b"]  # a: 3 likes; b, c: 1 (first seen first)
    assert stranger.items[0][1] == pytest.approx(3 / 5)  # each item's share of the 5 likes
    assert view.popular(k=5, exclude={"a"}) == [("b", pytest.approx(1 / 5)), ("c", pytest.approx(1 / 5))]


def test_a_new_item_can_be_recommended_once_liked() -> None:
    def ranked_for_a003(reaction: str) -> list[str]:
        """A003's ranking of every item after three users of A003's taste group react to a new item."""
        learner = _learned(taste_events(seed=2, users_per_group=20))
        for user in ("A000", "A001", "A002"):
            learner.learn(user, "brand-new", reaction, None, None)
        view = ServingModel.from_bytes(learner.to_bytes(), version=1)
        assert "brand-new" in view.model.items
        ranked = [item for item, _ in view.recommend("A003", k=len(view.model.items), exclude=set()).items]
        assert "brand-new" in ranked
        return ranked

    liked, skipped = ranked_for_a003("like"), ranked_for_a003("skip")
    # Every item is ranked, so what matters is where. The control is the same stream in which
    # the same users skip the new item: the likes, not its newness, must carry it up (a new item
    # the model learned nothing about sits near the top too, untrained factors score ~0 and
    # every trained item is pushed below 0 by negative sampling).
    assert liked.index("brand-new") < skipped.index("brand-new"), (liked, skipped)
    assert "brand-new" in liked[:3], liked

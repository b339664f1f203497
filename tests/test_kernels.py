"""The compiled ranking loops (learner/_kernels.c) give numpy's numbers, bit for bit, wherever they stand in."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from learner import codec, kernels
from learner import cooccurrence_delta as delta
from learner.evaluation import ReplayEvent, replay
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.ranking import top_k, top_rows
from learner.serving import ServingModel
from tests.conftest import skip_unless_ci

KINDS = ["view", "view", "like", "share", "skip"]


@pytest.fixture(params=["vector", "scalar"])
def loops(request: pytest.FixtureRequest, built: object) -> Iterator[object]:
    """The catalogue passes four scores at a time (AVX2, where the processor has it) and one at a time: the tests
    that use this fixture run once with each, against numpy."""
    try:
        was = built.vector_loops(request.param == "vector")  # type: ignore[attr-defined]
    except ValueError as exc:  # no AVX2 here: only the scalar loops exist
        pytest.skip(str(exc))
    assert built.vector_loops() is (request.param == "vector")  # type: ignore[attr-defined]
    yield built
    built.vector_loops(was)  # type: ignore[attr-defined]


def test_the_vector_loops_are_on_where_the_processor_has_avx2(built: object) -> None:
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to read the processor's flags from (not Linux)")
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    assert built.vector_loops() is ("avx2" in flags)  # type: ignore[attr-defined]
    if "avx2" in flags:  # off, then on again: each call answers what was used before it
        assert built.vector_loops(False) is True and built.vector_loops(True) is False  # type: ignore[attr-defined]
        assert built.vector_loops() is True  # type: ignore[attr-defined]
    else:
        with pytest.raises(ValueError):  # nothing to switch on
            built.vector_loops(True)  # type: ignore[attr-defined]


def _feed(learner: OnlineLearner, rnd: random.Random, n: int, users: int, items: int, ts: float) -> float:
    for _ in range(n):
        ts += rnd.expovariate(0.5)
        watch = rnd.choice([None, 3.0, 25.0])
        learner.learn(f"u{rnd.randrange(users)}", f"v{rnd.randrange(items)}", rnd.choice(KINDS), watch, 30.0, ts)
    return ts


def _both(score) -> tuple[np.ndarray, np.ndarray]:
    with kernels.numpy_only():
        want = score()
    return want, score()


def _assert_same_scores(model: ItemCooccurrence, users: list[str]) -> None:
    for user in users:
        want, got = _both(lambda user=user: model.score_all(user))
        assert got.dtype == want.dtype and got.shape == want.shape, user
        assert got.tobytes() == want.tobytes(), user  # bit for bit (-0.0 and 0.0 too)


@pytest.mark.usefixtures("loops")
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"popularity_weight": 0.0},
        {"window": 1, "recency": 1.0},
        {"window": 7, "alpha": 0.0, "beta": 0.9},
        {"neighbours": 5},
    ],
    ids=["default", "no-prior", "window-1", "other-damping", "five-neighbours"],
)
def test_scores_are_numpys_bit_for_bit_learned_loaded_and_after_deltas(built: object, params: dict) -> None:
    assert built is not None
    rnd = random.Random(7)
    learner = OnlineLearner(model=ItemCooccurrence(**params))
    ts = _feed(learner, rnd, 2_500, users=60, items=140, ts=1.7e9)
    model = learner.model
    users = [*model.users.ids, "nobody"]
    _assert_same_scores(model, users)  # rows of the model's own (array.array buffers)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    _assert_same_scores(served.model, users)  # rows still slices of the loaded arrays (numpy buffers)
    delta.mark(learner)
    for version in (2, 3):  # rows moved in the pool by deltas applied in place
        ts = _feed(learner, rnd, 600, users=90, items=200, ts=ts)
        made = delta.parts(learner, base_version=version - 1)
        assert made is not None
        served.apply_delta(*delta.resolve_delta([(version - 1, codec.encode(*made))]), version)
        delta.mark(learner)
        _assert_same_scores(served.model, [*served.model.users.ids, "nobody"])


def test_a_user_without_history_and_an_empty_catalogue_score_as_with_numpy(built: object) -> None:
    assert built is not None
    empty = ItemCooccurrence()
    assert _both(lambda: empty.score_all("anyone"))[1].size == 0
    unlearned = ItemCooccurrence()
    unlearned.learn_one("u1", "a", 0.0)  # ids registered, nothing learned: no evidence, and no prior at all
    unlearned.learn_one("u1", "b", 0.0)
    model = ItemCooccurrence()
    model.learn_one("u1", "a", 0.0)
    model.learn_one("u2", "b", 1.0)
    for m in (unlearned, model):
        for user in ("u1", "u2", "nobody"):
            want, got = _both(lambda m=m, user=user: m.score_all(user))
            assert got.size == 2 and got.tobytes() == want.tobytes()
    assert unlearned.score_all("u1").tolist() == [0.0, 0.0]


@pytest.mark.usefixtures("loops")
def test_nan_and_negative_damping_or_mass_give_numpys_numbers(built: object) -> None:
    """Values no healthy model holds, so that NaN's max, -0.0 and the zeros of a user without evidence are checked."""
    assert built is not None
    for popularity_weight in (0.05, 0.0):
        learner = OnlineLearner(model=ItemCooccurrence(popularity_weight=popularity_weight))
        _feed(learner, random.Random(9), 800, users=30, items=50, ts=1.7e9)
        model = learner.model
        users = [*model.users.ids, "nobody"]
        model._candidate_damping[3] = np.nan  # NaN where a user's rows reach item 3: numpy's maximum is then NaN
        model.learn_one("loner", "unpaired", 0.0)  # an item no row reaches
        model._candidate_damping[model.items.get("unpaired")] = -0.5  # so -0.0 there (where no prior is added)
        with kernels.numpy_only():
            scores = [model.score_all(user) for user in users]
        assert any(np.isnan(s[3]) for s in scores)
        if not popularity_weight:
            assert any(s[-1] == 0 and np.signbit(s[-1]) for s in scores)
        _assert_same_scores(model, users)
        model._recent.mass[7] = np.nan
        _assert_same_scores(model, users)


@pytest.mark.usefixtures("loops")
def test_unaligned_buffers_are_read_as_aligned_ones(built: object) -> None:
    """A snapshot's arrays are views into its bytes, not always aligned to their items' size."""
    rng = np.random.default_rng(4)
    cols = rng.integers(0, 50, 200).astype(np.int32)
    vals = rng.random(200).astype(np.float32)
    damping, mass = rng.random(50), rng.random(50)

    def unaligned(a: np.ndarray) -> np.ndarray:
        view = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1)
        assert not view.flags.aligned
        return view

    want, got = np.empty(50), np.empty(50)
    start, length, rows = np.array([0, 80]), np.array([200, 120]), np.array([1, 0])
    weights = np.array([0.7, 0.2])
    head, exclude = np.argsort(-mass, kind="stable"), np.array([3, 9])
    pool = (cols, vals, start, length, rows, weights)
    moved = tuple(map(unaligned, pool))
    for cap in (0, 100):  # every entry; the 100 strongest of each row (both are longer)
        built.cooccurrence_scores(*pool, cap, None, damping, mass, 0.1, 0.9, want)  # type: ignore[attr-defined]
        built.cooccurrence_scores(*moved, cap, None, unaligned(damping), unaligned(mass), 0.1, 0.9, got)  # type: ignore[attr-defined]
        assert got.tobytes() == want.tobytes()
        assert built.top_rows(unaligned(want), 7) == built.top_rows(want, 7)  # type: ignore[attr-defined]
        top = built.cooccurrence_top(*pool, cap, None, damping, mass, 0.1, 0.9, 50, head, exclude, 7)  # type: ignore[attr-defined]
        moved_top = built.cooccurrence_top(  # type: ignore[attr-defined]
            *moved, cap, None, unaligned(damping), unaligned(mass), 0.1, 0.9, 50, unaligned(head), unaligned(exclude), 7
        )
        assert moved_top == top == top_k(want, 7, exclude)


def _reference(scores: np.ndarray, k: int) -> list[int]:
    """Rows by score descending, equal scores lower row first, NaN last: a full sort."""
    numbers = sorted((r for r in range(scores.size) if not np.isnan(scores[r])), key=lambda r: (-scores[r], r))
    return (numbers + [r for r in range(scores.size) if np.isnan(scores[r])])[:k]


def _scores_of_shape(rng: np.random.Generator, shape: str, largest: int) -> np.ndarray:
    """Random scores of one of the shapes the selection tests cover (up to ``largest`` of them; "tiny": under 30)."""
    n = int(rng.integers(1, 30)) if shape == "tiny" else int(rng.integers(50, largest))
    return {
        "random": lambda: rng.random(n),
        "ties": lambda: np.round(rng.normal(size=n), 1),
        "all_equal": lambda: np.full(n, 0.5),
        "minus_inf": lambda: np.where(rng.random(n) < 0.99, -np.inf, rng.random(n)),
        "nan": lambda: np.where(rng.random(n) < 0.3, np.nan, np.round(rng.random(n), 2)),
        "tiny": lambda: np.round(rng.random(n), 1),
    }[shape]()


@pytest.mark.usefixtures("loops")
@pytest.mark.parametrize("shape", ["random", "ties", "all_equal", "minus_inf", "nan", "tiny"])
def test_top_rows_are_numpys_and_a_full_sorts(built: object, shape: str) -> None:
    calls = []

    class Counted:  # counts the kernel's answers, and the times it hands over to numpy's careful path
        def top_rows(self, scores: np.ndarray, k: int) -> list[int] | None:
            rows = built.top_rows(scores, k)  # type: ignore[attr-defined]
            calls.append(rows is not None)
            return rows

    rng = np.random.default_rng(13)
    for trial in range(40):
        scores = _scores_of_shape(rng, shape, largest=12_000)
        n = scores.size
        exclude = rng.integers(0, n, size=int(rng.integers(0, max(1, n // 3))))
        k = int(rng.integers(1, 60))
        with kernels.numpy_only():
            want = top_rows(scores, k, exclude)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernels, "_use", Counted())
            got = top_rows(scores, k, exclude)
        assert got.tolist() == want.tolist(), (shape, trial)
        masked = scores.copy()
        masked[exclude] = -np.inf
        excluded = set(exclude.tolist())
        allowed = [r for r in _reference(masked, k + len(excluded)) if r not in excluded]
        assert got.tolist() == allowed[:k], (shape, trial)
    assert any(calls), "the kernel never answered"
    if shape == "minus_inf":
        assert not all(calls), "fewer than k numbers never went to the careful path"


def test_the_kernels_refuse_what_they_cannot_read_instead_of_reading_past_it(built: object) -> None:
    k = built
    ones = np.ones(3)
    out = np.zeros(3)
    good = {
        "cols": array("i", [0, 2]), "vals": array("f", [1.0, 2.0]), "start": array("q", [0]),
        "length": array("q", [2]), "rows": array("q", [0]), "weights": array("d", [1.0]), "damping": ones,
    }  # fmt: skip

    def scores(out: object = out, cap: int = 0, **changed: object) -> None:
        a = {**good, **changed}
        k.cooccurrence_scores(a["cols"], a["vals"], a["start"], a["length"], a["rows"], a["weights"], cap, None,  # type: ignore[attr-defined]
                              a["damping"], ones, 0.1, 1.0, out)  # fmt: skip

    def top(cap: int = 0, **changed: object) -> list | None:  # the same pool, through cooccurrence_top
        a = {**good, **changed}
        return k.cooccurrence_top(a["cols"], a["vals"], a["start"], a["length"], a["rows"], a["weights"], cap, {},  # type: ignore[attr-defined]
                                  a["damping"], ones, 0.1, 1.0, 3, array("q", [0, 1, 2]), array("q"), 2)  # fmt: skip

    scores()
    assert out.tolist() == pytest.approx([1.2, 0.2, 2.2])  # evidence 1, 0, 2; prior 0.1 * top (2) / max mass (1)
    assert top() == [(2, pytest.approx(2.2)), (0, pytest.approx(1.2))]
    scores(cap=1)  # row 0's strongest entry alone: column 2
    assert out.tolist() == pytest.approx([0.2, 0.2, 2.2])
    assert top(cap=1) == [(2, pytest.approx(2.2)), (0, pytest.approx(0.2))]
    bad = [
        ({"cols": array("i", [3, 0])}, ValueError),  # column outside
        ({"cols": array("i", [-1, 0])}, ValueError),
        ({"vals": array("f", [1.0])}, ValueError),  # lengths differ
        ({"length": array("q", [2, 0])}, ValueError),  # start and length differ
        ({"weights": array("d", [1.0, 2.0])}, ValueError),  # a weight per row
        ({"damping": np.ones(2)}, ValueError),  # damping shorter than the catalogue
        ({"rows": array("q", [1])}, ValueError),  # a row past the pool's rows
        ({"rows": array("q", [-1])}, ValueError),
        ({"length": array("q", [3])}, ValueError),  # a row running past the pool
        ({"start": array("q", [-1])}, ValueError),
        ({"length": array("q", [-1])}, ValueError),
        ({"cols": good["vals"]}, TypeError),  # float columns
        ({"vals": array("d", [1.0, 2.0])}, TypeError),  # float64 values
        ({"rows": array("i", [0])}, TypeError),  # int32 rows
        ({"weights": array("f", [1.0])}, TypeError),  # float32 weights
    ]
    for changed, error in bad:
        with pytest.raises(error):
            scores(**changed)
        if "damping" not in changed:  # top reads no damping past its n (3) items: the same list otherwise
            with pytest.raises(error):
                top(**changed)
    pool = tuple(good.values())[:6]  # cols, vals, start, length, rows, weights
    cache = {0: b"\0" * 4}  # a row's kept entries of another size than its cap's
    with pytest.raises(ValueError):
        k.cooccurrence_scores(*pool, 1, cache, ones, ones, 0.1, 1.0, out)  # type: ignore[attr-defined]
    for head in (array("q", [3]), array("q", [-1])):  # a head row outside the catalogue
        with pytest.raises(ValueError):
            k.cooccurrence_top(*pool, 1, None, ones, ones, 0.1, 1.0, 3, head, array("q"), 2)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        k.cooccurrence_top(*pool, 1, [], ones, ones, 0.1, 1.0, 3, array("q"), array("q"), 2)  # type: ignore[attr-defined]
    with pytest.raises(BufferError):
        scores(b"\0" * 24)  # read-only
    with pytest.raises(TypeError):
        k.top_rows(np.ones(4, dtype=np.float32), 2)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        k.top_rows(np.ones(4), -1)  # type: ignore[attr-defined]
    assert k.top_rows(np.array([0.5, 0.9, 0.5]), 0) == []  # type: ignore[attr-defined]


@pytest.mark.usefixtures("loops")
def test_serving_and_the_replay_answer_the_same_with_and_without_the_kernels(built: object) -> None:
    assert built is not None
    rnd = random.Random(3)
    events = []
    ts = 1.7e9
    for n in range(4_000):
        ts += rnd.expovariate(0.2)
        user, item = f"u{rnd.randrange(120)}", f"v{min(int(rnd.paretovariate(1.1)), 300)}"
        events.append(ReplayEvent(user, item, rnd.choice(["like", "view", "skip"]), ts, event_id=f"e{n}"))

    def run() -> tuple[object, list]:
        learner = OnlineLearner(model=ItemCooccurrence())
        result = replay(events, learner, k=10)
        served = ServingModel.from_bytes(learner.to_bytes(), 1)
        items = list(served.model.items.ids)
        lists = [served.recommend(u, 10, set(items[:5])) for u in [*served.model.users.ids, "nobody"]]
        return dataclasses.replace(result, seconds=0.0, curve=[]), lists

    with kernels.numpy_only():
        want_result, want_lists = run()
    got_result, got_lists = run()
    assert want_result.overall.scored > 300
    assert got_result == want_result
    assert got_lists == want_lists


@pytest.mark.usefixtures("loops")
@pytest.mark.parametrize("shape", ["random", "ties", "all_equal", "minus_inf", "nan", "tiny"])
def test_top_rows_and_rank_are_numpys_and_count_what_a_full_pass_counts(built: object, shape: str) -> None:
    """The replay's one call (the excluded rows masked, the k best, and how many masked scores are above and equal
    to the target's) gives with the kernel what numpy gives: the same rows, counts and masked scores, bit for bit,
    for targets scoring a number, -inf and NaN, and without a target."""
    from learner.ranking import top_rows_and_rank

    answered = []

    class Counted:  # counts the fused kernel's answers
        def top_rows_rank(
            self, scores: np.ndarray, exclude: np.ndarray, k: int, target: int, keep: int
        ) -> tuple | None:
            result = built.top_rows_rank(scores, exclude, k, target, keep)  # type: ignore[attr-defined]
            answered.append(result is not None and result[0] is not None)
            return result

        def top_rows(self, scores: np.ndarray, k: int) -> list[int] | None:
            return built.top_rows(scores, k)  # type: ignore[attr-defined]

    rng = np.random.default_rng(17)
    for trial in range(60):
        scores = _scores_of_shape(rng, shape, largest=5_000)
        n = scores.size
        exclude = rng.integers(0, n, size=int(rng.integers(0, max(1, n // 3))))  # repeats too
        free = np.setdiff1d(np.arange(n), exclude)
        target = keep = None
        if trial % 5 == 1 and exclude.size:  # a target among the excluded rows, kept (one the user has seen)
            target = keep = int(rng.choice(exclude))
        elif trial % 5 and free.size:
            target = int(rng.choice(free))
        k = int(rng.integers(1, 40))
        want_scores, got_scores = scores.copy(), scores.copy()
        with kernels.numpy_only():
            want = top_rows_and_rank(want_scores, k, exclude, target, keep)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernels, "_use", Counted())
            got = top_rows_and_rank(got_scores, k, exclude, target, keep)
        assert (got[0].tolist(), got[1:]) == (want[0].tolist(), want[1:]), (shape, trial)
        assert got_scores.tobytes() == want_scores.tobytes(), (shape, trial)
        shown = exclude if keep is None else exclude[exclude != keep]
        assert got[0].tolist() == top_rows(scores, k, shown).tolist(), (shape, trial)
        if keep is not None:
            assert got_scores[keep] == scores[keep] or np.isnan(scores[keep]), (shape, trial)  # not masked
        if target is None:
            assert got[1:] == (0, 0)
        else:
            t = got_scores[target]
            assert got[1:] == (sum(s > t for s in got_scores), sum(s == t for s in got_scores)), (shape, trial)
    assert any(answered), "the kernel never answered"
    if shape == "minus_inf":
        assert not all(answered), "fewer than k numbers never went to top_rows' careful path"


@pytest.mark.usefixtures("loops")
def test_top_rows_and_rank_leave_rows_outside_the_scores_to_numpy(built: object) -> None:
    """An excluded row or a target outside the scores: the kernel changes nothing and numpy's indexing decides (a
    negative row counts from the end; one past the end raises IndexError)."""
    from learner.ranking import top_rows_and_rank

    scores = np.array([0.5, 0.9, 0.7, 0.1])
    assert built.top_rows_rank(scores, np.array([-1]), 2, 0, -1) is None  # type: ignore[attr-defined]
    assert built.top_rows_rank(scores, np.array([4]), 2, 0, -1) is None  # type: ignore[attr-defined]
    assert built.top_rows_rank(scores, np.array([0]), 2, 4, -1) is None  # type: ignore[attr-defined]
    assert scores.tolist() == [0.5, 0.9, 0.7, 0.1]  # untouched
    lowest = np.finfo(np.float64).min  # the lowest number is a candidate: only -inf and NaN are not
    odd = np.array([-np.inf, lowest, np.nan, -1e308])
    assert built.top_rows_rank(odd, np.zeros(0, dtype=np.int64), 2, 1, -1) == ([3, 1], 1, 1)  # type: ignore[attr-defined]
    best, greater, equal = top_rows_and_rank(scores, 2, np.array([-1]), 0)  # numpy: -1 is row 3
    assert (best.tolist(), greater, equal, scores.tolist()) == ([1, 2], 2, 1, [0.5, 0.9, 0.7, -np.inf])
    with pytest.raises(IndexError):
        top_rows_and_rank(scores, 2, np.array([4]), 0)
    with pytest.raises(TypeError):
        built.top_rows_rank(scores, np.array([0], dtype=np.int32), 2, 0, -1)  # type: ignore[attr-defined]
    with pytest.raises(BufferError):
        built.top_rows_rank(b"\0" * 32, np.array([0]), 2, 0, -1)  # type: ignore[attr-defined]  # read-only
    with pytest.raises(ValueError):
        built.top_rows_rank(scores, np.array([0]), -1, 0, -1)  # type: ignore[attr-defined]


def test_weighted_rows_are_pythons_bit_for_bit(built: object) -> None:
    """A user's rows (newest first) and ranking weights (weight times recency power times damping) from the kernel
    are the Python loop's, for every user of a learned model and for hand-made histories with int weights."""
    assert built is not None
    rnd = random.Random(21)
    learner = OnlineLearner(model=ItemCooccurrence(window=6))
    _feed(learner, rnd, 2_000, users=40, items=90, ts=1.7e9)
    model = learner.model
    for user in [*model.users.ids, "nobody"]:
        with kernels.numpy_only():
            want_rows, want_weights = model._weighted_rows(user)
        got_rows, got_weights = model._weighted_rows(user)
        assert np.asarray(got_rows).tolist() == list(want_rows), user
        assert np.asarray(got_weights).tobytes() == np.asarray(want_weights, dtype=np.float64).tobytes(), user
    assert any(len(model._history[u]) == 6 for u in range(len(model.users)))
    powers, damping = array("d", [1.0, 0.5, 0.3]), np.array([0.7, 0.1, 0.35, 2.0])
    rows, weights = np.zeros(3, dtype=np.int64), np.zeros(3)
    assert built.weighted_rows({2: 3, 0: 0.1, 3: 1.5}, powers, damping, rows, weights) == 3  # type: ignore[attr-defined]
    assert rows.tolist() == [3, 0, 2]
    assert weights.tolist() == [1.5 * 1.0 * 2.0, 0.1 * 0.5 * 0.7, 3 * 0.3 * 0.35]
    bad = [
        (({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, powers, damping, np.zeros(4, dtype=np.int64), np.zeros(4)), ValueError),
        (({4: 1.0}, powers, damping, rows, weights), ValueError),  # a row past the damping
        (({-1: 1.0}, powers, damping, rows, weights), ValueError),
        (({0: 1.0, 1: 1.0}, powers, damping, rows[:1], weights), ValueError),  # rows too short
        (({0: "1"}, powers, damping, rows, weights), TypeError),
        (({0: 1.0}, powers, damping, rows.astype(np.int32), weights), TypeError),
        (([(0, 1.0)], powers, damping, rows, weights), TypeError),
    ]
    for args, error in bad:
        with pytest.raises(error):
            built.weighted_rows(*args)  # type: ignore[attr-defined]
    with pytest.raises(BufferError):
        built.weighted_rows({0: 1.0}, powers, damping, rows, b"\0" * 24)  # type: ignore[attr-defined]  # read-only


@pytest.mark.parametrize("params", [{}, {"alpha": 0.0, "beta": 0.9}, {"alpha": -0.5, "beta": 2.5}])
def test_learning_keeps_the_masses_and_dampings_pythons_bit_for_bit(built: object, params: dict) -> None:
    """learn_one's item mass and dampings (compiled: cooccurrence_mass) are the Python lines' numbers, over a stream
    and for masses no healthy model holds (NaN, infinite, below 1); an overflow raises OverflowError as Python's
    ``**`` does, after the same writes."""
    assert built is not None
    rnd = random.Random(31)
    stream = [(f"u{rnd.randrange(30)}", f"v{rnd.randrange(60)}", rnd.choice([0.2, 1.0, 3.0])) for _ in range(1_500)]
    models = []
    for numpy_only in (True, False):
        model = ItemCooccurrence(**params)
        with kernels.numpy_only() if numpy_only else contextlib.nullcontext():
            for n, (user, item, y) in enumerate(stream):
                if n == 700:
                    model._mass[model.items.get("v1")] = np.nan
                    model._mass[model.items.get("v2")] = np.inf
                    model._mass[model.items.get("v3")] = -5.0
                model.learn_one(user, item, y)
        models.append(model)
    want, got = models
    for name in ("_mass", "_candidate_damping", "_row_damping"):
        assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), name
    mass, candidate, row = np.array([2.0, 1e300]), np.ones(2), np.ones(2)
    with pytest.raises(OverflowError):  # 1e300 ** 2: Python's ** raises
        built.cooccurrence_mass(mass, candidate, row, 1, 0.0, 0.5, -2.0)  # type: ignore[attr-defined]
    assert candidate.tolist() == [1.0, 1.0] and mass[1] == 1e300
    with pytest.raises(OverflowError):
        _ = 1e300**2.0
    built.cooccurrence_mass(mass, candidate, row, 0, 0.5, 0.5, 1.0)  # type: ignore[attr-defined]
    assert (mass[0], candidate[0], row[0]) == (2.5, 2.5**-1.0, 2.5**-0.5)
    for args, error in [
        ((mass, candidate, row, 2, 1.0, 0.5, 0.5), IndexError),
        ((mass, candidate, row[:1], 1, 1.0, 0.5, 0.5), IndexError),
        ((mass, candidate, row, -1, 1.0, 0.5, 0.5), IndexError),
        ((np.ones(2, dtype=np.float32), candidate, row, 0, 1.0, 0.5, 0.5), TypeError),
        ((mass, candidate, b"\0" * 16, 0, 1.0, 0.5, 0.5), BufferError),
    ]:
        with pytest.raises(error):
            built.cooccurrence_mass(*args)  # type: ignore[attr-defined]


def test_join_buffers_is_bytes_join_of_any_contiguous_buffers(built: object) -> None:
    """The worker's whole snapshot is joined by it in a thread, the GIL released (learner.codec.encode_later)."""
    kernel: Any = built
    parts = [b"RSNAP1\n", np.arange(5, dtype=np.int32), memoryview(b"xyz"), bytearray(b""), np.ones(3, dtype="<f8")]
    joined = kernel.join_buffers(parts)
    assert type(joined) is bytes and joined == b"".join(parts)
    assert kernel.join_buffers([]) == b""
    with pytest.raises(ValueError, match="contiguous"):
        kernel.join_buffers([np.arange(6).reshape(2, 3)[:, :2]])
    with pytest.raises(TypeError):
        kernel.join_buffers([b"a", 3])


# -- json_objects: one-event messages joined for one validator call (recstream.events) -------------------------


@pytest.mark.parametrize(
    ("value", "alone"),
    [
        (b"{}", True),
        (b' \t{"a": "}{\\""}\r\n', True),  # braces and an escaped quote in a string
        (b'{"a": "\\\\"}', True),  # an escaped backslash, then the string's end
        (b'{"a": [1, {"b": "]"}], "c": {}}', True),
        (b"{}{}", False),
        (b"{} {}", False),
        (b"{}}", False),
        (b"{{}", False),
        (b"[{}]", False),
        (b'{"a": "}', False),  # cut inside a string
        (b'{"a": "\\"}', False),  # the string's closing quote escaped: it does not end
        (b"\xef\xbb\xbf{}", False),  # a byte-order mark is not JSON whitespace
        (b"\x0c{}", False),
        (b"{", False),
        (b"", False),
    ],
)
def test_json_objects_joins_values_that_are_each_one_json_object(built: object, value: bytes, alone: bool) -> None:
    kernel: Any = built
    joined = kernel.json_objects([b"{}", value])
    assert joined == (b"[{}," + value + b"]" if alone else None)
    if alone:
        assert json.loads(joined) == [{}, json.loads(value)]


def test_json_objects_takes_a_list_of_bytes(built: object) -> None:
    kernel: Any = built
    assert kernel.json_objects([]) == b"[]" and kernel.json_objects([b"{}"]) == b"[{}]"
    assert kernel.json_objects([b"{}", None]) is None and kernel.json_objects([bytearray(b"{}")]) is None
    with pytest.raises(TypeError):
        kernel.json_objects((b"{}",))


_JSON_TEXT = st.text(alphabet='{}[]":,\\ a\n', max_size=6)
_JSON_OBJECTS = st.dictionaries(
    _JSON_TEXT,
    st.recursive(
        st.none() | st.integers(-3, 3) | _JSON_TEXT,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(_JSON_TEXT, children, max_size=3),
        max_leaves=6,
    ),
    max_size=3,
).map(lambda value: json.dumps(value, ensure_ascii=False).encode())
_JSON_VALUES = (
    _JSON_OBJECTS
    | _JSON_OBJECTS.flatmap(  # an object with a piece cut out of it
        lambda text: st.tuples(st.integers(0, len(text)), st.integers(0, len(text))).map(
            lambda cut: text[: min(cut)] + text[max(cut) :]
        )
    )
    | _JSON_TEXT.map(str.encode)
)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return ValueError


@settings(max_examples=1000, deadline=None)
@given(st.lists(_JSON_VALUES, min_size=1, max_size=3))
def test_json_objects_arrays_are_valid_exactly_when_each_value_is_an_object_alone(values: list[bytes]) -> None:
    """Joined, the values are a valid JSON array exactly when each is a valid JSON object alone, and its elements are
    theirs; the values that are each a valid object are always joined."""
    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")
    alone = [_loads(value) for value in values]
    joined = kernel.json_objects(values)
    if joined is None:
        assert not all(isinstance(value, dict) for value in alone)
        return
    note_event("joined")
    assert joined == b"[" + b",".join(values) + b"]"
    assert _loads(joined) == (alone if all(isinstance(value, dict) for value in alone) else ValueError)

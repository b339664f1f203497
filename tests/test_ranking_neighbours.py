"""Ranking from each item's strongest neighbours: what is kept of a long row, and the answer from the user's rows
alone (``ItemCooccurrence.top``) against the ranking of the whole catalogue (``score_all`` then ``top_k``)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from learner import codec, kernels
from learner import cooccurrence_delta as delta
from learner.item_cooccurrence import ItemCooccurrence, strongest
from learner.online_learner import OnlineLearner
from learner.ranking import top_k
from learner.serving import ServingModel


def _feed(learner: OnlineLearner, rnd: random.Random, n: int, users: int, items: int, ts: float) -> float:
    """A stream with a heavy head (Pareto item choice), so the head items' rows grow long."""
    for _ in range(n):
        ts += rnd.expovariate(0.5)
        item = min(int(rnd.paretovariate(0.8)), items) - 1
        kind = rnd.choice(["view", "like", "like", "share", "skip"])
        learner.learn(f"u{rnd.randrange(users)}", f"v{item}", kind, None, None, ts)
    return ts


def _whole(model: ItemCooccurrence, user: str, k: int, exclude: np.ndarray) -> list[tuple[int, float]]:
    return top_k(model.score_all(user), k, exclude=exclude, owned=True)


def test_a_long_row_keeps_its_largest_values_equal_ones_by_lower_column(built: object) -> None:
    cols = np.array([5, 1, 3, 2, 4, 0], dtype=np.int32)
    vals = np.array([1.0, 2.0, 2.0, 3.0, 0.5, np.nan], dtype=np.float32)
    for cap, kept in [
        (1, {2}),
        (2, {2, 1}),
        (3, {2, 1, 3}),
        (5, {2, 1, 3, 5, 4}),
        (6, set(range(6))),
        (0, set(range(6))),
    ]:
        got_cols, got_vals = strongest(cols, vals, cap)
        assert set(got_cols.tolist()) == kept, cap
        # the compiled loops read the same entries: a row summed with weight 1, no damping, no prior
        out = np.empty(6)
        built.cooccurrence_scores(  # type: ignore[attr-defined]
            cols, vals, np.array([0]), np.array([6]), np.array([0]), np.array([1.0]), cap, None,
            np.ones(6), np.zeros(6), 0.0, 0.0, out,
        )  # fmt: skip
        want = np.zeros(6)
        want[got_cols] = got_vals
        assert out.tobytes() == want.tobytes(), cap  # (the NaN entry too, when every entry is read)


def test_long_rows_with_many_equal_values_keep_what_numpy_keeps(built: object) -> None:
    rng = np.random.default_rng(8)
    for trial in range(300):
        length = int(rng.integers(2, 1_500))
        cols = rng.permutation(4_000)[:length].astype(np.int32)
        vals = rng.integers(0, int(rng.integers(1, 12)), length).astype(np.float32)  # few distinct values: ties
        if trial % 3 == 0:
            vals = np.sort(vals)  # ascending and descending runs: a heap's worst case, a pivot's too
        if trial % 3 == 1:
            vals = vals[::-1].copy()
        cap = int(rng.integers(1, length + 1))
        out = np.empty(4_000)
        built.cooccurrence_scores(  # type: ignore[attr-defined]
            cols, vals, np.array([0]), np.array([length]), np.array([0]), np.array([1.0]), cap, None,
            np.ones(4_000), np.zeros(4_000), 0.0, 0.0, out,
        )  # fmt: skip
        kept_cols, kept_vals = strongest(cols, vals, cap)
        want = np.zeros(4_000)
        want[kept_cols] = kept_vals
        assert out.tobytes() == want.tobytes(), (trial, length, cap)


@pytest.mark.parametrize(
    "params",
    [{}, {"neighbours": 0}, {"neighbours": 3}, {"neighbours": 3, "popularity_weight": 0.0}],
    ids=["default", "every-entry", "three", "three-no-prior"],
)
def test_the_users_rows_alone_give_the_whole_rankings_top_k(built: object, params: dict) -> None:
    assert built is not None
    rnd = random.Random(11)
    learner = OnlineLearner(model=ItemCooccurrence(**params))
    _feed(learner, rnd, 3_000, users=80, items=300, ts=1.7e9)
    model = learner.model
    assert isinstance(model, ItemCooccurrence)
    n = len(model.items)
    lengths = model.rows.pool()[3][:n]
    if model.neighbours == 3:
        assert (lengths > 3).sum() > 50  # rows to cap
    head = model.ranking_head()
    short = model.ranking_head(size=3)
    answered = short_none = 0
    for user in model.users.ids:
        for k in (1, 7, 40):
            exclude = np.array(sorted(rnd.sample(range(n), rnd.choice([0, 3, 30]))), dtype=np.int64)
            want = _whole(model, user, k, exclude)
            assert model.top(user, k, exclude, head) == want, (user, k)
            got = model.top(user, k, exclude, short)
            if got is None:
                short_none += 1
            else:
                assert got == want, (user, k)
                answered += 1
    assert answered  # a head of 3 settles some lists
    assert short_none or not model.popularity_weight  # not all (without a prior, the head is not read)


def test_the_head_is_walked_past_equal_priors_to_the_lowest_rows(built: object) -> None:
    """Equal priors may come in any order in the head: the walk goes on while a row can still tie its way in."""
    mass = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    head = np.array([0, 4, 3, 2, 1, 5], dtype=np.int64)  # largest mass first, equal masses by descending row
    pool = (np.array([0], np.int32), np.array([2.0], np.float32), np.array([0]), np.array([1]))
    rows, weights = np.array([0]), np.array([1.0])
    scores = np.empty(6)
    built.cooccurrence_scores(*pool, rows, weights, 0, None, np.ones(6), mass, 0.1, 5.0, scores)  # type: ignore[attr-defined]
    for k in (2, 3, 6):
        got = built.cooccurrence_top(
            *pool, rows, weights, 0, None, np.ones(6), mass, 0.1, 5.0, 6, head, np.zeros(0, np.int64), k
        )  # type: ignore[attr-defined]
        assert got == top_k(scores, k), k
    assert [row for row, _ in got] == [0, 1, 2, 3, 4, 5]


def _tiny_model() -> ItemCooccurrence:
    """Four items, two users, every row capped at one entry."""
    model = ItemCooccurrence(neighbours=1)
    for user, items in {"a": "xyz", "b": "xyw"}.items():
        for item in items:
            model.learn_one(user, item, 1.0)
    return model


def test_every_row_excluded_or_a_tiny_catalogue_give_what_is_left(built: object) -> None:
    assert built is not None
    model = _tiny_model()
    n = len(model.items)
    head = model.ranking_head()
    for exclude in ([], [0], [0, 1, 2], list(range(n))):
        rows = np.array(exclude, dtype=np.int64)
        for k in (0, 1, n, n + 5):
            assert model.top("a", k, rows, head) == _whole(model, "a", k, rows), (exclude, k)


def test_a_huge_k_or_an_excluded_row_outside_the_catalogue_gives_what_the_whole_ranking_gives(built: object) -> None:
    assert built is not None
    model = _tiny_model()
    head = model.ranking_head()
    assert model.top("a", 2**60, np.zeros(0, np.int64), head) == _whole(model, "a", 2**60, np.zeros(0, np.int64))
    for outside in ([-1], [len(model.items)]):  # numpy's rules for such rows apply: the whole ranking is asked
        assert model.top("a", 3, np.array(outside, dtype=np.int64), head) is None


@pytest.mark.parametrize(
    "params", [{}, {"backward": -0.5}, {"gamma": 0.0, "forward": math.inf}], ids=["growing", "shrinking", "nan"]
)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's NaNs in the "nan" case
def test_kept_rows_follow_learning(built: object, params: dict) -> None:
    """A long row's strongest entries are kept between rankings and brought up to date when learning changes the
    row (or dropped, when a negative parameter lets values shrink, or an infinity times 0 makes one NaN): the
    compiled ranking gives numpy's numbers (which keep nothing) after every step."""
    assert built is not None
    rnd = random.Random(5)
    learner = OnlineLearner(model=ItemCooccurrence(neighbours=2, **params))
    ts = 1.7e9
    model = learner.model
    for _ in range(12):
        ts = _feed(learner, rnd, 150, users=30, items=60, ts=ts)
        for user in model.users.ids:
            with kernels.numpy_only():
                want = model.score_all(user)
            assert model.score_all(user).tobytes() == want.tobytes(), user
    assert model._strongest  # rows were kept


def _kept(part: bytes | bytearray, cap: int) -> list[tuple[int, float]]:
    cols = np.frombuffer(part, dtype=np.int32, count=cap)
    vals = np.frombuffer(part, dtype=np.float32, count=cap, offset=4 * cap)
    return sorted(zip(cols.tolist(), vals.tolist(), strict=True))


def test_learning_updates_kept_rows_in_place_to_what_a_fresh_selection_keeps(built: object) -> None:
    """After every event each kept row holds exactly the entries a fresh selection of its strongest gives, with
    many equal values (likes of weight 1, gamma 1: integer sums) so that ties at the weakest kept entry are
    common; and the kept rows are updated in place (their entries replaced), not dropped and selected again."""
    assert built is not None
    cap, rnd = 3, random.Random(11)
    model = ItemCooccurrence(window=4, gamma=1.0, neighbours=cap)
    in_place = replaced = 0
    for step in range(4_000):
        user, item = f"u{rnd.randrange(40)}", f"v{min(int(rnd.paretovariate(0.7)), 50) - 1}"
        before = {row: (part, bytes(part)) for row, part in model._strongest.items()}
        model.learn_one(user, item, 1.0)
        for row, (part, content) in before.items():
            if model._strongest.get(row) is part and bytes(part) != content:
                in_place += 1
                replaced += {c for c, _ in _kept(content, cap)} != {c for c, _ in _kept(part, cap)}
        if step % 3 == 0:
            model.score_all(user)  # ranks the user: keeps the long rows of their items
        for row, part in model._strongest.items():
            cols, vals = strongest(*model._rows.row(row), cap)
            assert _kept(part, cap) == sorted(zip(cols.tolist(), vals.tolist(), strict=True)), (step, row)
    assert in_place > 100 and replaced > 20, (in_place, replaced)


def test_an_entry_turned_nan_drops_its_rows_kept_part(built: object) -> None:
    """A NaN counts as -inf, less than before, so learning cannot update the row's kept part in place: it drops it,
    and the next ranking selects the row again (the NaN entry no longer among its strongest)."""
    assert built is not None
    model = ItemCooccurrence(window=4, neighbours=1)
    for user, items in {"a": "xy", "b": "xz", "c": "xw", "e": "xz"}.items():
        for item in items:
            model.learn_one(user, item, 1.0)
    model.score_all("a")
    x = model.items.get("x")
    kept = _kept(model._strongest[x], 1)
    assert kept == [(model.items.get("z"), 2.0)]  # x's strongest: z, taken after it twice
    cols, vals, start, length = model._rows.pool()
    row = slice(int(start[x]), int(start[x] + length[x]))
    vals[row][cols[row] == kept[0][0]] = np.nan
    model.learn_one("d", "x", 1.0)
    model.learn_one("d", "z", 1.0)  # adds to (x, z): NaN
    assert x not in model._strongest
    model.score_all("a")
    assert _kept(model._strongest[x], 1) == [(model.items.get("y"), 1.0)]  # y and w tie: the lower column, y


def test_a_kept_row_the_kernel_did_not_make_is_dropped_with_the_others(built: object) -> None:
    """Learning never raises over what it cannot read as kept entries: it drops every kept row (they are selected
    again when ranked), and the ranking stays numpy's."""
    assert built is not None
    model = ItemCooccurrence(window=4, neighbours=1)
    for user, items in {"a": "xyz", "b": "xyw", "c": "xzw"}.items():
        for item in items:
            model.learn_one(user, item, 1.0)
    model.score_all("a")
    assert model._strongest
    x = model.items.get("x")
    model._strongest[x] = bytearray(b"not eight")
    model.learn_one("d", "x", 1.0)
    model.learn_one("d", "y", 1.0)
    assert not model._strongest
    with kernels.numpy_only():
        want = model.score_all("a")
    assert model.score_all("a").tobytes() == want.tobytes()


def test_a_served_model_answers_as_its_whole_version_after_deltas(built: object) -> None:
    """Deltas applied in place change rows and priors: the kept rows and the ranking head of the version before
    are not used for the next (the answers match a model loaded whole at each version)."""
    assert built is not None
    rnd = random.Random(9)
    learner = OnlineLearner(model=ItemCooccurrence(neighbours=3))
    ts = _feed(learner, rnd, 1_500, users=50, items=200, ts=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    delta.mark(learner)
    for version in range(2, 6):
        for user in served.model.users.ids:  # fills the kept rows and the head of this version
            served.recommend(user, 10, exclude=set())
        ts = _feed(learner, rnd, 400, users=70, items=260, ts=ts)
        made = delta.parts(learner, base_version=version - 1)
        assert made is not None
        served.apply_delta(*delta.resolve_delta([(version - 1, codec.encode(*made))]), version)
        delta.mark(learner)
        whole = ServingModel.from_bytes(learner.to_bytes(), version)
        for user in whole.model.users.ids:
            seen = set(rnd.sample(whole.model.items.ids, 5))
            assert served.recommend(user, 10, exclude=seen) == whole.recommend(user, 10, exclude=seen), (version, user)


def test_serving_without_the_compiled_loops_gives_the_same_lists(built: object) -> None:
    assert built is not None
    rnd = random.Random(2)
    learner = OnlineLearner(model=ItemCooccurrence(neighbours=4))
    _feed(learner, rnd, 2_000, users=40, items=150, ts=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    for user in served.model.users.ids:
        got = served.recommend(user, 10, exclude={"v0", "v3"})
        with kernels.numpy_only():
            assert served.recommend(user, 10, exclude={"v0", "v3"}) == got, user


def test_the_cap_is_a_model_parameter_kept_in_its_snapshots() -> None:
    learner = OnlineLearner(model=ItemCooccurrence(neighbours=7))
    learner.learn("u", "a", "like", None, None)
    assert OnlineLearner.from_bytes(learner.to_bytes()).model.neighbours == 7
    state = learner.model.to_state()
    del state.params["neighbours"]  # a snapshot made before the cap: ranked from every entry, as then
    assert ItemCooccurrence.from_state(state).neighbours == 0
    with pytest.raises(ValueError):
        ItemCooccurrence(neighbours=-1)

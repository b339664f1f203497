"""Incremental snapshots of the default model: a delta applied to its base is the whole snapshot, bit for bit."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest

from learner import codec, item_cooccurrence, kernels, sparse_rows
from learner import cooccurrence_delta as delta
from learner.codec import CodecError
from learner.implicit_mf import ImplicitMF
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.progressive import ProgressiveMetrics
from learner.serving import ServingModel
from tests.conftest import skip_unless_ci

KINDS = ["view", "view", "like", "share", "skip"]


def _feed(learner: OnlineLearner, rnd: random.Random, n: int, users: int, items: int, start: float) -> float:
    ts = start
    for _ in range(n):
        ts += rnd.expovariate(1.0)
        watch = rnd.choice([None, 3.0, 25.0])
        learner.learn(f"u{rnd.randrange(users)}", f"v{rnd.randrange(items)}", rnd.choice(KINDS), watch, 30.0, ts)
    return ts


def _assert_same_parts(got: tuple[dict, dict[str, np.ndarray]], want_blob: bytes) -> None:
    header, arrays = got
    want_header, want_arrays = codec.decode(want_blob)
    assert header == want_header
    assert list(arrays) == list(want_arrays)
    for name, values in want_arrays.items():
        assert arrays[name].dtype == values.dtype and np.array_equal(arrays[name], values), name
    assert codec.encode(header, arrays) == want_blob


def _delta_blob(learner: OnlineLearner) -> bytes:
    made = delta.parts(learner)
    assert made is not None
    return codec.encode(*made)


@pytest.mark.parametrize("remark", [False, True], ids=["since-one-base", "chained"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-update", "python-update"])
def test_a_delta_applied_to_its_base_is_the_whole_snapshot_bit_for_bit(
    remark: bool, compiled: bool, monkeypatch
) -> None:
    if not compiled:  # learned by the Python update (learner.sparse_rows), as where the C loops are not built
        monkeypatch.setattr(kernels, "_use", None)
    elif kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built: `pip install -e .` builds it when a C compiler is found")
    rnd = random.Random(5)
    learner = OnlineLearner(model=ItemCooccurrence(window=4))
    ts = _feed(learner, rnd, 3_000, users=80, items=150, start=1.7e9)
    base = learner.to_bytes()
    delta.mark(learner)
    for step in range(4):  # the catalogue and the audience grow: new ids, new rows, new history rows
        ts = _feed(learner, rnd, 700, users=80 + 40 * step, items=150 + 60 * step, start=ts)
        made = codec.decode(_delta_blob(learner))
        whole = learner.to_bytes()
        _assert_same_parts(delta.apply(*codec.decode(base), *made), whole)
        if remark:
            base = whole
            delta.mark(learner)
    restored = OnlineLearner.from_parts(*delta.apply(*codec.decode(base), *codec.decode(_delta_blob(learner))))
    assert restored.model.score_all("u3").tolist() == learner.model.score_all("u3").tolist()


def test_a_delta_is_the_size_of_what_changed_not_of_the_model() -> None:
    rnd = random.Random(6)
    learner = OnlineLearner(model=ItemCooccurrence())
    ts = _feed(learner, rnd, 40_000, users=2_000, items=5_000, start=1.7e9)
    delta.mark(learner)
    _feed(learner, rnd, 400, users=2_000, items=5_000, start=ts)
    small, whole = _delta_blob(learner), learner.to_bytes()
    assert len(small) < len(whole) / 8, (len(small), len(whole))


def test_a_rescale_of_recent_popularity_travels_whole() -> None:
    rnd = random.Random(7)
    learner = OnlineLearner(model=ItemCooccurrence(half_life_days=0.001))  # 86 s: rescales within the stream
    ts = _feed(learner, rnd, 500, users=30, items=40, start=1.7e9)
    base = learner.to_bytes()
    delta.mark(learner)
    _feed(learner, rnd, 500, users=30, items=40, start=ts + 10 * 86_400)
    made = codec.decode(_delta_blob(learner))
    assert "recent_whole" in made[1]
    _assert_same_parts(delta.apply(*codec.decode(base), *made), learner.to_bytes())


def test_no_delta_before_a_mark_nor_after_more_changed_than_the_model_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rnd = random.Random(8)
    learner = OnlineLearner(model=ItemCooccurrence())
    ts = _feed(learner, rnd, 200, users=20, items=30, start=1.7e9)
    assert delta.parts(learner) is None  # never marked: nothing recorded, nothing paid per event
    monkeypatch.setattr(sparse_rows, "CHANGE_LOG_LIMIT", 50)
    delta.mark(learner)
    ts = _feed(learner, rnd, 200, users=20, items=30, start=ts)
    assert delta.parts(learner) is None  # over the limit: a whole snapshot instead
    base = learner.to_bytes()
    delta.mark(learner)
    _feed(learner, rnd, 3, users=20, items=30, start=ts)
    _assert_same_parts(delta.apply(*codec.decode(base), *codec.decode(_delta_blob(learner))), learner.to_bytes())


def test_other_models_have_no_delta() -> None:
    learner = OnlineLearner(model=ImplicitMF())
    learner.learn("u", "v", "like", None, None, 1.7e9)
    delta.mark(learner)
    assert not delta.supported(learner) and delta.parts(learner) is None


def test_a_delta_refuses_a_base_it_was_not_made_from() -> None:
    rnd = random.Random(9)
    learner = OnlineLearner(model=ItemCooccurrence(window=3))
    ts = _feed(learner, rnd, 400, users=20, items=30, start=1.7e9)
    base = codec.decode(learner.to_bytes())
    delta.mark(learner)
    ts = _feed(learner, rnd, 100, users=25, items=35, start=ts)
    other = codec.decode(learner.to_bytes())  # a later state: other sizes
    header, arrays = codec.decode(_delta_blob(learner))
    with pytest.raises(CodecError, match="base of"):
        delta.apply(*other, header, arrays)
    with pytest.raises(CodecError, match="not to another delta"):
        delta.apply(header, arrays, header, arrays)
    in_place = int(np.flatnonzero(arrays["entry_slots"] == 0)[0])  # slot 0 of a row the base already had
    wrong = dict(arrays, entry_cols=arrays["entry_cols"].copy())
    wrong["entry_cols"][in_place] += 1
    with pytest.raises(CodecError, match="another column"):
        delta.apply(*base, header, wrong)
    shuffled = {name: (values[::-1] if name.startswith("entry_") else values) for name, values in arrays.items()}
    with pytest.raises(CodecError, match="not sorted"):
        delta.apply(*base, header, shuffled)
    with pytest.raises(CodecError, match="not a delta"):
        delta.apply(*base, {**header, "delta": "something-else/9"}, arrays)
    delta.apply(*base, header, arrays)  # the right base


def test_a_like_right_after_its_view_across_a_mark_is_in_the_delta() -> None:
    """The model reuses the pairs of a repeated (user, item) without looking them up: not across a mark."""
    learner = OnlineLearner(model=ItemCooccurrence(window=3))
    for k, item in enumerate(["a", "b", "c"]):
        learner.learn("u1", item, "view", 25.0, 30.0, 1.7e9 + k)
    base = learner.to_bytes()
    delta.mark(learner)
    learner.learn("u1", "c", "like", 25.0, 30.0, 1.7e9 + 5)  # the view of c's pairs, updated again
    _assert_same_parts(delta.apply(*codec.decode(base), *codec.decode(_delta_blob(learner))), learner.to_bytes())


def _chain(learner: OnlineLearner, rnd: random.Random, steps: list[int], start: float) -> list[tuple[int, bytes]]:
    """Deltas as the worker writes them: each against the version before (numbered 1, 2, ...), marked after."""
    chain = []
    ts = start
    for version, n in enumerate(steps, start=1):
        ts = _feed(learner, rnd, n, users=60 + 10 * version, items=90 + 15 * version, start=ts)
        made = delta.parts(learner, base_version=version)
        assert made is not None
        chain.append((version, codec.encode(*made)))
        delta.mark(learner)
    return chain


def test_a_chain_of_deltas_composed_is_the_whole_snapshot_bit_for_bit() -> None:
    rnd = random.Random(11)
    learner = OnlineLearner(model=ItemCooccurrence(window=5, half_life_days=0.01))  # rescales inside the chain
    learner.metrics = ProgressiveMetrics(window=300)  # the window wraps within the chain
    ts = _feed(learner, rnd, 2_000, users=60, items=600, start=1.7e9)  # the chain touches the first ~165 items
    base = learner.to_bytes()
    delta.mark(learner)
    chain = _chain(learner, rnd, [150, 400, 0, 30, 700], start=ts + 5 * 86_400)
    assert "recent_whole" in codec.decode(chain[0][1])[1]  # the clock's jump rescaled every item's recent value
    whole = learner.to_bytes()
    _assert_same_parts(delta.resolve(base, chain), whole)
    # from the middle of the chain, as an API process does that holds the version a delta was made against
    middle = delta.resolve(base, chain[:2])
    _assert_same_parts(delta.resolve(middle, chain[2:]), whole)
    with pytest.raises(CodecError, match="made against v2, not v1"):
        delta.resolve(base, [chain[0], (1, chain[1][1])])
    with pytest.raises(CodecError, match="not made against the one before it"):
        delta.resolve(base, [chain[0], chain[2]])  # a delta skipped


def test_a_delta_carries_the_progressive_windows_new_entries_not_the_whole_window() -> None:
    rnd = random.Random(12)
    learner = OnlineLearner(model=ItemCooccurrence())
    ts = _feed(learner, rnd, 5_000, users=200, items=300, start=1.7e9)
    delta.mark(learner)
    before = learner.metrics.count
    _feed(learner, rnd, 40, users=200, items=300, start=ts)
    _, arrays = delta.parts(learner)  # type: ignore[misc]
    assert len(arrays["progressive_labels"]) == learner.metrics.count - before < 41


def test_a_malformed_chain_raises_a_codec_error_not_a_crash() -> None:
    rnd = random.Random(13)
    learner = OnlineLearner(model=ItemCooccurrence())
    ts = _feed(learner, rnd, 300, users=20, items=30, start=1.7e9)
    base = learner.to_bytes()
    delta.mark(learner)
    chain = _chain(learner, rnd, [20, 20], start=ts)
    header, arrays = codec.decode(chain[1][1])
    for broken in (
        {**header, "delta": "other/2"},  # an unknown format
        {k: v for k, v in header.items() if k != "base_sizes"},  # a field missing
    ):
        with pytest.raises(CodecError):
            delta.resolve(base, [chain[0], (2, codec.encode(broken, arrays))])
    shuffled = dict(arrays, users=arrays["users"][::-1].copy())  # rows not ascending
    with pytest.raises(CodecError, match="users rows"):
        delta.resolve(base, [chain[0], (2, codec.encode(header, shuffled))])


def test_a_whole_snapshot_after_a_delta_writes_only_the_users_changed_since_it(monkeypatch) -> None:
    """The worker makes a whole snapshot under its checkpoint lock: it must not redo the history rows every delta
    of the chain already wrote (on the grown bench model that was 0.45 s of a 0.6 s pause)."""
    rnd = random.Random(13)
    learner = OnlineLearner(model=ItemCooccurrence())
    ts = _feed(learner, rnd, 2_000, users=300, items=300, start=1.7e9)
    learner.to_bytes()
    delta.mark(learner)
    ts = _feed(learner, rnd, 600, users=300, items=300, start=ts)  # most users change within the chain
    _delta_blob(learner)
    delta.mark(learner)
    _feed(learner, rnd, 5, users=300, items=300, start=ts)
    since_delta = set(learner.model._history.changed_since_mark)  # the users those 5 events changed
    written: list[int] = []
    write = item_cooccurrence.UserHistories._write
    monkeypatch.setattr(
        item_cooccurrence.UserHistories, "_write", lambda self, users: (written.extend(users), write(self, users))[1]
    )
    learner.to_bytes()
    assert since_delta and sorted(written) == sorted(since_delta)


# -- a served model takes deltas in place (learner.cooccurrence_delta.apply_in_place) ----------------------------


def _assert_serves_the_same(served: ServingModel, learner: OnlineLearner, version: int) -> None:
    """``served`` holds what a whole load of the learner's state holds: every array bit for bit, the ids, the
    popularity counts, and so the same lists and scores."""
    want = ServingModel.from_bytes(learner.to_bytes(), version)
    got_state, want_state = served.model.to_state(), want.model.to_state()
    assert got_state.ids == want_state.ids
    assert list(got_state.arrays) == list(want_state.arrays)
    for name, values in want_state.arrays.items():
        got = got_state.arrays[name]
        assert got.dtype == values.dtype and np.array_equal(got, values), name
    assert served._popularity_ids == want._popularity_ids
    assert np.array_equal(served._popularity, want._popularity)
    assert served.version == version and served.events_learned == want.events_learned
    items = list(want.model.items.ids)
    for user in [*want.model.users.ids, "nobody"]:
        assert served.recommend(user, 8, set(items[:3])) == want.recommend(user, 8, set(items[:3])), user
    assert served.score("u1", items[:20]) == want.score("u1", items[:20])
    assert served.popular(5, set()) == want.popular(5, set())


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("composed", [False, True], ids=["one-by-one", "chain-composed"])
def test_a_delta_applied_in_place_serves_what_the_whole_snapshot_serves(
    composed: bool, compiled: bool, monkeypatch
) -> None:
    if compiled and kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    with contextlib.nullcontext() if compiled else kernels.numpy_only():  # packed ids, or a dict and a list
        _delta_applied_in_place_serves_what_the_whole_snapshot_serves(composed, monkeypatch)


def _delta_applied_in_place_serves_what_the_whole_snapshot_serves(composed: bool, monkeypatch) -> None:
    moved: list[int] = []
    laid_out: list[int] = []
    move, lay_out = sparse_rows.SparseRows._move, sparse_rows.SparseRows._lay_out
    monkeypatch.setattr(sparse_rows.SparseRows, "_move",
                        lambda self, rows, *a: (moved.append(len(rows)), move(self, rows, *a))[1])  # fmt: skip
    garbage = sparse_rows.GARBAGE
    monkeypatch.setattr(sparse_rows.SparseRows, "_lay_out",
                        lambda self: (laid_out.append(int(self._state[garbage])), lay_out(self))[1])  # fmt: skip
    monkeypatch.setattr(sparse_rows, "COPY_SLICE_MIN", 16)  # rows copied both ways: a slice, and gathered
    monkeypatch.setattr(sparse_rows, "POOL_GARBAGE_SHARE", 0.1)  # laid out again within the test
    rnd = random.Random(21)
    learner = OnlineLearner(model=ItemCooccurrence(window=5, half_life_days=0.01))  # rescales on the clock's jump
    ts = _feed(learner, rnd, 2_500, users=70, items=120, start=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    # packed ids are served as they are, not copied into a list of new str objects (~36 MB at 500,000 items)
    assert isinstance(served._popularity_ids, list) == isinstance(served.model.items.ids, list)
    served.score("u1", [f"v{i}" for i in range(40)])
    assert served.model.rows._table is None  # scores scan the rows: a served model builds no slot table
    delta.mark(learner)
    steps = [(400, 70, 120), (0, 70, 120), (900, 110, 180), (30, 110, 180), (1_500, 160, 260), (600, 200, 400)]
    chain = []
    for k, (n, users, items) in enumerate(steps, start=1):
        ts = _feed(learner, rnd, n, users=users, items=items, start=ts + (5 * 86_400 if k == 4 else 0))
        made = delta.parts(learner, base_version=k)
        assert made is not None
        chain.append((k, codec.encode(*made)))
        delta.mark(learner)
        if not composed:
            served.apply_delta(*delta.resolve_delta(chain[-1:]), k + 1)
            _assert_serves_the_same(served, learner, k + 1)
    assert any("recent_whole" in codec.decode(blob)[1] for _, blob in chain)  # a rescale travelled whole
    if composed:  # versions skipped: the deltas since the one served, composed, then applied once
        served.apply_delta(*delta.resolve_delta(chain), len(chain) + 1)
        _assert_serves_the_same(served, learner, len(chain) + 1)
    assert moved and max(laid_out) > 0  # rows outgrew their room and moved, and the pool was laid out again


def test_a_delta_drops_the_kept_strongest_entries_of_the_rows_it_changes_and_keeps_the_others() -> None:
    """Ranking keeps each long row's strongest entries. A delta applied in place drops those of the rows it changes
    (chosen again from their new entries when next read) and keeps the others as they were, so the first requests
    after a version do not choose every row's again; the served model then ranks as a whole load does."""
    rnd = random.Random(8)
    learner = OnlineLearner(model=ItemCooccurrence(window=5, neighbours=4))
    ts = _feed(learner, rnd, 2_000, users=60, items=80, start=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    for user in served.model.users.ids:
        served.recommend(user, 10, set())  # reads the user's rows: their parts are kept
    before = dict(served.model._strongest)
    delta.mark(learner)
    _feed(learner, rnd, 40, users=60, items=80, start=ts)  # a few events: a delta that changes some rows only
    made = delta.parts(learner, base_version=1)
    assert made is not None
    changed = set(np.unique(made[1]["entry_rows"]).tolist())
    assert changed & set(before) and set(before) - changed  # kept parts of both kinds of rows
    served.apply_delta(*delta.resolve_delta([(1, codec.encode(*made))]), 2)
    kept = served.model._strongest
    assert set(kept) == set(before) - changed
    assert all(kept[row] is before[row] for row in kept)
    _assert_serves_the_same(served, learner, 2)


def test_a_delta_applied_in_place_leaves_the_arrays_it_was_loaded_from_alone() -> None:
    rnd = random.Random(22)
    learner = OnlineLearner(model=ItemCooccurrence(window=4))
    ts = _feed(learner, rnd, 1_500, users=40, items=60, start=1.7e9)
    header, arrays = codec.decode(learner.to_bytes())
    arrays = {name: values.copy() for name, values in arrays.items()}  # writable: the model could write into them
    kept = {name: values.copy() for name, values in arrays.items()}
    served = ServingModel.from_parts(header, arrays, 1)
    delta.mark(learner)
    _feed(learner, rnd, 500, users=50, items=70, start=ts)
    served.apply_delta(*codec.decode(_delta_blob(learner)), 2)
    _assert_serves_the_same(served, learner, 2)
    for name, values in arrays.items():
        assert np.array_equal(values, kept[name]), name


def test_a_delta_that_does_not_fit_changes_nothing_in_place() -> None:
    rnd = random.Random(23)
    learner = OnlineLearner(model=ItemCooccurrence(window=3))
    ts = _feed(learner, rnd, 600, users=20, items=30, start=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    served.make_room_for_deltas()
    served.score("u1", [f"v{i}" for i in range(30)])  # reads rows, builds nothing
    delta.mark(learner)
    _feed(learner, rnd, 150, users=25, items=35, start=ts)
    header, arrays = codec.decode(_delta_blob(learner))
    before = served.model.to_state()
    served_before = (list(served._popularity_ids), served._popularity.copy(), served.events_learned)
    in_place = int(np.flatnonzero(arrays["entry_slots"] == 0)[0])  # slot 0 of a row the base already had
    wrong_col = dict(arrays, entry_cols=arrays["entry_cols"].copy())
    wrong_col["entry_cols"][in_place] += 1
    gap = dict(arrays, entry_slots=arrays["entry_slots"].copy())
    gap["entry_slots"][-1] += 1  # the last row's last new entry one slot too far
    unknown = dict(arrays, history_items=arrays["history_items"].copy())
    unknown["history_items"][0, 0] = 10_000
    shuffled = {name: (values[::-1] if name.startswith("entry_") else values) for name, values in arrays.items()}
    item_rows = arrays["items"].copy()
    item_rows[-1] = item_rows[0]
    for broken_header, broken, match in (
        ({**header, "delta": "other/2"}, arrays, "not a delta"),
        ({**header, "base_sizes": {"users": 1, "items": 1}}, arrays, "base of"),
        ({**header, "params": {**header["params"], "window": 9}}, arrays, "another model"),
        ({**header, "ids_added": {**header["ids_added"], "users": ["u0"]}}, arrays, "id twice"),
        (header, wrong_col, "another column"),
        (header, gap, "next slots"),
        (header, shuffled, "not sorted"),
        (header, unknown, "unknown items"),
        (header, dict(arrays, items=item_rows), "items rows"),
        ({k: v for k, v in header.items() if k != "ids_added"}, arrays, "ids_added"),
        ({**header, "events_learned": "many"}, arrays, "events_learned"),
        (header, dict(arrays, mass=arrays["mass"].astype(str)), "other than numbers"),
        (header, dict(arrays, entry_vals=arrays["entry_vals"].reshape(-1, 1)), "do not match"),  # one per entry
        (header, dict(arrays, entry_cols=arrays["entry_cols"].astype(np.int64) + 2**32), "outside the model"),
        ({**header, "ids_added": {**header["ids_added"], "items": "v99"}}, arrays, "list of strings"),
    ):
        with pytest.raises(CodecError, match=match):
            served.apply_delta(broken_header, broken, 2)
        after = served.model.to_state()
        assert after.ids == before.ids and served.version == 1
        assert served._popularity_ids == served_before[0] and np.array_equal(served._popularity, served_before[1])
        assert served.events_learned == served_before[2]
        for name, values in before.arrays.items():
            assert np.array_equal(after.arrays[name], values), (match, name)
    served.apply_delta(header, arrays, 2)  # the delta as made fits
    _assert_serves_the_same(served, learner, 2)


def test_a_delta_from_a_worker_before_the_ranking_cap_fits_a_model_that_ranks_every_entry() -> None:
    """Such a worker's deltas name no ``neighbours`` (its model ranks every entry, as one loaded from its snapshots)."""
    rnd = random.Random(5)
    for neighbours, fits in ((0, True), (200, False)):
        learner = OnlineLearner(model=ItemCooccurrence(window=3, neighbours=neighbours))
        ts = _feed(learner, rnd, 300, users=10, items=20, start=1.7e9)
        served = ServingModel.from_bytes(learner.to_bytes(), 1)
        delta.mark(learner)
        _feed(learner, rnd, 100, users=12, items=24, start=ts)
        header, arrays = codec.decode(_delta_blob(learner))
        old_header = {**header, "params": {k: v for k, v in header["params"].items() if k != "neighbours"}}
        if fits:
            served.apply_delta(old_header, arrays, 2)
            _assert_serves_the_same(served, learner, 2)
        else:
            with pytest.raises(CodecError, match="another model"):
                served.apply_delta(old_header, arrays, 2)


def test_only_the_default_model_takes_deltas_in_place() -> None:
    learner = OnlineLearner(model=ImplicitMF(n_factors=4))
    learner.learn("ann", "a", "like", None, None, 1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    assert not served.takes_deltas
    served.make_room_for_deltas()  # nothing to do
    with pytest.raises(CodecError, match="takes no deltas"):
        served.apply_delta({"delta": delta.FORMAT}, {}, 2)


def test_a_delta_that_fails_part_way_leaves_a_model_that_takes_no_more_deltas(monkeypatch) -> None:
    rnd = random.Random(24)
    learner = OnlineLearner(model=ItemCooccurrence(window=3))
    ts = _feed(learner, rnd, 400, users=20, items=30, start=1.7e9)
    served = ServingModel.from_bytes(learner.to_bytes(), 1)
    delta.mark(learner)
    _feed(learner, rnd, 100, users=25, items=35, start=ts)
    header, arrays = codec.decode(_delta_blob(learner))

    def out_of_memory(*_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(item_cooccurrence.SparseRows, "set_entries", out_of_memory)  # after the ids and histories
    with pytest.raises(delta.HalfApplied):
        served.apply_delta(header, arrays, 2)
    monkeypatch.undo()
    assert not served.takes_deltas and served.version == 1
    with pytest.raises(CodecError, match="failed part-way"):
        served.apply_delta(header, arrays, 2)

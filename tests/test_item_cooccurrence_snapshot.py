"""The default model's snapshots: a loaded or restarted model ranks, scores and saves exactly like the original.

Loading is lazy (a row of the co-occurrence matrix and a user's history stay slices of the
snapshot's arrays until first changed) and saving is incremental (only the histories changed
since the last save are rewritten), so these tests check the results against plain
recomputations, bit for bit, through many save / load / continue cycles.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from learner import codec, kernels
from learner.item_cooccurrence import ItemCooccurrence, SparseRows
from learner.online_learner import OnlineLearner
from learner.serving import ServingModel
from tests.conftest import loops

EventRow = tuple[str, str, str, float]


def _events(seed: int, n: int, users: int = 300, items: int = 200) -> list[EventRow]:
    """Skewed items, repeats (a like right after its view) and skips, one event a second."""
    rnd = random.Random(seed)
    events: list[EventRow] = []
    t = 1_700_000_000.0
    for _ in range(n):
        user, item = f"u{rnd.randrange(users)}", f"i{min(int(rnd.paretovariate(1.1)), items)}"
        events.append((user, item, rnd.choice(["view", "like", "view", "skip"]), t))
        if rnd.random() < 0.2:
            events.append((user, item, "like", t))
        t += 1.0
    return events


def _learner() -> OnlineLearner:
    return OnlineLearner(model=ItemCooccurrence(window=4))  # a short window: items leave it often


def _learn(learner: OnlineLearner, events: list[EventRow]) -> None:
    for user, item, event_type, ts in events:
        learner.learn(user, item, event_type, None, None, ts=ts)


def _reference_state_arrays(model: ItemCooccurrence) -> dict[str, np.ndarray]:
    """History and co-occurrence arrays recomputed the plain way, from every user's dict and every row."""
    n_users = len(model.users)
    items = np.full((n_users, model.window), -1, dtype=np.int32)
    weights = np.zeros((n_users, model.window), dtype=np.float64)
    for u in range(n_users):
        for k, (j, w) in enumerate(model._history[u].items()):
            items[u, k], weights[u, k] = j, w
    rows = [model._rows.row(r) for r in range(len(model.items))]
    indptr = np.cumsum([0] + [len(cols) for cols, _ in rows])
    indices = np.concatenate([cols for cols, _ in rows] or [np.zeros(0, dtype=np.int32)])
    data = np.concatenate([vals for _, vals in rows] or [np.zeros(0, dtype=np.float32)])
    return {"history_items": items, "history_weights": weights, "indptr": indptr, "indices": indices, "data": data}


def _assert_serves_like(view: ServingModel, original: OnlineLearner, users: list[str]) -> None:
    model = original.model
    assert view.model.items.ids == model.items.ids
    for user in users:
        np.testing.assert_array_equal(view.model.score_all(user), model.score_all(user))
        seen = set(model.recent_items(user)[:2])
        assert view.recommend(user, 10, seen) == ServingModel(
            0, model, list(original.popularity.items.ids), original.popularity.counts.copy(), 0
        ).recommend(user, 10, seen)
        probe = model.items.ids[:20:3]
        assert [view.model.predict_one(user, item) for item in probe] == [
            model.predict_one(user, item) for item in probe
        ]


@pytest.mark.parametrize("seed", [1, 2])
def test_checkpoints_load_and_restart_exactly_like_the_original(seed: int) -> None:
    events = _events(seed, 6_000)
    original = _learner()
    restarted: OnlineLearner | None = None  # a worker restarted from the previous checkpoint
    users = [f"u{k}" for k in range(0, 300, 7)] + ["nobody"]
    for n, chunk in enumerate(events[i : i + 700] for i in range(0, len(events), 700)):
        _learn(original, chunk)
        if restarted is not None:
            _learn(restarted, chunk)
        blob = original.to_bytes()
        _, arrays = codec.decode(blob)
        for name, expected in _reference_state_arrays(original.model).items():
            np.testing.assert_array_equal(arrays[name], expected, err_msg=f"{name} after chunk {n}")
        if restarted is not None:
            assert restarted.to_bytes() == blob, f"a restarted worker saves different bytes after chunk {n}"
            _assert_serves_like(ServingModel.from_bytes(restarted.to_bytes(), version=n), original, users)
        _assert_serves_like(ServingModel.from_bytes(blob, version=n), original, users)
        restarted = OnlineLearner.from_bytes(blob)


def test_a_snapshot_without_saved_damping_still_loads() -> None:
    """Snapshots written before the damping arrays were saved recompute them (equal up to rounding)."""
    learner = _learner()
    _learn(learner, _events(3, 2_000))
    header, arrays = codec.decode(learner.to_bytes())
    old = codec.encode(header, {k: v for k, v in arrays.items() if k not in ("row_damping", "candidate_damping")})
    view = ServingModel.from_bytes(old, version=1)
    for user in ("u1", "u2", "u50"):
        np.testing.assert_allclose(view.model.score_all(user), learner.model.score_all(user), rtol=1e-12)


def test_loading_does_not_write_into_the_snapshot_arrays_it_was_given() -> None:
    learner = _learner()
    _learn(learner, _events(4, 1_000))
    state = learner.model.to_state()
    kept = {name: array.copy() for name, array in state.arrays.items()}
    restored = ItemCooccurrence.from_state(state)
    for user, item, _, _ in _events(5, 500):
        restored.learn_one(user, item, 1.0)
    restored.to_state()
    for name, array in state.arrays.items():
        np.testing.assert_array_equal(array, kept[name], err_msg=name)


def test_sparse_rows_read_a_loaded_pool_in_place_and_copy_it_once_to_learn() -> None:
    f32 = np.float32
    source = SparseRows()
    source.add_rows(3)
    source.add_pairs({2: 1.0}, 0, 1.0, 0.9, 1.0, 0.5)  # item 0 after item 2: C[2, 0] += 1, C[0, 2] += 0.5
    source.add_pairs({2: 1.0, 0: 1.0}, 1, 1.0, 0.9, 1.0, 0.5)  # item 1 after 2 then 0: pairs 0.9 and 1
    indptr, indices, data = source.to_csr()
    assert indptr.tolist() == [0, 2, 4, 6] and indices.tolist() == [2, 1, 0, 2, 0, 1]
    assert data.tolist() == [0.5, 1.0, 0.5, f32(0.45), 1.0, f32(0.9)]
    rows = SparseRows.from_csr(indptr, indices, data, n_cols=4)
    assert rows.row(1)[0].tolist() == [0, 2] and rows.row(1)[1].tolist() == [0.5, f32(0.45)]
    assert np.shares_memory(rows.row(2)[1], data)  # read in place: loading copies nothing
    rows.add_pairs({0: 2.0}, 1, 1.0, 0.9, 1.0, 1.0)  # existing entries only
    assert not np.shares_memory(rows.row(2)[1], data)  # the pool was copied to be written
    assert data.tolist() == [0.5, 1.0, 0.5, f32(0.45), 1.0, f32(0.9)]  # the loaded arrays are left alone
    assert [rows.get(0, c) for c in range(3)] == [0.0, 3.0, 0.5] and rows.get(1, 0) == 2.5
    rows.add_rows(1)
    rows.add_pairs({3: 1.0}, 1, 2.0, 0.9, 1.0, 1.0)  # a new row, and a new entry at the end of row 1
    indptr, indices, data = rows.to_csr()
    assert indptr.tolist() == [0, 2, 5, 7, 8]
    assert indices.tolist() == [2, 1, 0, 2, 3, 0, 1, 1]
    assert data.tolist() == [0.5, 3.0, 2.5, f32(0.45), 2.0, 1.0, f32(0.9), 2.0]
    assert rows.nnz == 8 and len(rows) == 4


@pytest.mark.parametrize("compiled", [True, False], ids=["rows-gathered-in-c", "a-view-per-row"])
def test_a_snapshot_encoded_from_the_rows_pieces_is_the_one_from_joined_arrays(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``to_bytes`` hands the co-occurrence rows to the codec as pieces (no further joined copy): the same bytes
    as encoding ``to_state``'s joined arrays, and the same rows as read one by one, for a learned model, one
    loaded (its pool end to end: views of it) and one loaded then learned (its rows with room to grow)."""
    if not compiled:  # without the compiled loops the rows go to the codec as a view each
        monkeypatch.setattr(kernels, "_use", None)
    learner = _learner()
    _learn(learner, _events(6, 3_000))
    loaded = OnlineLearner.from_bytes(learner.to_bytes())
    learned = OnlineLearner.from_bytes(learner.to_bytes())
    _learn(learned, _events(7, 20))
    for one in (learner, loaded, learned):
        rows = one.model.rows
        chunks = rows.to_csr_chunks()[1]
        pieces = len(chunks.parts)
        assert pieces == 1 if compiled or one is loaded else pieces == len(rows)  # gathered, or a view each
        assert chunks.owned is (compiled and one is not loaded)  # gathered: new arrays, not copied again
        state = one.model.to_state()
        header, arrays = codec.decode(one.to_bytes())
        assert [k for k in arrays if k in state.arrays] == list(state.arrays)
        assert codec.encode(header, arrays) == one.to_bytes()
        for name, values in state.arrays.items():
            assert arrays[name].dtype == values.dtype and np.array_equal(arrays[name], values), name
        indptr = arrays["indptr"]
        for r in range(len(rows)):
            cols, vals = rows.row(r)
            lo, hi = int(indptr[r]), int(indptr[r + 1])
            assert (
                arrays["indices"][lo:hi].tolist() == cols.tolist() and arrays["data"][lo:hi].tolist() == vals.tolist()
            )


def test_chunks_that_do_not_add_up_to_their_declared_length_are_refused() -> None:
    pieces = [np.arange(3, dtype=np.int64)]  # 8-byte items declared as 4-byte ones
    with pytest.raises(codec.CodecError, match="do not add up"):
        codec.encode({}, {"x": codec.Chunks("<i4", pieces, 3)})
    blob = codec.encode({}, {"x": codec.Chunks("<i4", [np.arange(2, dtype=np.int32), np.arange(3, dtype=np.int32)], 5)})
    assert codec.decode(blob)[1]["x"].tolist() == [0, 1, 0, 1, 2]


def test_chunks_in_another_byte_order_are_converted_to_the_snapshots() -> None:
    """A big-endian host's native buffers: encoded as little-endian, as a plain array would be."""
    pieces = [np.array([1, 2], dtype=">i4"), np.array([3], dtype=">i4")]
    blob = codec.encode({}, {"x": codec.Chunks(">i4", pieces, 3)})
    assert blob == codec.encode({}, {"x": np.array([1, 2, 3], dtype=">i4")})
    assert codec.decode(blob)[1]["x"].tolist() == [1, 2, 3]
    with pytest.raises(codec.CodecError, match="not 2 items"):
        codec.Chunks("<i4", pieces, 2).array()  # more bytes than declared: refused, not cut


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-join", "python-join"])
def test_a_snapshot_made_later_is_the_learners_state_when_it_was_asked_for(compiled: bool) -> None:
    """``to_bytes_later`` (a worker's whole snapshot, joined in a thread while it learns on): what the returned
    function makes after more learning is ``to_bytes`` of the learner when it was called, for a learned model
    (its rows gathered into new arrays, not copied again), a loaded one (its pool end to end: the rows are views
    of it, copied at the call) and one loaded then learned."""
    with loops(compiled):
        learner = _learner()
        _learn(learner, _events(8, 3_000))
        loaded = OnlineLearner.from_bytes(learner.to_bytes())
        learned = OnlineLearner.from_bytes(learner.to_bytes())
        _learn(learned, _events(9, 20))
        for seed, one in enumerate((learner, loaded, learned)):
            now = one.to_bytes()
            later = one.to_bytes_later()
            _learn(one, _events(10 + seed, 500))  # changes the pool, the histories, the counts in place
            assert one.to_bytes() != now
            assert later() == now


def test_encode_later_copies_what_may_change_and_leaves_owned_pieces_to_the_join() -> None:
    """Arrays (and the pieces of Chunks not ``owned``) are read at the call; owned pieces, new arrays that nothing
    else holds, are read by the join (not copied twice), so a change to one shows."""
    array, piece, owned = np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32), np.arange(2, dtype=np.int32)
    arrays = {"a": array, "c": codec.Chunks("<i4", [piece], 2), "o": codec.Chunks("<i4", [owned], 2, owned=True)}
    expected = codec.encode({"kind": "demo"}, arrays)
    later = codec.encode_later({"kind": "demo"}, arrays)
    array[:] = piece[:] = 7
    assert codec.encode({"kind": "demo"}, arrays) != expected
    assert later() == expected
    owned[:] = 9
    assert codec.decode(later())[1]["o"].tolist() == [9, 9]

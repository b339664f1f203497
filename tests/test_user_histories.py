"""The users' remembered items written to their snapshot arrays (learner/item_cooccurrence.py, UserHistories): the
compiled writer gives what numpy's gives, and refuses what it cannot write without writing anything."""

from __future__ import annotations

import numpy as np
import pytest

from learner import kernels
from learner.item_cooccurrence import UserHistories

WINDOW = 6
USERS = 300


def _histories() -> UserHistories:
    rng = np.random.default_rng(7)
    histories = UserHistories(WINDOW)
    for _ in range(USERS):
        items = rng.choice(1_000, size=int(rng.integers(0, WINDOW + 1)), replace=False).tolist()
        histories.append({int(j): float(rng.choice([0.5, 1.0, 2.5, 1e-300, 3.75])) for j in items})
    return histories


def _learn(histories: UserHistories, changes: list[tuple[int, int, int, float]]) -> None:
    """Each change: the user's oldest items dropped (0 to 2: the row gets shorter, as long or longer), then an item
    (new, or moved to the newest) weighted."""
    for u, drops, item, weight in changes:
        row = histories.for_update(u)
        for _ in range(min(drops, len(row))):
            row.pop(next(iter(row)))
        row.pop(item, None)
        row[item] = weight
        while len(row) > WINDOW:
            row.pop(next(iter(row)))


@pytest.mark.usefixtures("built")
def test_the_compiled_writer_writes_what_numpy_writes() -> None:
    compiled, plain = _histories(), _histories()
    items, weights = compiled.to_arrays()
    with kernels.numpy_only():
        want_items, want_weights = plain.to_arrays()
    assert items.tolist() == want_items.tolist() and weights.tolist() == want_weights.tolist()
    assert (items >= 0).sum() > USERS  # (not all empty)
    rng = np.random.default_rng(5)
    for _ in range(6):  # some users learn (their dicts change: longer, shorter, reordered); a delta carries some
        users = rng.choice(USERS, size=60, replace=False).tolist()
        changes = [(u, int(rng.integers(0, 3)), int(rng.integers(0, 1_000)), float(rng.random())) for u in users]
        _learn(compiled, changes)
        _learn(plain, changes)
        carried = np.sort(rng.choice(USERS, size=80, replace=False)).astype(np.int64)
        got = compiled.arrays_of(carried)
        with kernels.numpy_only():
            want = plain.arrays_of(carried)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    items, weights = compiled.to_arrays()
    with kernels.numpy_only():
        want_items, want_weights = plain.to_arrays()
    assert items.tolist() == want_items.tolist() and weights.tolist() == want_weights.tolist()


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(
    ("rows", "user", "error"),
    [
        ([{1: 1.0}, dict.fromkeys(range(WINDOW + 1), 1.0)], 1, ValueError),  # longer than the window
        ([{1: 1.0}, None], 1, ValueError),  # not a dict
        ([{1: 1.0}, {"a": 1.0}], 1, TypeError),  # a key that is not an item row
        ([{1: 1.0}, {2: "1.0"}], 1, TypeError),  # a weight that is not a number
        ([{1: 1.0}, {2**31: 1.0}], 1, OverflowError),  # an item row past int32
        ([{1: 1.0}, {2: 1.0}], 2, IndexError),  # a user past the arrays
        ([{1: 1.0}], 1, IndexError),  # a user within the arrays, past the rows
        ([{1: 1.0}, {2: 1.0}], -1, IndexError),
    ],
)
def test_the_compiled_writer_refuses_and_writes_nothing(rows: list, user: int, error: type[Exception]) -> None:
    compiled = kernels.compiled()
    assert compiled is not None
    items = np.full((2, WINDOW), 9, dtype=np.int32)
    weights = np.full((2, WINDOW), 9.0)
    with pytest.raises(error):  # user 0 first, fine: not written either
        compiled.write_histories(rows, np.array([0, user], dtype=np.int64), items, weights, WINDOW)
    assert (items == 9).all() and (weights == 9.0).all()

"""IdIndex: dense rows, one shared int object per row number, and shared id strings."""

from __future__ import annotations

import random
import threading

from learner.id_index import IdIndex, reusing, row_object

# CPython caches the ints up to 256, so sharing is only visible above them.
N = 2_000


def _fresh(text: str) -> str:
    """An equal string that is a different object (as ids decoded from a message or a snapshot are)."""
    return "".join(list(text))


def test_rows_are_dense_in_order_of_first_appearance_and_match_a_plain_dict() -> None:
    rng = random.Random(0)
    index, expected = IdIndex(), {}
    for _ in range(5 * N):
        id_ = f"id-{rng.randrange(N)}"
        row, created = index.add(id_)
        assert created == (id_ not in expected)
        expected.setdefault(id_, len(expected))
        assert row == expected[id_]
    assert index.ids == list(expected)
    assert len(index) == len(expected)
    assert all(index.get(i) == r for i, r in expected.items())
    assert index.get("never") is None and "never" not in index
    assert index.rows(["id-2", "never", "id-1"]) == [expected[i] for i in ("id-2", "id-1") if i in expected]


def test_two_indexes_share_the_int_object_of_each_row() -> None:
    users = IdIndex(f"user-{i}" for i in range(N))
    items = IdIndex()
    for i in range(N // 2):
        items.add(f"item-{i}")
    restored = IdIndex(list(users.ids))  # as from_state builds an index from a snapshot's ids
    for row in range(300, N // 2):
        u, i = users.get(f"user-{row}"), items.get(f"item-{row}")
        assert u == row and i == row
        assert u is i, f"row {row}: each index made its own int"
        assert restored.get(f"user-{row}") is u
    assert row_object(N - 1) is users.get(f"user-{N - 1}")


def test_the_row_pool_stays_aligned_when_threads_grow_it() -> None:
    start = threading.Barrier(4)
    built: list[IdIndex] = []

    def build(prefix: str) -> None:
        start.wait()
        index = IdIndex()
        for i in range(3 * N):
            index.add(f"{prefix}-{i}")
        built.append(index)

    threads = [threading.Thread(target=build, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 4
    for index in built:
        prefix = index.ids[0].split("-")[0]
        assert all(index.get(f"{prefix}-{i}") == i for i in range(3 * N))
    assert all(row_object(r) == r for r in range(3 * N))


def test_canonical_gives_the_index_own_string_objects() -> None:
    index = IdIndex(f"item-{i}" for i in range(50))
    asked = [_fresh("item-7"), "unknown", _fresh("item-3"), _fresh("item-7")]
    assert asked[0] is not index.ids[7]
    out = index.canonical(asked)
    assert out == asked
    assert out[0] is index.ids[7] and out[2] is index.ids[3] and out[3] is index.ids[7]
    assert out[1] is asked[1]
    assert len(index) == 50  # canonical never adds


def test_building_from_a_list_equals_adding_one_by_one_with_or_without_repeats() -> None:
    rng = random.Random(1)
    distinct = [f"d-{k}" for k in rng.sample(range(10 * N), N)]
    repeated = [f"r-{rng.randrange(N)}" for _ in range(3 * N)]
    for ids in (distinct, repeated):
        one_by_one = IdIndex()
        for id_ in ids:
            one_by_one.add(id_)
        built = IdIndex(ids)
        assert built.ids == one_by_one.ids and built._rows == one_by_one._rows
        assert all(built.get(i) is row_object(r) for r, i in enumerate(built.ids))
        assert built.add("new") == (len(one_by_one), True)


def test_an_index_built_while_reusing_equals_a_fresh_one_and_leaves_the_old_alone() -> None:
    old = IdIndex([f"id-{i}" for i in range(1_000)])
    extended = [f"id-{i}" for i in range(1_000)] + ["new-1", "id-5", "new-2"]  # a repeat in the tail too
    with reusing([IdIndex(["unrelated"]), old]):
        reused = IdIndex(extended)
    fresh = IdIndex(extended)
    assert reused.ids == fresh.ids and all(reused.get(i) == fresh.get(i) for i in extended)
    assert reused.ids[0] is old.ids[0]  # it started from the old index (its strings), ...
    assert len(old) == 1_000 and old.get("new-1") is None  # ... which is unchanged


def test_a_list_that_does_not_start_with_the_old_ids_is_built_from_scratch() -> None:
    old = IdIndex(["a", "b", "c"])
    for ids in (["a", "x", "c", "d"], ["a", "b"], ["z", "y", "x", "c"]):  # diverges; shorter; other ends
        with reusing([old]):
            index = IdIndex(ids)
        assert index.ids == ids and [index.get(i) for i in ids] == list(range(len(ids)))

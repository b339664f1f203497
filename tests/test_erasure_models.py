"""Erasing a user from every model kind (learner.erasure): scored as a user never seen, gone from the snapshot, the
other users untouched, a fresh start if they come back."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from learner import kernels
from learner.base import ModelState, is_personal
from learner.erasure import Erasures, fingerprint
from learner.id_index import ERASED_PREFIX, IdIndex
from learner.online_learner import OnlineLearner
from tests.test_models import KINDS, _learned

ERASED = "a-user0"


def _user_ids(state: ModelState) -> list[str]:
    """Every user id a model's state names (a blend's: each part's)."""
    return [i for name, ids in state.ids.items() if name.endswith("users") for i in ids]


@pytest.mark.parametrize("kind", KINDS)
def test_a_forgotten_user_is_scored_as_one_never_seen_and_the_others_as_before(kind: str) -> None:
    learner = _learned(kind)
    model = learner.model
    personal = is_personal(model)
    assert model.knows_user(ERASED)
    other = model.score_all("b-user1")
    stranger = model.score_all("nobody")
    if personal:
        assert not np.array_equal(model.score_all(ERASED), stranger)  # (else the test below proves nothing)
    assert learner.forget_users([ERASED, "nobody"]) == int(personal)  # (one of them held)
    assert learner.forget_users([ERASED]) == 0  # nothing of them is left
    assert np.array_equal(model.score_all(ERASED), stranger)
    assert model.predict_one(ERASED, "a1") == model.predict_one("nobody", "a1")
    assert np.array_equal(model.score_all("b-user1"), other)
    assert model.knows_user(ERASED) is not personal  # (popularity knows everyone the same)


@pytest.mark.parametrize("kind", KINDS)
def test_the_snapshot_after_names_no_forgotten_user_and_restores_the_same_scores(kind: str) -> None:
    learner = _learned(kind)
    personal = is_personal(learner.model)
    assert (ERASED.encode() in learner.to_bytes()) is personal  # (in the snapshot before: else this proves nothing)
    learner.forget_users([ERASED])
    blob = learner.to_bytes()
    assert ERASED.encode() not in blob
    restored = OnlineLearner.from_bytes(blob)
    ids = _user_ids(restored.model.to_state())
    assert ERASED not in ids
    assert any(i.startswith(ERASED_PREFIX) for i in ids) is personal  # the row is kept, its id blanked
    assert np.array_equal(restored.model.score_all(ERASED), learner.model.score_all("nobody"))
    assert np.array_equal(restored.model.score_all("b-user1"), learner.model.score_all("b-user1"))


def _user_rows(state: ModelState) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each user id of the state (a blend's parts' each) -> (array name, its row) of every per-user array: those
    whose first dimension is the part's number of users."""
    rows: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, ids in state.ids.items():
        if not key.endswith("users"):
            continue
        part = key[: -len("users")]  # "" or a blend part's "0."
        items = len(state.ids[f"{part}items"])
        assert items != len(ids)  # (else an item array could pass for a user array)
        arrays = [(name, a) for name, a in state.arrays.items() if name.startswith(part) and a.shape[:1] == (len(ids),)]
        assert arrays  # (every model with users keeps something of each)
        for row, user in enumerate(ids):
            rows.setdefault(user, []).extend((name, a[row]) for name, a in arrays)
    return rows


@pytest.mark.parametrize("kind", KINDS)
def test_a_forgotten_users_rows_hold_nothing_of_them_in_the_snapshot(kind: str) -> None:
    learner = _learned(kind)
    rows = _user_rows(learner.model.to_state())
    assert (ERASED in rows) is is_personal(learner.model)
    if ERASED in rows:  # (else the check below proves nothing)
        assert any(np.any((row != 0) & (row != -1)) for _, row in rows[ERASED])
    learner.forget_users([ERASED])
    restored = OnlineLearner.from_bytes(learner.to_bytes())
    for user, arrays in _user_rows(restored.model.to_state()).items():
        if user.startswith(ERASED_PREFIX):  # factors 0, remembered items -1 (none) with weight 0
            for name, row in arrays:
                assert np.all((row == 0) | (row == -1)), (name, row)
    if is_personal(learner.model):
        assert any(user.startswith(ERASED_PREFIX) for user in _user_rows(restored.model.to_state()))
    assert ERASED not in getattr(getattr(learner.model, "river", None), "u_latents", {})  # (River's own, live)


@pytest.mark.parametrize("kind", KINDS)
def test_a_forgotten_user_who_comes_back_starts_afresh(kind: str) -> None:
    learner = _learned(kind)
    users_before = len(_user_ids(learner.model.to_state()))
    learner.forget_users([ERASED])
    for ts in (1_800_000_000.0, 1_800_000_060.0):
        learner.learn(ERASED, "a1", "view", None, None, ts=ts)
        learner.learn(ERASED, "a2", "like", None, None, ts=ts)
    assert learner.model.knows_user(ERASED)
    ids = _user_ids(learner.model.to_state())
    # a new row (the erased one stays blank), in each part of a blend that holds users
    assert len(ids) == users_before + ids.count(ERASED)
    assert (ids.count(ERASED) > 0) is is_personal(learner.model)


@pytest.mark.parametrize("compiled", [True, False], ids=["packed", "dict"])
def test_blank_keeps_every_row_and_names_the_erased_one_with_no_valid_id(compiled: bool) -> None:
    with contextlib.nullcontext() if compiled else kernels.numpy_only():
        index = IdIndex(["a", "b", "c", "d", "e"])
        assert index.blank(["b", "zzz", "d", "b"]) == [1, 3]  # (those held, each once)
        assert (type(index._table).__name__ == "_DictTable") is (not compiled or kernels.compiled() is None)
        assert index.blank(["b"]) == [] and index.blank([]) == []
        assert list(index.ids) == ["a", f"{ERASED_PREFIX}1", "c", f"{ERASED_PREFIX}3", "e"]
        assert index.get("b") is None and index.get("c") == 2 and index.get("e") == 4
        assert index.add("b") == (5, True)  # back: a new row


@pytest.mark.parametrize("kind", KINDS)
def test_several_users_are_forgotten_at_once_and_only_they(kind: str) -> None:
    learner = _learned(kind)
    model = learner.model
    erased = ["a-user0", "b-user3", "a-user4"]
    kept = [u for u in (f"{g}-user{n}" for n in range(12) for g in "ab") if u not in erased and model.knows_user(u)]
    scores = {u: model.score_all(u) for u in kept}
    stranger = model.score_all("nobody")
    assert learner.forget_users(erased) == (len(erased) if is_personal(model) else 0)
    for user in erased:
        assert np.array_equal(model.score_all(user), stranger)
    for user in kept:
        assert np.array_equal(model.score_all(user), scores[user]) and model.knows_user(user)


def test_an_erased_users_events_are_dropped_up_to_and_at_the_request_and_learned_after() -> None:
    erased = Erasures(kept_seconds=100.0, entries={fingerprint("u1"): 50.0})
    erased.add(fingerprint("u2"), 40.0)
    erased.add(fingerprint("u2"), 30.0)  # an earlier request does not move it back
    assert erased.latest == 50.0 and len(erased) == 2
    assert [erased.drops("u1", ts) for ts in (10.0, 50.0, math.nextafter(50.0, 99))] == [True, True, False]
    assert [erased.drops("u2", ts) for ts in (40.0, 45.0)] == [True, False]
    assert not erased.drops("u3", 10.0)
    erased.add(fingerprint("u3"), 20.0)  # (its lookup above is not kept past a change)
    assert erased.drops("u3", 10.0)
    assert erased.prune(now=145.0) == [fingerprint("u2"), fingerprint("u3")]  # requested more than 100 s before
    assert erased.latest == 50.0 and not erased.drops("u2", 10.0) and erased.drops("u1", 10.0)
    assert erased.prune(now=151.0) == [fingerprint("u1")]
    assert erased.latest == float("-inf") and len(erased) == 0

"""The model guard on the progressive loss: quiet on clean streams, pauses on degradation, resumes."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from learner.gate.gate import GateConfig, default_model_guard
from learner.gate.model_guard import ModelGuard
from learner.online_learner import OnlineLearner
from tests.test_gate_rules import movielens_events


def calibrated(n: int, seed: int, flip: bool = False) -> Iterator[tuple[float, float]]:
    """(label, prediction) from a model whose probabilities are right; ``flip`` inverts the labels."""
    rnd = random.Random(seed)
    for _ in range(n):
        p = rnd.uniform(0.05, 0.95)
        y = 1.0 if rnd.random() < p else 0.0
        yield (1.0 - y if flip else y), p


def test_a_stationary_stream_never_pauses() -> None:
    guard = ModelGuard()
    assert not any(guard.update_prediction(y, p) for y, p in calibrated(300_000, seed=1))
    assert guard.pauses == 0
    assert guard.reference_loss == pytest.approx(guard.recent_loss, rel=0.1)


def test_flipped_labels_pause_learning_quickly_and_freeze_the_reference() -> None:
    guard = ModelGuard()
    for y, p in calibrated(30_000, seed=2):
        guard.update_prediction(y, p)
    delay = next(k for k, (y, p) in enumerate(calibrated(5_000, seed=3, flip=True)) if guard.update_prediction(y, p))
    assert delay < 600, delay
    assert guard.paused and guard.pauses == 1
    assert guard.onset == 30_000 + delay + 1 - guard.recent_window + 1
    reference = guard.reference_loss
    for y, p in calibrated(5_000, seed=4, flip=True):
        assert guard.update_prediction(y, p)
    assert guard.reference_loss == reference  # the yardstick stays the good model's


def test_it_resumes_by_itself_once_the_stream_is_healthy_again() -> None:
    guard = ModelGuard(recent_window=1_000, resume_events=2_000)
    for y, p in calibrated(30_000, seed=5):
        guard.update_prediction(y, p)
    for y, p in calibrated(3_000, seed=6, flip=True):
        guard.update_prediction(y, p)
    assert guard.paused
    healthy = [guard.update_prediction(y, p) for y, p in calibrated(10_000, seed=7)]
    back = healthy.index(False)
    assert 2_000 <= back <= 1_000 + 2_000 + 200, back  # the bad losses leave the window, then 2,000 healthy ones
    assert not any(healthy[back:])
    assert guard.resumes == 1


def test_a_lasting_change_needs_the_operator_who_sets_the_new_reference() -> None:
    guard = ModelGuard()
    for _ in range(20_000):
        guard.update(0.4)
    for _ in range(30_000):
        guard.update(0.9)  # the world changed for good; the frozen model will not catch up
    assert guard.paused and guard.resumes == 0
    guard.resume()
    assert not guard.paused and guard.reference_loss == pytest.approx(0.9)
    assert not any(guard.update(0.9) for _ in range(30_000))


def test_nan_losses_are_ignored_and_bad_settings_refused() -> None:
    guard = ModelGuard()
    assert guard.update(math.nan) is False and guard.updates == 0
    with pytest.raises(ValueError):
        ModelGuard(degrade_ratio=1.1, resume_ratio=1.2)
    assert default_model_guard(GateConfig(guard_recent_window=77)).recent_window == 77


# -- with the real learner ------------------------------------------------------------------


def taste(n: int, seed: int, flip: bool = False) -> Iterator[tuple[str, str, str]]:
    """Two taste groups: even users like even items 85% of the time, odd ones odd items."""
    rnd = random.Random(seed)
    for _ in range(n):
        user, item = rnd.randrange(400), rnd.randrange(60)
        liked = rnd.random() < (0.85 if user % 2 == item % 2 else 0.15)
        yield f"u{user}", f"i{item}", "like" if liked != flip else "skip"


def test_real_learner_pauses_on_flipped_labels_and_resumes_from_the_last_good_checkpoint() -> None:
    """The worker's loop: predict, guard, learn while not paused; on a pause restore a checkpoint from before it."""
    learner, guard = OnlineLearner(), ModelGuard()
    checkpoints: list[tuple[int, bytes]] = []
    history: list[tuple[str, bool]] = []

    def feed(events: Iterator[tuple[str, str, str]], phase: str) -> None:
        nonlocal learner
        for user, item, kind in events:
            was_paused = guard.paused
            paused = guard.update_prediction(1.0 if kind == "like" else 0.0, learner.model.predict_one(user, item))
            if paused and not was_paused:
                assert guard.onset is not None
                good = [blob for at, blob in checkpoints if at < guard.onset]
                learner = OnlineLearner.from_bytes(good[-1])
            if not paused:
                learner.learn(user, item, kind, None, None)
                if guard.updates % 500 == 0:
                    checkpoints.append((guard.updates, learner.to_bytes()))
                    del checkpoints[:-20]
            history.append((phase, paused))

    feed(taste(40_000, seed=1), "clean")
    feed(taste(3_000, seed=2, flip=True), "flipped")
    feed(taste(12_000, seed=3), "healthy again")
    assert not any(paused for phase, paused in history if phase == "clean")
    flipped = [paused for phase, paused in history if phase == "flipped"]
    assert True in flipped and flipped.index(True) < 1_000
    after = [paused for phase, paused in history if phase == "healthy again"]
    assert guard.pauses == 1 and guard.resumes == 1
    assert after.index(False) < 1_000 + 2_000 + 500 and not any(after[after.index(False) :])


def test_real_learner_on_clean_movielens_never_pauses() -> None:
    learner, guard = OnlineLearner(), ModelGuard()
    worst = 0.0
    for e in movielens_events():
        prediction = learner.learn(e.user_id, e.item_id, e.type, None, None, ts=e.ts)
        if prediction is not None:
            assert not guard.update_prediction(1.0, prediction)
            if guard.updates > guard.min_reference + guard.recent_window:
                worst = max(worst, guard.recent_loss / guard.reference_loss)
    print(f"\nMovieLens: {guard.updates} labelled events, worst recent/reference loss {worst:.2f} (pause at 1.3)")
    assert guard.pauses == 0


def test_a_restart_judges_the_new_model_against_its_own_history() -> None:
    guard = ModelGuard(recent_window=50, reference_window=500, min_reference=200, resume_events=100)
    for _ in range(1_000):
        guard.update(0.2)  # the abandoned model's level
    # the promoted model's own window: a higher level (it learned less), one NaN and one loss past the cap
    guard.restart([0.9] * 298 + [math.nan, 40.0])
    assert guard.status()["reference_loss"] == pytest.approx((0.9 * 298 + guard.loss_cap) / 299)
    assert not any(guard.update(0.9) for _ in range(200))  # its own level: no pause (against 0.2 it would)
    assert any(guard.update(3.0) for _ in range(50)) and guard.pauses == 1  # bad data after the promotion: paused


def test_a_restart_leaves_a_paused_guard_and_its_reference_alone() -> None:
    guard = ModelGuard(recent_window=50, reference_window=500, min_reference=200, resume_events=100)
    for _ in range(1_000):
        guard.update(0.2)
    assert any(guard.update(3.0) for _ in range(50))
    before = guard.status()
    guard.restart([0.9] * 300)
    assert guard.paused and guard.status() == before


def _phases(seed: int) -> Iterator[tuple[str, float]]:
    """Operations on a guard: losses in phases (healthy, degraded, NaN, negative, above the cap) between an
    operator's resume, a restart with a history, and a restore after a restart of the worker."""
    rnd = random.Random(seed)
    # first a pause, a healthy run cut short by a relapse, and a resume by itself
    for mean, n in ((0.5, 600), (2.0, 600), (0.5, 100), (2.0, 20), (0.5, 600)):
        yield from (("loss", rnd.uniform(mean - 0.2, mean + 0.2)) for _ in range(n))
    for _ in range(40):
        kind = rnd.choice(["healthy", "healthy", "degraded", "odd", "resume", "restart", "restore"])
        if kind in ("resume", "restart", "restore"):
            yield kind, rnd.uniform(0.2, 1.5)
            continue
        for _ in range(rnd.choice([10, 300, 2_500])):
            if kind == "healthy":
                yield "loss", rnd.uniform(0.3, 0.7)
            elif kind == "degraded":
                yield "loss", rnd.uniform(1.0, 3.0)
            else:
                yield "loss", rnd.choice([math.nan, -1.0, 9.0, 0.0, 5.0, math.inf])


def _trace(guard: ModelGuard, seed: int) -> list[object]:
    trace: list[object] = []
    for kind, value in _phases(seed):
        if kind == "loss":
            trace.append(guard.update(value))
            continue
        if kind == "resume":
            guard.resume()
        elif kind == "restart":
            guard.restart([value, math.nan, value * 2, 7.0])
        else:
            guard.restore_paused(value, 50)
        trace.append((kind, guard.status(), guard.reference_state(), guard.onset, guard.updates))
    trace.append((guard.status(), guard.reference_state(), guard.onset, guard.updates))
    return trace


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_guard_is_the_python_one(seed: int) -> None:
    """``learner._kernels.GuardCore`` takes the same steps as the Python guard: the same answer to every update
    and the same state after every operator action, through pauses, resumes, restarts and odd losses."""
    from tests.conftest import loops

    settings = {"recent_window": 50, "reference_window": 400, "min_reference": 100, "resume_events": 80}
    with loops(compiled=False):
        python = ModelGuard(**settings)
    with loops(compiled=True):
        compiled = ModelGuard(**settings)
    assert type(python._core) is not type(compiled._core)
    expected = _trace(python, seed)
    assert _trace(compiled, seed) == expected
    for loss in (10**400, -(10**400), 3):  # ints too, beyond a double's range included (capped, floored)
        assert compiled.update(loss) == python.update(loss)  # type: ignore[arg-type]
    assert compiled.status() == python.status()
    assert python.pauses > 0 and python.resumes > 0  # the phases made it pause and resume by itself

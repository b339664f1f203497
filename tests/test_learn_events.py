"""The worker's compiled loop over the events it learns plainly (``kernel.learn_events``, in
``EventProcessor._handle_events``) against the same loop in Python: the same stream handled by both leaves the same
model, challenger, pending sets, dead letters, counts, hit samples, guard and metrics; also when the guard pauses
mid-chunk and when learning raises mid-chunk."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import stream.processor as processor_module
from learner import kernels
from learner.challenger import PromotionRule
from learner.gate.model_guard import ModelGuard
from recstream import components, metrics
from recstream.settings import Settings
from recstream.share_budget import ShareBudget
from stream.processor import EventProcessor, Record
from tests.clock import BASE, iso
from tests.conftest import skip_unless_ci
from tests.transport import NothingLearnedStore, Transport

NOW = BASE.timestamp() + 3_600.0  # the processor's clock (fixed: the lags and the verdicts are the same in both runs)
TYPES = ("view", "like", "skip", "share", "like", "view")


def _events(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    """A stream over 9 users and 13 items, every type, watch times, some events from a recommendation (a str
    ``rec_id``), some with a ``rec_id`` that is not one, a repeat of an earlier event now and then, one far in the
    future (the gate holds it)."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = TYPES[i % len(TYPES)]
        event: dict[str, Any] = {"event_id": f"{prefix}{i}", "user_id": f"u{i % 9}", "item_id": f"v{(i * 7) % 13}",
                                 "type": kind, "ts": iso(i)}  # fmt: skip
        if kind in ("view", "skip"):
            event.update(watch_seconds=float(i % 40), item_duration_seconds=30.0)
        if i % 7 == 3:
            event["context"] = {"rec_id": f"r{i}"}
        elif i % 11 == 5:
            event["context"] = {"rec_id": i, "page": "home"}
        if i % 50 == 49:
            event = {**out[i - 30]}  # a repeat: a duplicate of a learned event
        if i == 77:
            event["ts"] = iso(10 * 86_400.0)  # ahead of the clock: held by the gate
        out.append(event)
    return out


class PausingGuard(ModelGuard):
    """A model guard that says to pause from its ``after``-th update on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls, self.after = 0, after
        core_update = self.update

        def update(loss: float) -> bool:
            self.calls += 1
            return bool(core_update(loss)) or self.calls >= self.after

        self.update = update  # type: ignore[method-assign]


@contextmanager
def _python_loop(compiled: bool) -> Iterator[None]:
    """The processor's loop with the compiled kernels (as built), or in Python (the kernels hidden from it alone)."""
    if compiled:
        yield
        return
    saved = processor_module.kernels
    processor_module.kernels = types.SimpleNamespace(compiled=lambda: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        processor_module.kernels = saved


def _counted() -> dict[str, float]:
    """The metrics the loop updates: events learned from a recommendation by type, and the lags' count and sum."""
    counts = {kind: metrics.RECOMMENDED_INTERACTIONS.labels(kind)._value.get() for kind in set(TYPES)}
    for metric in metrics.EVENT_TO_LEARNED_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith(("_count", "_sum")):
                counts[sample.name] = sample.value
    return counts


def _run(
    compiled: bool,
    messages: list[list[dict[str, Any]] | dict[str, Any]],
    guard: ModelGuard | None = None,
    failing_at: int | None = None,
    challenger: bool = True,
    challenger_failing_at: int | None = None,
) -> dict[str, Any]:
    """Process ``messages`` (each a batch message, or one event a message) as one batch with a processor of the
    default gate and model, a challenger, ``guard``, and a learner whose ``failing_at``-th learn() raises; what the
    processor holds after."""
    settings = Settings()
    transport = Transport()

    async def run() -> tuple[EventProcessor, BaseException | None]:
        processor = transport.processor(
            NothingLearnedStore(frozenset({"e5", "e12"})),  # type: ignore[arg-type]
            new_learner=lambda: components.new_learner(settings),
            gate=components.quality_gate(settings),
            guard=guard,
            clock=lambda: NOW,
            contestants={"other": lambda: components.new_learner(settings)} if challenger else None,
            promotion_rule=PromotionRule(sample_every=3),  # (a third of the positives: paired samples, in Python)
        )
        await processor.start()
        processor.hit_budget = ShareBudget(1.0, cap_seconds=1e9, clock=lambda: 0.0)  # every sample due is taken
        learner = processor.learner
        assert learner is not None
        if failing_at is not None:
            learn, calls = learner.learn, [0]

            def failing(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] == failing_at:
                    raise RuntimeError("learning failed")
                return learn(*args, **kwargs)

            learner.learn = failing  # type: ignore[method-assign]
        if challenger_failing_at is not None:
            other = processor.challengers["other"]
            other_learn, other_calls = other.learn, [0]

            def other_failing(*args: Any, **kwargs: Any) -> Any:
                other_calls[0] += 1
                if other_calls[0] == challenger_failing_at:
                    raise RuntimeError("the challenger's learning failed")
                return other_learn(*args, **kwargs)

            other.learn = other_failing  # type: ignore[method-assign]
        records = [
            Record("events", 0, offset, None, json.dumps(message).encode()) for offset, message in enumerate(messages)
        ]
        try:
            await processor.process(records)
        except RuntimeError as exc:
            return processor, exc
        return processor, None

    before = _counted()
    with _python_loop(compiled):
        processor, error = asyncio.run(run())
    after = _counted()
    learner = processor.learner
    assert learner is not None
    pending = processor._pending
    failed = processor._failed_event
    return {
        "error": None if error is None else str(error),
        "failed": None if failed is None or failed.event is None else failed.event.event_id,
        "model": learner.to_bytes(),
        "challengers": {name: c.to_bytes() for name, c in processor.challengers.items()},
        "event_ids": set(pending.event_ids),
        "seen": {user: set(items) for user, items in pending.seen.items()},
        "learned_since": pending.learned_since,
        "gate_counts": dict(pending.gate_counts),
        "positives": processor._positives_seen,
        "hits": list(processor._hits),
        "contests": {name: list(contest._samples) for name, contest in processor.contests.items()},
        "paused_since": processor.paused_since,
        "guard": None if guard is None else guard.status(),
        "letters": [(kind, letter.get("reason")) for kind, letter in transport.dead_letters],
        "handled": dict(processor.next_offsets),
        "counted": {name: after[name] - before[name] for name in after},
    }


def _both(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    return _run(True, *args, **kwargs), _run(False, *args, **kwargs)


def _assert_same(compiled: dict[str, Any], python: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    check(python)  # what the stream was made to exercise did happen
    for key in python:
        assert compiled[key] == python[key], key


def test_batch_messages_are_learned_as_the_python_loop_learns_them() -> None:
    stream = _events(1_200)
    broken = {"event_id": "bad", "item_id": "v1", "type": "like", "ts": iso(1)}  # no user: rejected
    messages: list[Any] = [stream[:500], [*stream[500:700], broken, *stream[700:1_000]], stream[1_000:]]

    def exercised(result: dict[str, Any]) -> None:
        assert result["error"] is None and result["paused_since"] is None
        assert result["learned_since"] > 1_000 and result["gate_counts"]["duplicate"] >= 20
        assert ("rejected", "user_id: Field required") in result["letters"] and (
            "quarantined",
            "future_timestamp",
        ) in result["letters"]
        assert result["hits"] and result["positives"] > 400 and len(result["contests"]["other"]) > 100
        assert (
            sum(result["counted"][kind] for kind in TYPES) > 100
            and result["counted"]["recstream_event_to_learned_seconds_count"] > 1_000
        )
        assert not result["event_ids"] & {"e5", "e12"}  # learned before: duplicates

    _assert_same(*_both(messages), exercised)


def test_one_event_messages_are_learned_as_the_python_loop_learns_them() -> None:
    def exercised(result: dict[str, Any]) -> None:
        assert result["error"] is None and result["learned_since"] > 250 and result["gate_counts"]["duplicate"] >= 5
        assert result["handled"] == {("events", 0): 300}

    _assert_same(*_both(_events(300)), exercised)


@pytest.mark.parametrize("after", [1, 61, 123])
def test_a_pause_mid_chunk_stops_learning_there_as_in_the_python_loop(after: int) -> None:
    # no challenger: no paired samples, so the compiled loop takes every event it may (a live sample every 20th
    # positive is still taken in Python)
    compiled_guard, python_guard = PausingGuard(after), PausingGuard(after)
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built")
    compiled = _run(True, [_events(500)], guard=compiled_guard, challenger=False)
    python = _run(False, [_events(500)], guard=python_guard, challenger=False)

    def exercised(result: dict[str, Any]) -> None:
        assert result["paused_since"] == NOW and ("quarantined", "model_paused") in result["letters"]
        assert after <= result["learned_since"] < 400

    _assert_same(compiled, python, exercised)
    assert compiled_guard.calls == python_guard.calls


@pytest.mark.parametrize("failing_at", [1, 57, 400])
def test_learning_that_raises_mid_chunk_leaves_what_the_python_loop_leaves(failing_at: int) -> None:
    def exercised(result: dict[str, Any]) -> None:
        assert result["error"] == "learning failed" and result["failed"] is not None
        assert result["learned_since"] == failing_at - 1

    _assert_same(*_both([_events(500)], failing_at=failing_at), exercised)


@pytest.mark.parametrize("failing_at", [1, 57, 400])
def test_a_challenger_that_raises_leaves_the_event_recorded_as_the_champions(failing_at: int) -> None:
    """The champion learned the event before the challenger failed: its id is recorded (and its item seen), so the
    record's retry finds it learned and does not teach the champion the event twice."""

    def exercised(result: dict[str, Any]) -> None:
        assert result["error"] == "the challenger's learning failed" and result["failed"] is not None
        assert result["learned_since"] == failing_at  # the champion learned it, then the challenger failed
        assert result["failed"] in result["event_ids"]

    _assert_same(*_both([_events(500)], challenger_failing_at=failing_at), exercised)


def test_the_compiled_loop_takes_only_the_exact_types_it_reads_in_c() -> None:
    """A subclass's own methods would be skipped by the C calls: refused (the processor passes plain lists, sets)."""
    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built")

    class Known(set):
        def __contains__(self, item: object) -> bool:
            return True

    def call(chunk: Any, known: Any, event_ids: Any, lags: Any) -> Any:
        return kernel.learn_events(chunk, [], 0, known, event_ids, {}, lags, print, frozenset(), (), 20, 0, 0, None,
                                   None, print, dict, print)  # fmt: skip

    assert call([], set(), set(), [])[:3] == (0, 0, 0)
    for args in (([], Known(), set(), []), ([], set(), Known(), []), (type("L", (list,), {})(), set(), set(), [])):
        with pytest.raises(TypeError, match="must be lists"):
            call(*args)

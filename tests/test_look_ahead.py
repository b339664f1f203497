"""The next slice's event ids are looked up in Redis while the agent learns the current one (real Redis).

``EventProcessor.process(records, upcoming)`` decodes ``upcoming`` and sends the lookup of its event ids before it
learns ``records``; the next call, for ``upcoming``, uses that answer instead of waiting for Redis. Redis answered
for the moment the lookup ran, so an event whose checkpoint was stored after that must still be found a duplicate:
these tests store one in between.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from store.model_store import ModelStore
from stream.processor import DUPLICATE, EventProcessor
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration

DEADLINE = 10.0


def _event(k: int, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"e{k}", "user_id": f"u{k % 7}", "item_id": f"v{k % 11}", "type": "like",
            "ts": iso(k)}  # fmt: skip


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "ahead") as opened:
        yield opened


class Lookups:
    """Records the event ids of each lookup the store is asked for (the real lookup answers)."""

    def __init__(self, store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lookup = store.learned_event_ids
        self.calls: list[list[str]] = []
        self.failing: set[int] = set()  # the numbers (from 1) of the calls that fail as if Redis were away
        monkeypatch.setattr(store, "learned_event_ids", self.learned_event_ids)

    async def learned_event_ids(self, event_ids: list[str], now: float | None = None) -> set[str]:
        self.calls.append(list(event_ids))
        if len(self.calls) in self.failing:
            raise ConnectionError("Redis went away")
        return await self._lookup(event_ids, now=now)


async def _started(store: ModelStore) -> tuple[EventProcessor, Transport]:
    """A started processor of the default model on ``store``, and its transport."""
    transport = Transport()
    processor = transport.processor(store)
    await processor.start()
    return processor, transport


async def _lookup_answered(processor: EventProcessor) -> None:
    """Wait (bounded) until the look-ahead's lookup has its answer from Redis."""
    looked = processor._look_ahead
    assert looked is not None and looked.lookup is not None
    await asyncio.wait_for(asyncio.shield(looked.lookup), DEADLINE)


async def test_the_next_slices_ids_are_looked_up_while_this_one_is_learned(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = Lookups(store, monkeypatch)
    processor, transport = await _started(store)
    first, second = (
        transport.records([_event(k) for k in range(30)]),
        transport.records([_event(k) for k in range(30, 60)]),
    )

    await processor.process(first, second)
    await _lookup_answered(processor)
    assert [call[0] for call in lookups.calls] == ["e0", "e30"]  # its own, then the next slice's
    await processor.process(second)
    assert len(lookups.calls) == 2  # the answer was there
    await processor.checkpoint()
    assert processor.learner.events_learned == 60 and transport.acked == list(range(60))


@pytest.mark.parametrize("kept", [None, 0], ids=["kept", "looked-up-again"])
async def test_an_event_stored_after_the_lookup_ran_is_still_a_duplicate(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch, kept: int | None
) -> None:
    """A client re-sends an event of one slice in the next. The next slice's lookup ran before the first slice's
    checkpoint was stored, so Redis did not have the event then; the checkpoint's ids are kept for that lookup,
    or (``kept=0``: none can be) the slice's ids are looked up again."""
    lookups = Lookups(store, monkeypatch)
    processor, transport = await _started(store)
    if kept is not None:
        processor._stored_ids = deque(maxlen=kept)
    first = transport.records([_event(k) for k in range(20)])
    second = transport.records([_event(5), _event(20)])  # e5 again, and a new event

    await processor.process(first, second)
    await _lookup_answered(processor)  # Redis said: neither e5 nor e20 was learned
    await processor.checkpoint()  # now e5 is in Redis, and no longer pending
    await processor.process(second)
    await processor.checkpoint()

    assert processor.learner.events_learned == 21
    assert (await store.gate_counts())[DUPLICATE] == 1
    assert len(lookups.calls) == (2 if kept is None else 3)  # the first slice's, the second's, and again


async def test_a_retried_slice_does_not_take_the_look_ahead_made_for_the_next(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failure the agent retries the records not handled yet, with the same next slice: the retry decodes
    and looks its own records up, and the next slice is looked up again."""
    lookups = Lookups(store, monkeypatch)
    processor, transport = await _started(store)
    first, second = (
        transport.records([_event(k) for k in range(10)]),
        transport.records([_event(k) for k in range(10, 20)]),
    )
    failing = {"left": 1}
    learn = processor.learner.learn

    def learn_failing_once(*args: Any, **kwargs: Any) -> Any:
        if args[1] == "v5" and failing["left"]:  # e5's item: fails half-way through the first slice
            failing["left"] = 0
            raise RuntimeError("boom")
        return learn(*args, **kwargs)

    processor.learner.learn = learn_failing_once
    with pytest.raises(RuntimeError):
        await processor.process(first, second)
    handled = {id(r) for r in processor.pending_records}
    remaining = [r for r in first if id(r) not in handled]
    await processor.process(remaining, second)
    await processor.process(second)
    await processor.checkpoint()

    assert processor.learner.events_learned == 20
    assert [call[0] for call in lookups.calls] == ["e0", "e10", f"e{remaining[0].offset}", "e10"]


async def test_a_lookup_that_failed_ahead_is_asked_again(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis was away when the next slice's lookup ran, and is back when that slice is processed: it is asked again
    then, instead of failing the slice (and backing the agent off) with the old error."""
    lookups = Lookups(store, monkeypatch)
    lookups.failing = {2}
    processor, transport = await _started(store)
    first = transport.records([_event(k) for k in range(10)])
    second = transport.records([_event(3), _event(10)])  # e3 again, and a new event

    await processor.process(first, second)
    await processor.checkpoint()
    await processor.process(second)
    await processor.checkpoint()

    assert [call[0] for call in lookups.calls] == ["e0", "e3", "e3"]
    assert processor.learner.events_learned == 11
    assert (await store.gate_counts())[DUPLICATE] == 1

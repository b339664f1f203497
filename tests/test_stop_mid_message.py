"""A batch message learned in chunks, interrupted between two of them.

The worker stopped (its task cancelled): the message is learned whole before the cancellation is raised, so the final
checkpoint stores its offset with its events. Cut short, the checkpoint stored some of its events but not its offset,
and a restart after the duplicate window had them learned again (real Redis; the window's expiry made by deleting its
buckets)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from learner.gate.gate import QualityGate
from learner.online_learner import OnlineLearner
from store.model_store import ModelStore
from stream.processor import YIELD_EVERY_EVENTS, DeadLettersUndelivered, EventProcessor, Record
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration

DEADLINE = 10.0


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "stop") as opened:
        yield opened


def _event(k: int) -> dict:
    return {"event_id": f"e{k}", "user_id": f"u{k % 50}", "item_id": f"v{k % 97}", "type": "like", "ts": iso(k)}


def _records() -> list[Record]:
    """One event alone, then one batch message of 1,200 events (three chunks)."""
    batch = [_event(k) for k in range(1, 1_201)]
    return [
        Record("events", 0, 0, b"u0", json.dumps(_event(0)).encode(), handle=0),
        Record("events", 0, 1, None, json.dumps(batch).encode(), handle=1),
    ]


async def _started(
    store: ModelStore, transport: Transport, dead_letters: Any, gate: QualityGate | None = None
) -> EventProcessor:
    """A started processor of the default model on ``store``, sending its dead letters through ``dead_letters``."""
    processor = EventProcessor(
        store=store,
        new_learner=OnlineLearner,
        learner_from_bytes=OnlineLearner.from_bytes,
        dead_letters=dead_letters,
        flush=transport.flush,
        ack=transport.ack,
        gate=gate,
    )
    await processor.start()
    return processor


class SecondSendFails:
    """A processor's ``dead_letters`` through ``transport``, whose second call fails (the broker away, say)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.calls = 0

    async def __call__(self, letters: list) -> list:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("the broker did not take the letters")
        return await self.transport.send_letters(letters)


async def test_a_batch_message_cut_short_by_a_stop_is_learned_whole_and_not_again_after_a_restart(
    store: ModelStore,
) -> None:
    transport = Transport()
    processor = transport.processor(store)
    await processor.start()
    task = asyncio.create_task(processor.process(_records()))
    deadline = time.monotonic() + DEADLINE
    while processor._pending.learned_since < 1 + YIELD_EVERY_EVENTS:  # the event alone and the first chunk
        assert time.monotonic() < deadline, "the first chunk was not learned in time"
        await asyncio.sleep(0)
    assert not task.done()  # between two chunks of the batch message
    task.cancel()  # the worker stopping
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processor.learner.events_learned == 1_201  # the message was finished first
    assert await processor.checkpoint() is not None  # the agent's final checkpoint
    assert (await store.offsets())[("events", 0)] == 2 and transport.acked == [0, 1]

    # A restart after the duplicate window: only the offsets stand between the message and its learning again.
    for key in [key async for key in store.redis.scan_iter(match=store.keys.dedupe_prefix + "*")]:
        await store.redis.delete(key)
    restarted = transport.processor(store)
    await restarted.start()
    await restarted.process(_records())  # Kafka delivers them again (its committed offset may be behind)
    assert restarted.learner.events_learned == 1_201


async def test_the_dead_letters_of_a_chunk_whose_sending_the_stop_cut_short_are_sent_by_the_checkpoint(
    store: ModelStore,
) -> None:
    transport = Transport()
    blocked, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow_first_send(letters: list) -> list:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first chunk's letters: the stop lands while they are being sent
            blocked.set()
            await release.wait()
        return await transport.send_letters(letters)

    processor = await _started(store, transport, slow_first_send)
    events = [_event(k) for k in range(1, 1_201)]
    for k in (3, 700):  # one refused event in the first chunk, one in the second
        events[k] = {**events[k], "type": "explode"}
    record = Record("events", 0, 0, None, json.dumps(events).encode(), handle=0)
    task = asyncio.create_task(processor.process([record]))
    await asyncio.wait_for(blocked.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processor.learner.events_learned == 1_198  # the message was finished first
    assert [letter["index"] for _, letter in transport.dead_letters] == [700]  # the second chunk's, sent after it
    with pytest.raises(DeadLettersUndelivered):  # sends the cut-short letters, then waits for them: tried again
        await processor.checkpoint()
    assert await processor.checkpoint() is not None
    assert sorted(letter["index"] for _, letter in transport.dead_letters) == [3, 700]
    assert (await store.offsets())[("events", 0)] == 1 and transport.acked == [0]


async def test_a_stop_stands_when_a_later_chunk_fails_after_it(store: ModelStore) -> None:
    """The stop lands between two chunks, then the next chunk's dead letters fail (the broker away, say): the task
    still ends cancelled (the worker stops), not with the error, which the agent would retry, going on."""
    transport = Transport()
    fails_second = SecondSendFails(transport)
    processor = await _started(store, transport, fails_second)
    events = [_event(k) for k in range(1, 1_201)]
    for k in (3, 700):  # one refused event in the first chunk, one in the second
        events[k] = {**events[k], "type": "explode"}
    task = asyncio.create_task(processor.process([Record("events", 0, 0, None, json.dumps(events).encode(), handle=0)]))
    deadline = time.monotonic() + DEADLINE
    while fails_second.calls < 1:  # the first chunk's letters sent: the task waits at the await after them
        assert time.monotonic() < deadline, "the first chunk was not handled in time"
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fails_second.calls == 2  # the second chunk was handled, and its letters failed

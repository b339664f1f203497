"""The agent's checkpoints do not wait for Redis: the next batch is learned while one is written (real Redis).

``EventProcessor.checkpoint(wait=False)`` encodes the snapshot and sets its events aside under the lock, then
writes them as a task of its own. These tests hold that write until they release it (the real write then runs)
and check what the brief asks of a checkpoint all the same: every version is the model as it was when its
checkpoint began, messages are acknowledged only once their version is stored, an event learned but not yet in
Redis is still a duplicate, and a write that fails puts its events back (still learned, not acknowledged) for a
whole version that covers them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from learner import cooccurrence_delta
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from store.model_store import ModelStore
from stream.processor import EventProcessor
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration

DEADLINE = 10.0


def _events(start: int, n: int, prefix: str = "e") -> list[dict]:
    return [
        {"event_id": f"{prefix}{k}", "user_id": f"u{k * 7 % 300}", "item_id": f"v{k * 13 % 500}", "type": "like",
         "ts": iso(k)}
        for k in range(start, start + n)
    ]  # fmt: skip


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "overlap", retention=10) as opened:
        yield opened


class HeldWrites:
    """The store's checkpoint, held until :meth:`release` (then the real write runs, or fails if told to)."""

    def __init__(self, store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._write = store.checkpoint
        self.entered = asyncio.Event()
        self._released = asyncio.Event()
        self.fail = False
        self.calls = 0
        monkeypatch.setattr(store, "checkpoint", self.checkpoint)

    async def checkpoint(self, *args: Any, **kwargs: Any) -> int | None:
        self.calls += 1
        self.entered.set()
        await self._released.wait()
        if self.fail:
            raise ConnectionError("Redis went away")
        return await self._write(*args, **kwargs)

    async def held(self) -> None:
        """Wait (bounded) until a write has started and is held."""
        await asyncio.wait_for(self.entered.wait(), DEADLINE)

    def release(self) -> None:
        self._released.set()


async def _started(store: ModelStore, n: int = 2_000, **options: Any) -> tuple[EventProcessor, Transport, int]:
    """A processor of the default model that learned ``n`` events and wrote them (whole): it, its transport and
    that version."""
    transport = Transport()
    processor = transport.processor(store, new_learner=lambda: OnlineLearner(model=ItemCooccurrence()), **options)
    await processor.start()
    await processor.process(transport.records(_events(0, n)))
    version = await processor.checkpoint()
    assert version is not None
    return processor, transport, version


async def _stored(store: ModelStore, version: int) -> bytes:
    """The whole snapshot a reader gets for ``version`` (a delta's chain applied)."""
    snapshot = await store.load(version)
    assert snapshot is not None
    root, deltas = snapshot.chain()
    assert root is not None
    return cooccurrence_delta.whole_blob(root.blob, deltas)


async def test_the_next_batch_is_learned_while_a_checkpoint_is_written(store: ModelStore, monkeypatch) -> None:
    processor, transport, first = await _started(store)
    held = HeldWrites(store, monkeypatch)
    a = transport.records(_events(2_000, 300))
    await processor.process(a)
    learner = processor.learner
    assert learner is not None
    at_a = learner.to_bytes()  # what the checkpoint encodes when it begins
    assert await processor.checkpoint(wait=False) is None  # returns once its write started
    await held.held()
    b = transport.records(_events(2_300, 300))
    await processor.process(b)  # learned while the write waits
    assert processor._write is not None and not processor._write.task.done()  # type: ignore[union-attr]
    assert learner.events_learned == 2_600
    assert not any(r.handle in transport.acked for r in a + b)  # acknowledged once their version is stored
    assert await store.current_version() == first
    held.release()
    last = await processor.checkpoint()  # waits for a's write, then writes b
    assert last is not None
    second = (await store.load(last)).base_version  # type: ignore[union-attr]
    assert second is not None and second != first
    assert (await store.load(second)).base_version == first  # type: ignore[union-attr]  # deltas, one after the other
    assert await _stored(store, second) == at_a  # the model as it was when a's checkpoint began
    assert await _stored(store, last) == learner.to_bytes()  # b's delta holds what was learned during a's write
    assert transport.acked[-600:] == [r.handle for r in a + b]
    ids = [e["event_id"] for e in _events(2_000, 600)]
    assert await store.learned_event_ids(ids) == set(ids)


async def test_an_event_learned_but_not_yet_in_redis_is_a_duplicate(store: ModelStore, monkeypatch) -> None:
    processor, transport, _ = await _started(store)
    held = HeldWrites(store, monkeypatch)
    await processor.process(transport.records(_events(2_000, 100)))
    await processor.checkpoint(wait=False)
    await held.held()
    learner = processor.learner
    assert learner is not None
    learned = learner.events_learned
    await processor.process(transport.records(_events(2_000, 100)))  # the same events again (a re-sent batch)
    assert learner.events_learned == learned
    assert processor._pending.gate_counts["duplicate"] == 100
    assert processor._pending.learned_since == 0
    held.release()
    await processor.settle()


async def test_a_failed_write_puts_its_events_back_for_a_whole_version(store: ModelStore, monkeypatch) -> None:
    processor, transport, first = await _started(store)
    held = HeldWrites(store, monkeypatch)
    held.fail = True
    a = transport.records(_events(2_000, 200))
    await processor.process(a)
    await processor.checkpoint(wait=False)
    await held.held()
    held.release()
    task = processor._write.task  # type: ignore[union-attr]
    await asyncio.wait_for(asyncio.wait([task]), DEADLINE)  # type: ignore[list-item]
    assert processor.checkpoint_due()  # nothing new since: due all the same, to raise and retry
    b = transport.records(_events(2_200, 200))
    await processor.process(b)
    with pytest.raises(ConnectionError):
        await processor.checkpoint(wait=False)
    assert processor._pending.records == a + b  # a back in front of b, not acknowledged
    assert processor._pending.learned_since == 400
    assert not any(r.handle in transport.acked for r in a + b)
    held.fail = False
    calls = held.calls
    version = await processor.checkpoint(wait=False)  # the retry waits for its own write: its version
    assert version is not None and held.calls == calls + 1
    assert (await store.load(version)).base_version is None  # type: ignore[union-attr]  # whole: the base may be gone
    assert (await store.load(version)).meta["parent"] == first  # type: ignore[union-attr]
    assert transport.acked[-400:] == [r.handle for r in a + b]
    ids = [e["event_id"] for e in _events(2_000, 400)]
    assert await store.learned_event_ids(ids) == set(ids)
    # and the next checkpoint overlaps again
    await processor.process(transport.records(_events(2_400, 10)))
    assert await processor.checkpoint(wait=False) is None
    await processor.settle()
    assert await store.current_version() not in (None, version)


async def test_the_whole_snapshot_for_a_long_chain_is_the_version_not_the_learner_after_it(
    store: ModelStore, monkeypatch
) -> None:
    processor, transport, whole = await _started(store)
    await processor.process(transport.records(_events(2_000, 20)))
    delta = await processor.checkpoint()
    assert delta is not None and (await store.load(delta)).base_version == whole  # type: ignore[union-attr]
    size = await store.redis.hstrlen(store.keys.version(delta), "blob")
    # room for 1.5 such deltas: the next one makes the chain long, so its version's whole snapshot is written after it
    processor.checkpoint_delta_share = 1.5 * size / await store.redis.hstrlen(store.keys.version(whole), "blob")
    held = HeldWrites(store, monkeypatch)
    await processor.process(transport.records(_events(2_020, 20)))
    learner = processor.learner
    assert learner is not None
    at_capture = learner.to_bytes()
    await processor.checkpoint(wait=False)
    await held.held()
    await processor.process(transport.records(_events(2_040, 500)))  # learned while the delta is written
    held.release()
    await processor.settle()
    version = await store.current_version()
    assert version is not None and version != delta
    consolidated = await store.load(version)
    assert consolidated is not None and consolidated.base_version is None
    assert consolidated.meta["consolidated_from"] == delta
    assert consolidated.blob == at_capture != learner.to_bytes()


async def test_an_operators_rollback_is_adopted_before_the_next_batch_once_the_write_is_stored(
    store: ModelStore,
) -> None:
    """The docs promise the worker notices a promotion before its next batch: with the agent's checkpoints (not
    waited for), once a write is stored the next batch starts from the operator's version, not at the next
    checkpoint."""
    processor, transport, first = await _started(store)
    await processor.process(transport.records(_events(2_000, 100)))
    assert await processor.checkpoint(wait=False) is None
    task = processor._write.task  # type: ignore[union-attr]
    await asyncio.wait_for(asyncio.wait([task]), DEADLINE)  # type: ignore[list-item]
    second = task.result()
    assert second is not None and second != first
    await store.promote(first, reason="roll back")
    await processor.process(transport.records(_events(2_100, 10)))
    assert processor.version == first
    learner = processor.learner
    assert learner is not None
    assert learner.events_learned == 2_000 + 10  # the rolled-back version's events, then this batch's


async def test_a_failure_after_the_transaction_does_not_write_its_events_again(store: ModelStore) -> None:
    processor, transport, first = await _started(store)
    failed: list[int] = []

    def ack_fails_once(handle: int) -> None:
        if not failed:
            failed.append(handle)
            raise RuntimeError("the consumer went away")
        transport.ack(handle)

    processor._ack = ack_fails_once
    await processor.process(transport.records(_events(2_000, 100)))
    await processor.checkpoint(wait=False)
    version = await processor.checkpoint()  # settles the first write: stored, so no error and nothing put back
    assert version is None  # nothing pending: its events were not put back
    assert processor.version is not None and processor.version != first
    assert (await store.load(processor.version)).base_version == first  # type: ignore[union-attr]
    assert failed


async def test_a_cancelled_write_is_an_error_for_the_next_checkpoint_not_its_cancellation(
    store: ModelStore, monkeypatch
) -> None:
    processor, transport, _ = await _started(store)
    held = HeldWrites(store, monkeypatch)
    a = transport.records(_events(2_000, 50))
    await processor.process(a)
    await processor.checkpoint(wait=False)
    await held.held()
    processor._write.task.cancel()  # type: ignore[union-attr]  # (as a loop torn down would)
    with pytest.raises(RuntimeError, match="cancelled"):
        await processor.checkpoint(wait=False)
    assert processor._pending.records == a
    held.release()
    version = await processor.checkpoint(wait=False)  # the retry waits for its own write
    assert version is not None and transport.acked[-50:] == [r.handle for r in a]


async def test_a_caller_cancelled_once_its_write_went_through_does_not_put_the_events_back(
    store: ModelStore, monkeypatch
) -> None:
    """The caller waiting for a write is cancelled after the write succeeded but before the caller resumed: the
    events stay written (not put back to be written again)."""
    processor, transport, first = await _started(store)
    held = HeldWrites(store, monkeypatch)
    a = transport.records(_events(2_000, 50))
    await processor.process(a)
    caller = asyncio.create_task(processor.checkpoint())
    await held.held()
    written = processor._write.task  # type: ignore[union-attr]
    written.add_done_callback(lambda _: caller.cancel())  # runs after the caller's wake-up is scheduled
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert written.result() is not None and processor.version == written.result() != first
    assert processor._pending.records == [] and processor._write is None
    assert transport.acked[-50:] == [r.handle for r in a]

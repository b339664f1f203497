"""The writer lease in a real Redis: one holder at a time, handed over on release or expiry, and fencing checkpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from store.model_store import CheckpointConflict, ModelStore
from store.writer_lease import WriterLease
from tests.conftest import Endpoint, open_model_store

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_endpoint: Endpoint) -> AsyncIterator[ModelStore]:
    async with open_model_store(redis_endpoint.url, b"k1", "lease") as opened:
        yield opened


def lease(store: ModelStore, holder: str, seconds: float = 30) -> WriterLease:
    return WriterLease(store.redis, store.keys.writer_lease, store.keys.writer_epoch, holder, seconds)


async def test_one_holder_at_a_time_and_release_hands_over(store: ModelStore) -> None:
    a, b = lease(store, "a"), lease(store, "b")
    assert await a.try_acquire() is None
    assert await b.try_acquire() == "worker a"
    assert await a.try_acquire() is None  # the holder renews
    assert await b.release() is False  # only the holder's release counts
    assert await store.redis.get(store.keys.writer_lease) == b"a"
    assert await a.release() is True
    assert await b.try_acquire() is None
    assert await store.redis.get(store.keys.writer_lease) == b"b"


async def test_a_waiting_worker_takes_over_once_the_holder_stops_renewing(store: ModelStore) -> None:
    a, b = lease(store, "a", seconds=1.2), lease(store, "b", seconds=1.2)
    await a.acquire()
    told: list[str] = []
    started = time.monotonic()
    await asyncio.wait_for(b.acquire(told.append), timeout=10)
    waited = time.monotonic() - started
    assert told == ["worker a"]  # told once, not at every poll
    assert waited >= 0.8, waited  # not before the lease had run out (1.2 s, less the polls' granularity)
    assert await store.redis.get(store.keys.writer_lease) == b"b"


async def test_the_holder_keeps_it_while_another_waits(store: ModelStore) -> None:
    # (3 s: a pause of the test's loop shorter than two thirds of it cannot let the lease run out)
    a, b = lease(store, "a", seconds=3.0), lease(store, "b", seconds=3.0)
    await a.acquire()
    keeper = asyncio.create_task(a.keep(lambda _other: None))
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.acquire(), timeout=9)  # three lease times: renewed all along
    finally:
        keeper.cancel()
    assert a.lost_to is None
    assert await store.redis.get(store.keys.writer_lease) == b"a"


async def test_a_holder_that_lost_it_is_told_and_stops_renewing(store: ModelStore) -> None:
    a, b = lease(store, "a", seconds=0.6), lease(store, "b", seconds=0.6)
    await a.acquire()
    await asyncio.wait_for(b.acquire(), timeout=5)  # a did not renew (frozen): b took over
    lost: list[str] = []
    await asyncio.wait_for(a.keep(lost.append), timeout=5)  # returns once it saw the loss
    assert lost == ["worker b"] and a.lost_to == "worker b"
    assert a.loss == "worker b took over the writer lease"
    assert await store.redis.get(store.keys.writer_lease) == b"b"


async def test_a_holder_whose_epoch_was_deleted_has_lost_the_lease(store: ModelStore) -> None:
    a = lease(store, "a")
    await a.acquire()
    await store.redis.delete(store.keys.writer_epoch)  # e.g. an operator deleting keys by hand
    lost = await a.try_acquire()
    assert lost == f"Redis no longer holds the writer lease's epoch (this worker's epoch {a.epoch})"
    with pytest.raises(CheckpointConflict, match=r"^Redis no longer holds the writer lease's epoch \(Redis restarted"):
        await store.checkpoint(None, b"x", {}, {}, {}, lease=a)
    a.lost_to = lost  # (as keep() sets it)
    assert a.loss.startswith(f"{lost}: Redis restarted without its data, or the keys were deleted")  # not "took over"


async def test_a_lease_that_expired_with_nobody_waiting_is_taken_again_by_its_holder(store: ModelStore) -> None:
    a = lease(store, "a", seconds=0.3)
    await a.acquire()
    epoch = a.epoch
    await asyncio.sleep(0.6)
    assert await store.redis.get(store.keys.writer_lease) is None
    assert await a.try_acquire() is None
    assert await store.redis.get(store.keys.writer_lease) == b"a"
    assert a.epoch == epoch  # the same tenure: its checkpoints go on
    assert await store.checkpoint(None, b"x", {}, {}, {}, lease=a) == 1


async def test_a_holder_whose_lease_another_held_meanwhile_has_lost_it_even_once_that_one_left(
    store: ModelStore,
) -> None:
    a, b = lease(store, "a", seconds=0.3), lease(store, "b", seconds=0.3)
    await a.acquire()
    await asyncio.wait_for(b.acquire(), timeout=5)  # a was cut off past the lease time: b took over
    assert b.epoch == (a.epoch or 0) + 1
    assert await b.release() is True  # and stopped
    lost: list[str] = []
    await asyncio.wait_for(a.keep(lost.append), timeout=5)
    assert len(lost) == 1 and "epoch is 2, this worker's 1" in lost[0], lost
    assert await store.redis.get(store.keys.writer_lease) is None  # a did not take it back
    with pytest.raises(CheckpointConflict):
        await store.checkpoint(None, b"x", {}, {}, {}, lease=a)


async def test_a_checkpoint_needs_the_lease(store: ModelStore) -> None:
    a, b = lease(store, "a"), lease(store, "b")
    with pytest.raises(CheckpointConflict, match="does not hold the writer lease"):
        await store.checkpoint(None, b"x", {}, {}, {}, lease=a)
    await a.acquire()
    v1 = await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a)
    assert v1 == 1
    await a.release()
    await b.acquire()
    with pytest.raises(CheckpointConflict, match="no longer holds the writer lease: another worker took it"):
        await store.checkpoint(v1, b"y", {}, {("t", 0): 2}, {"u": {"i"}}, event_ids=["e1"], lease=a)
    assert await store.current_version() == 1  # nothing of it was written
    assert await store.offsets() == {("t", 0): 1}
    assert await store.seen("u") == set()
    assert await store.learned_event_ids(["e1"]) == set()
    assert await store.checkpoint(v1, b"y", {}, {("t", 0): 2}, {}, lease=b) == 2


async def _during_checkpoint(store: ModelStore, monkeypatch: pytest.MonkeyPatch, meanwhile: object) -> None:
    """Run ``meanwhile()`` inside the checkpoint's transaction: it reads the pins between its lease check and EXEC."""
    smembers = store.redis.smembers

    async def pins(key: str) -> object:
        await meanwhile()  # type: ignore[operator]
        return await smembers(key)

    monkeypatch.setattr(store.redis, "smembers", pins)


async def test_a_takeover_during_a_checkpoint_aborts_it(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = lease(store, "a"), lease(store, "b")
    await a.acquire()

    async def taken_over() -> None:  # as after this worker froze past the lease time
        await store.redis.delete(store.keys.writer_lease)
        assert await b.try_acquire() is None

    await _during_checkpoint(store, monkeypatch, taken_over)
    with pytest.raises(CheckpointConflict, match="writer lease changed during the checkpoint"):
        await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a)
    assert await store.current_version() is None
    assert await store.offsets() == {}


async def test_neither_a_renewal_nor_an_expiry_during_a_checkpoint_aborts_it(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = lease(store, "a")
    await a.acquire()

    async def renewed_then_expired() -> None:  # a long checkpoint: renewed meanwhile, then run past the lease time
        assert await a.try_acquire() is None
        await store.redis.delete(store.keys.writer_lease)

    await _during_checkpoint(store, monkeypatch, renewed_then_expired)
    assert await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a) == 1
    assert await store.offsets() == {("t", 0): 1}


async def test_a_connection_lost_during_a_checkpoint_is_redis_unreachable_not_a_conflict(
    store: ModelStore, redis_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = lease(store, "a")
    await a.acquire()
    killer = aioredis.Redis.from_url(redis_endpoint.url)

    async def connection_lost() -> None:  # as when Redis stalls past the client's timeout: the watching link is gone
        # (only this store's connections in use: the transaction's; a Redis shared with other runs keeps the rest)
        in_use = list(store.redis.connection_pool._in_use_connections)
        assert in_use
        for connection in in_use:
            host, port = connection._writer.get_extra_info("sockname")[:2]
            assert await killer.client_kill_filter(addr=f"{host}:{port}") == 1

    await _during_checkpoint(store, monkeypatch, connection_lost)
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="connection to Redis failed during the checkpoint"):
            await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a)
    finally:
        await killer.aclose()
    monkeypatch.undo()
    assert await store.current_version() is None  # nothing of it was written; the retry writes it
    assert await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a) == 1

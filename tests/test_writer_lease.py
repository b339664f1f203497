"""The writer lease in a real Redis: one holder at a time, handed over on release or expiry, and fencing checkpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from store.model_store import CheckpointConflict, ModelStore
from store.writer_lease import WriterLease
from tests.conftest import Endpoint, open_model_store

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_endpoint: Endpoint) -> AsyncIterator[ModelStore]:
    async with open_model_store(redis_endpoint.url, b"k1", "lease") as opened:
        yield opened


def lease(store: ModelStore, holder: str, seconds: float = 30) -> WriterLease:
    return WriterLease(store.redis, store.keys.writer_lease, holder, seconds)


async def test_one_holder_at_a_time_and_release_hands_over(store: ModelStore) -> None:
    a, b = lease(store, "a"), lease(store, "b")
    assert await a.try_acquire() is None
    assert await b.try_acquire() == "a"
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
    assert told == ["a"]  # told once, not at every poll
    assert waited >= 0.8, waited  # not before the lease had run out (1.2 s, less the polls' granularity)
    assert await store.redis.get(store.keys.writer_lease) == b"b"


async def test_the_holder_keeps_it_while_another_waits(store: ModelStore) -> None:
    a, b = lease(store, "a", seconds=1.0), lease(store, "b", seconds=1.0)
    await a.acquire()
    keeper = asyncio.create_task(a.keep(lambda _other: None))
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.acquire(), timeout=3)  # three lease times: renewed all along
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
    assert lost == ["b"] and a.lost_to == "b"
    assert await store.redis.get(store.keys.writer_lease) == b"b"


async def test_a_lease_that_expired_with_nobody_waiting_is_taken_again_by_its_holder(store: ModelStore) -> None:
    a = lease(store, "a", seconds=0.3)
    await a.acquire()
    await asyncio.sleep(0.6)
    assert await store.redis.get(store.keys.writer_lease) is None
    assert await a.try_acquire() is None
    assert await store.redis.get(store.keys.writer_lease) == b"a"


async def test_no_renewal_while_a_checkpoint_holds_it(store: ModelStore) -> None:
    a = lease(store, "a")
    async with a.renewals_held():
        renewal = asyncio.create_task(a.try_acquire())
        await asyncio.sleep(0.2)
        assert not renewal.done()
    assert await asyncio.wait_for(renewal, timeout=5) is None


async def test_a_checkpoint_needs_the_lease(store: ModelStore) -> None:
    a, b = lease(store, "a"), lease(store, "b")
    with pytest.raises(CheckpointConflict, match=r"does not hold the writer lease \(it expired"):
        await store.checkpoint(None, b"x", {}, {}, {}, lease=a)
    await a.acquire()
    v1 = await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a)
    assert v1 == 1
    await a.release()
    await b.acquire()
    with pytest.raises(CheckpointConflict, match="held by b"):
        await store.checkpoint(v1, b"y", {}, {("t", 0): 2}, {"u": {"i"}}, event_ids=["e1"], lease=a)
    assert await store.current_version() == 1  # nothing of it was written
    assert await store.offsets() == {("t", 0): 1}
    assert await store.seen("u") == set()
    assert await store.learned_event_ids(["e1"]) == set()
    assert await store.checkpoint(v1, b"y", {}, {("t", 0): 2}, {}, lease=b) == 2


async def test_a_takeover_during_a_checkpoint_aborts_it(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    a = lease(store, "a")
    await a.acquire()
    smembers = store.redis.smembers

    async def taken_over_meanwhile(key: str) -> object:
        # The checkpoint reads the pins between its lease check and EXEC: another worker takes the lease right then
        # (as one would after this one froze past the lease time).
        await store.redis.set(store.keys.writer_lease, "b")
        return await smembers(key)

    monkeypatch.setattr(store.redis, "smembers", taken_over_meanwhile)
    with pytest.raises(CheckpointConflict, match="writer lease changed during the checkpoint"):
        await store.checkpoint(None, b"x", {}, {("t", 0): 1}, {}, lease=a)
    assert await store.current_version() is None
    assert await store.offsets() == {}

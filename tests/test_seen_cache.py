"""The API's seen sets held in memory and kept current from the seen log (api/seen_cache.py), on a real Redis: the
worker's checkpoints (ModelStore.checkpoint) write the sets and the log in one transaction, as in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from api.seen_cache import USER_ENTRIES, HeldSet, SeenCache
from learner.id_index import IdIndex
from recstream import local_services
from store.model_store import ModelStore
from tests.clock import iso
from tests.conftest import COUNTABLE_GATE_ENV, Endpoint, Stack, metric_value, open_model_store, start_stack, wait_for
from tests.kafka_io import produce_events
from tests.taste_stream import taste_events

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_endpoint: Endpoint) -> AsyncIterator[ModelStore]:
    async with open_model_store(redis_endpoint.url, b"k1", "seen") as opened:
        yield opened


class Checkpoints:
    """Writes checkpoints that add seen items, as the worker's do."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.version: int | None = None

    async def add(self, seen: dict[str, set[str]]) -> None:
        self.version = await self.store.checkpoint(self.version, b"blob", {}, {}, seen)


async def _started(store: ModelStore, max_items: int = 1000) -> SeenCache:
    cache = SeenCache(store, max_items)
    await cache.sync()  # as the model holder does when the API starts
    return cache


async def test_a_set_read_once_is_served_from_memory_and_kept_current_by_checkpoints(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    await checkpoints.add({"ann": {"a1", "a2"}, "bob": {"b1"}})
    cache = await _started(store)
    assert cache.held("ann") is None
    assert await cache.read("ann") == {"a1", "a2"}
    assert cache.held("ann") == {"a1", "a2"}
    # held: a change Redis got outside the log (no writer does this) is not read again
    await store.redis.sadd(store.keys.seen("ann"), "outside")
    assert cache.held("ann") == {"a1", "a2"}
    # a checkpoint's additions reach the held set at the next sync, and only the held users are kept
    await checkpoints.add({"ann": {"a3"}, "bob": {"b2"}, "cid": {"c1"}})
    await checkpoints.add({"ann": {"a4", "a1"}})
    assert cache.held("ann") == {"a1", "a2"}  # not synced yet
    await cache.sync()
    assert cache.held("ann") == {"a1", "a2", "a3", "a4"}
    assert (
        cache.held("bob") is None
        and cache.held("cid") is None
        and len(cache) == 1
        and cache.entries == 4 + USER_ENTRIES
    )
    assert await cache.read("bob") == {"b1", "b2"}  # read whole from Redis, then held
    assert cache.held("bob") == {"b1", "b2"}


async def test_a_read_that_spans_a_sync_is_not_kept(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    await checkpoints.add({"ann": {"a1"}})
    cache = await _started(store)
    reading, release = asyncio.Event(), asyncio.Event()
    plain_seen = store.seen

    async def slow_seen(user_id: str) -> set[str]:
        items = await plain_seen(user_id)  # Redis answers before the checkpoint below...
        reading.set()
        await release.wait()  # ...which the sync then applies while this answer is on its way
        return items

    store.seen = slow_seen  # type: ignore[method-assign]
    read = asyncio.ensure_future(cache.read("ann"))
    await asyncio.wait_for(reading.wait(), 30)
    await checkpoints.add({"ann": {"a2"}})
    await cache.sync()
    release.set()
    assert await read == {"a1"}  # this request's answer: what Redis held when it was read
    assert cache.held("ann") is None  # not kept: it would miss a2 for good
    store.seen = plain_seen  # type: ignore[method-assign]
    assert await cache.read("ann") == {"a1", "a2"}
    assert cache.held("ann") == {"a1", "a2"}


async def test_entries_lost_from_the_log_make_it_forget_everything(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    await checkpoints.add({"ann": {"a1"}})
    cache = await _started(store)
    await cache.read("ann")
    for n in range(3):  # while this process is behind, the log is trimmed past what it synced
        await checkpoints.add({"ann": {f"x{n}"}})
    await store.redis.xtrim(store.keys.seen_log, maxlen=1, approximate=False)
    await cache.sync()
    assert cache.held("ann") is None and len(cache) == 0
    assert await cache.read("ann") == {"a1", "x0", "x1", "x2"}
    assert cache.held("ann") is not None  # in step with the log again: kept
    await store.redis.delete(store.keys.seen_log)  # the log deleted (e.g. flushed)
    await cache.sync()
    assert cache.held("ann") is None
    await checkpoints.add({"bob": {"b1"}})
    await cache.sync()
    await cache.read("ann")
    assert cache.held("ann") is not None
    await store.redis.delete(store.keys.seen_log)  # and made anew, its ids lower than those synced
    await store.redis.xadd(store.keys.seen_log, {"lines": "ann z1"}, id="1-1")
    await cache.sync()
    assert cache.held("ann") is None


async def test_a_failed_sync_keeps_the_sets_held_and_the_next_one_catches_up(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    await checkpoints.add({"ann": {"a1"}})
    cache = await _started(store)
    await cache.read("ann")
    unreachable = aioredis.Redis.from_url(f"redis://127.0.0.1:{local_services.free_port()}", socket_connect_timeout=2)
    try:
        cache.store = ModelStore(unreachable, store.signer, store.keys)  # Redis gone, as the model holder meets it
        await checkpoints.add({"ann": {"a2"}})  # (another process reaches it: this one does not see the addition)
        with pytest.raises(Exception):  # noqa: B017 - redis-py's connection error
            await cache.sync()
        assert cache.held("ann") == {"a1"}  # as of the last sync: what the recommendation path leaves out meanwhile
        with pytest.raises(Exception):  # noqa: B017
            await cache.sync()
        assert cache.held("ann") == {"a1"}
    finally:
        await unreachable.aclose()
    cache.store = store  # Redis back: the next sync reads the log from where the last one that succeeded stopped
    await checkpoints.add({"ann": {"a3"}})
    await cache.sync()
    assert cache.held("ann") == {"a1", "a2", "a3"}


async def test_the_least_recently_served_users_go_first_past_the_item_budget(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    many = {str(n) for n in range(10)}
    await checkpoints.add({"ann": {"a1", "a2"}, "bob": {"b1", "b2"}, "cid": {"c1", "c2"}, "dan": many})
    cache = await _started(store, max_items=2 * (2 + USER_ENTRIES) + 1)  # two users of two items, and one more
    await cache.read("ann")
    await cache.read("bob")
    assert cache.held("ann") is not None  # served again: bob is now the least recent
    await cache.read("cid")  # over the budget
    assert cache.held("bob") is None and cache.entries == 2 * (2 + USER_ENTRIES)
    assert cache.held("cid") is not None and cache.held("ann") is not None  # ann served last
    await checkpoints.add({"ann": {"a3", "a4"}})  # a sync grows the held sets past the budget
    await cache.sync()
    assert cache.held("cid") is None and cache.held("ann") == {"a1", "a2", "a3", "a4"}
    assert await cache.read("dan") == many  # larger than the budget alone: served, not held
    assert cache.held("dan") is None and cache.held("ann") is not None


async def test_unknown_users_count_against_the_budget(store: ModelStore) -> None:
    cache = await _started(store, max_items=3 * USER_ENTRIES)
    for n in range(5):
        assert await cache.read(f"nobody{n}") == set()
    assert len(cache) == 3 and cache.entries == 3 * USER_ENTRIES
    assert cache.held("nobody1") is None and cache.held("nobody4") == set()


async def test_off_it_reads_every_time(store: ModelStore) -> None:
    checkpoints = Checkpoints(store)
    await checkpoints.add({"ann": {"a1"}})
    cache = await _started(store, max_items=0)
    assert await cache.read("ann") == {"a1"}
    assert cache.held("ann") is None


def _lookups(client: httpx.Client, result: str) -> float:
    return metric_value(client.get("/metrics").text, "recstream_api_seen_cache_lookups_total", f'result="{result}"')


@pytest.mark.timeout(240)
def test_the_api_leaves_out_what_a_held_user_just_saw(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    """Real worker and API: a user's set, held after their first request, takes in the item of their next event
    from the seen log (the API no longer reads it from Redis), and that item leaves their recommendations."""
    stack = start_stack({**service_env, **COUNTABLE_GATE_ENV}, processes)
    try:
        _held_user_sees(stack)
    finally:
        stack.close()


def _held_user_sees(stack: Stack) -> None:
    crowd = taste_events(seed=5)
    produce_events(stack.broker, stack.topic, crowd)
    wait_for(lambda: stack.checkpoints.learned() == len(crowd), 90, f"the crowd learned (log: {stack.worker.log_path})")
    user = crowd[0]["user_id"]

    def top() -> list[str] | None:
        r = stack.client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
        body = r.json() if r.status_code == 200 else None
        return [e["item_id"] for e in body["items"]] if body and body["source"] == "model" else None

    first = wait_for(top, 30, "the model's recommendations")
    assert isinstance(first, list)
    hits = _lookups(stack.client, "hit")
    assert top() is not None and _lookups(stack.client, "hit") > hits  # held: the second request read no set
    liked = first[0]
    event = {"event_id": "held-like", "user_id": user, "item_id": liked, "type": "like", "ts": iso(3_000)}
    assert stack.client.post("/v1/events", json=[event]).status_code == 202
    wait_for(lambda: stack.checkpoints.learned() == len(crowd) + 1, 30, "the like learned")
    misses = _lookups(stack.client, "miss")
    wait_for(lambda: liked not in (top() or [liked]), 30, f"{liked} left out of {user}'s recommendations")
    assert _lookups(stack.client, "miss") == misses  # from the held set, kept current by the log


def test_a_held_sets_rows_are_mapped_again_only_when_it_or_the_index_changed() -> None:
    index = IdIndex(["a", "b", "c"])
    held = HeldSet({"b", "z"})  # z: seen, but not in the served model's index yet
    rows = held.rows_in(index)
    assert sorted(rows.tolist()) == [1]
    assert held.rows_in(index) is rows  # kept between requests
    index.add("z")  # a delta brought z into the index (in place: the same object, grown)
    assert sorted(held.rows_in(index).tolist()) == [1, 3]
    assert held.add_items(["c", "b"]) == 1  # a sync added c
    assert sorted(held.rows_in(index).tolist()) == [1, 2, 3]
    other = IdIndex(["c", "b", "a", "z"])  # a new version's index, the same size
    assert sorted(held.rows_in(other).tolist()) == [0, 1, 3]

"""The worker writes deltas against its last whole snapshot while they are small (real Redis; no Kafka here).

What the processor writes at each checkpoint: whole first, then deltas, each against the version
before it; once they add up to more than ``checkpoint_delta_share`` of the whole one's size, the
whole snapshot of the last delta version is written over it in the background (the chain then
starts there); whole at once for a delta larger than the share on its own, a chain of
MAX_DELTA_CHAIN, after a failed write or a restart; and a restarted worker gets the same learner
as a whole snapshot of the version would give.
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from learner import kernels
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from store.model_store import ModelStore
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store, skip_unless_ci
from tests.transport import Transport

pytestmark = pytest.mark.integration


def _events(start: int, n: int, users: int = 2_000, items: int = 3_000) -> list[dict]:
    return [
        {"event_id": f"e{k}", "user_id": f"u{k * 7 % users}", "item_id": f"v{k * 13 % items}", "type": "like",
         "ts": iso(k)}
        for k in range(start, start + n)
    ]  # fmt: skip


def _cooccurrence() -> OnlineLearner:
    return OnlineLearner(model=ItemCooccurrence())


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "d", retention=3) as opened:
        yield opened


async def _checkpoint(processor) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    """Checkpoint; the version written and its base (None: whole)."""
    version = await processor.checkpoint()
    assert version is not None
    return version, (await processor.store.load(version)).base_version


async def _with_a_model(store: ModelStore, share: float, n: int):  # type: ignore[no-untyped-def]
    """A started processor of the default model that has learned ``n`` events and checkpointed them: the
    processor, its transport, and the version (whole: the first after a start)."""
    transport = Transport()
    processor = transport.processor(store, new_learner=_cooccurrence, checkpoint_delta_share=share)
    await processor.start()
    await processor.process(transport.records(_events(0, n)))
    version, base = await _checkpoint(processor)
    assert base is None
    return processor, transport, version


async def test_whole_then_deltas_against_it_then_whole_again_and_every_version_loads_the_same(
    store: ModelStore,
) -> None:
    transport = Transport()
    processor = transport.processor(store, new_learner=_cooccurrence, checkpoint_delta_share=0.5)
    await processor.start()
    written = []
    start = 0
    for n in (20_000, 20, 20, 20, 20):  # a model (a few MB), then small steps: deltas
        await processor.process(transport.records(_events(start, n)))
        start += n
        written.append(await _checkpoint(processor))
    versions = [version for version, _ in written]
    assert [base for _, base in written] == [None, *versions[:-1]]  # each delta against the version before
    learner = processor.learner
    assert learner is not None
    stored = (await store.load(written[-1][0])).blob  # type: ignore[union-attr]
    assert len(stored) < len(learner.to_bytes()) / 4  # a delta: the size of 80 events, not of the model
    # retention (3) keeps more: the chains of the kept deltas, down to their whole version
    assert [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)] == versions
    # a big step: its delta passes half the whole one's size, so a whole snapshot, and deltas against it after
    await processor.process(transport.records(_events(start, 30_000, users=5_000, items=8_000)))
    start += 30_000
    big = await _checkpoint(processor)
    await processor.process(transport.records(_events(start, 10)))
    start += 10
    assert [big[1], (await _checkpoint(processor))[1]] == [None, big[0]]
    # a restart (a new worker on the same store) continues from the delta version: the same learner, and its first
    # checkpoint is whole
    restarted = Transport().processor(store, new_learner=_cooccurrence, checkpoint_delta_share=0.5)
    await restarted.start()
    assert restarted.learner is not None
    assert restarted.learner.to_bytes() == learner.to_bytes()
    restarted.next_offsets = processor.next_offsets
    await restarted.process(transport.records(_events(start, 10)))
    assert (await _checkpoint(restarted))[1] is None


async def test_a_failed_write_makes_the_next_checkpoint_whole(store: ModelStore, monkeypatch) -> None:
    processor, transport, whole = await _with_a_model(store, 0.5, 2_000)
    write = store.checkpoint
    failing = True

    async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failing:
            raise ConnectionError("Redis went away")
        return await write(*args, **kwargs)

    monkeypatch.setattr(store, "checkpoint", flaky)
    await processor.process(transport.records(_events(2_000, 20)))
    with pytest.raises(ConnectionError):
        await processor.checkpoint()
    failing = False
    version, base = await _checkpoint(processor)
    assert version != whole and base is None
    await processor.process(transport.records(_events(2_020, 20)))
    assert (await _checkpoint(processor))[1] == version  # deltas again, from the new whole version


async def test_share_0_writes_whole_snapshots_only(store: ModelStore) -> None:
    processor, transport, _ = await _with_a_model(store, 0.0, 500)
    bases = []
    for start in (500, 510):
        await processor.process(transport.records(_events(start, 10)))
        bases.append((await _checkpoint(processor))[1])
    assert bases == [None, None]


async def test_deltas_past_the_share_are_consolidated_in_the_background_and_a_chain_is_bounded(
    store: ModelStore, monkeypatch
) -> None:
    from stream import processor as processor_module

    processor, transport, whole = await _with_a_model(store, 0.5, 20_000)
    await processor.process(transport.records(_events(20_000, 20)))
    first, base = await _checkpoint(processor)
    assert base == whole
    size = await store.redis.hstrlen(store.keys.version(first), "blob")
    # room for 1.5 such deltas: the next one alone fits, so it is written as a delta; the two together do not, so
    # the whole snapshot of that version is written over it in the background
    processor.checkpoint_delta_share = 1.5 * size / await store.redis.hstrlen(store.keys.version(whole), "blob")
    await processor.process(transport.records(_events(20_020, 20)))
    second = await processor.checkpoint()
    assert second is not None
    await processor.settle()
    consolidated = await store.load(second)
    assert consolidated is not None and consolidated.base_version is None
    assert consolidated.meta["consolidated_from"] == first  # written as a delta against the version before
    assert consolidated.blob == processor.learner.to_bytes()  # type: ignore[union-attr]
    assert str(second).encode() not in await store.redis.hgetall(store.keys.version_bases)
    # the chain starts there now: the next delta is against it, and the deltas are counted from it again
    await processor.process(transport.records(_events(20_040, 20)))
    third, base = await _checkpoint(processor)
    assert base == second and [v for v, _ in processor._chain] == [third]
    await processor.settle()
    assert (await store.load(third)).base_version == second  # type: ignore[union-attr]  # one delta: within the share
    # a delta larger than the share of the whole snapshot on its own: a whole version at once
    processor.checkpoint_delta_share = 0.1 * size / len(consolidated.blob)
    await processor.process(transport.records(_events(20_060, 20)))
    assert (await _checkpoint(processor))[1] is None
    monkeypatch.setattr(processor_module, "MAX_DELTA_CHAIN", 2)
    processor.checkpoint_delta_share = 1.0
    bases = []
    for start in (20_080, 20_100, 20_120):
        await processor.process(transport.records(_events(start, 20)))
        bases.append((await _checkpoint(processor))[1])
    assert bases[0] is not None and bases[1] is not None and bases[2] is None  # two deltas, then whole


async def _a_delta(processor, transport, start: int) -> int:  # type: ignore[no-untyped-def]
    """Learn 20 events and checkpoint: the version written, a delta."""
    await processor.process(transport.records(_events(start, 20)))
    version, base = await _checkpoint(processor)
    assert base is not None
    return version


async def test_a_failed_background_write_leaves_the_chain_and_is_tried_again_after_the_next_checkpoint(
    store: ModelStore, monkeypatch
) -> None:
    processor, transport, whole = await _with_a_model(store, 0.5, 20_000)
    first = await _a_delta(processor, transport, 20_000)
    consolidate = store.consolidate
    failures = []

    async def down_once(version: int, blob: bytes) -> bool:
        if not failures:
            failures.append(version)
            raise ConnectionError("Redis went away")
        return await consolidate(version, blob)

    monkeypatch.setattr(store, "consolidate", down_once)
    size = await store.redis.hstrlen(store.keys.version(first), "blob")
    processor.checkpoint_delta_share = 1.5 * size / await store.redis.hstrlen(store.keys.version(whole), "blob")
    second = await _a_delta(processor, transport, 20_020)
    await processor.settle()
    assert failures == [second] and (await store.load(second)).base_version == first  # type: ignore[union-attr]
    assert [v for v, _ in processor._chain] == [first, second]  # still counted: the next checkpoint tries again
    third = await _a_delta(processor, transport, 20_040)
    await processor.settle()
    consolidated = await store.load(third)
    assert consolidated is not None and consolidated.base_version is None
    assert consolidated.blob == processor.learner.to_bytes()  # type: ignore[union-attr]
    assert processor._chain == []


async def test_the_worker_waits_for_a_background_write_before_it_stops(store: ModelStore, monkeypatch) -> None:
    from stream.app import _checkpoint_quietly

    consolidate = store.consolidate

    async def slow(version: int, blob: bytes) -> bool:  # a 100 MB write takes a while: not done by chance
        await asyncio.sleep(0.3)
        return await consolidate(version, blob)

    monkeypatch.setattr(store, "consolidate", slow)
    processor, transport, whole = await _with_a_model(store, 0.5, 20_000)
    first = await _a_delta(processor, transport, 20_000)
    size = await store.redis.hstrlen(store.keys.version(first), "blob")
    processor.checkpoint_delta_share = 1.5 * size / await store.redis.hstrlen(store.keys.version(whole), "blob")
    await processor.process(transport.records(_events(20_020, 20)))
    await _checkpoint_quietly(processor)  # the final checkpoint at shutdown: it starts a background write
    last = await store.current_version()
    assert last is not None and last != first
    assert (await store.load(last)).base_version is None  # type: ignore[union-attr]  # written before it returned


async def test_the_memory_the_model_grows_into_is_made_in_a_thread_at_a_checkpoint(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the co-occurrence rows' slot table is half full (from 1 MiB), a checkpoint has the table it doubles into
    made in a thread (``EventProcessor._prepare_growth``): made at the growth instead, on the event loop, its pages
    were a stall of the worker (~1 s on the grown bench model). The model learns on into it."""
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built (no C compiler at install time)")
    transport = Transport()
    processor = transport.processor(store, new_learner=_cooccurrence)
    await processor.start()
    rnd = random.Random(7)  # items at random: new pairs keep coming, so the table keeps growing

    def events(start: int, n: int) -> list[dict]:
        return [
            {"event_id": f"e{k}", "user_id": f"u{rnd.randrange(500)}", "item_id": f"v{rnd.randrange(20_000)}",
             "type": "like", "ts": iso(k)}
            for k in range(start, start + n)
        ]  # fmt: skip

    start = 0
    while True:
        await processor.process(transport.records(events(start, 2_000)))
        start += 2_000
        table = processor.learner.model.rows._table  # type: ignore[union-attr]
        if table.wants_spare:
            break
        assert start < 200_000, "the slot table never became half full"
    places = table.nbytes // 12
    learner = processor.learner
    assert learner is not None
    growth_ahead, ran_in = learner.growth_ahead, []

    def recorded():  # type: ignore[no-untyped-def]
        ahead = growth_ahead()
        if ahead is None:
            return None

        def run():  # type: ignore[no-untyped-def]
            ran_in.append(threading.get_ident())
            return ahead()

        return run

    monkeypatch.setattr(learner, "growth_ahead", recorded)
    await processor.checkpoint()  # starts it, in a thread
    await asyncio.wait_for(processor.settle(), timeout=30)  # (done already, or still running)
    assert not table.wants_spare and table.nbytes == 3 * 12 * places  # the table, and the one made ahead
    assert ran_in and ran_in[0] != threading.get_ident()  # not on the event loop's thread
    while table.nbytes == 3 * 12 * places:  # learns on, into it
        await processor.process(transport.records(events(start, 2_000)))
        start += 2_000
        assert start < 400_000, "the slot table never grew"
    assert table.nbytes <= 3 * 12 * places and len(table) > 0.7 * places

"""The worker's own costs stay bounded (real Redis; Kafka plays no part here): a long batch does not
hold the event loop, the live hit rate's samples keep to their share of the worker's time, and so
do checkpoints as they get longer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from recstream.share_budget import ShareBudget
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from stream import processor as processor_module
from stream.processor import (
    CHECKPOINT_BANK_SECONDS,
    HIT_SAMPLE_EVERY,
    HIT_TIME_SHARE,
    MAX_CHECKPOINT_SPACING_SECONDS,
    YIELD_EVERY_EVENTS,
    Record,
)
from tests.clock import iso
from tests.conftest import Endpoint
from tests.transport import Transport

pytestmark = pytest.mark.integration


def _likes(n: int) -> list[dict]:
    return [
        {"event_id": f"e{k}", "user_id": f"u{k % 50}", "item_id": f"v{k % 70}", "type": "like", "ts": iso(k)}
        for k in range(n)
    ]


async def _learned_seen_by_another_task(processor, records: list) -> set[int]:
    """Process ``records`` while another task (standing for the consumer's fetch loop and heartbeats)
    notes how many events were learned each time it gets a turn; returns the values strictly between
    the start and the end (none: the batch held the event loop while learning)."""
    seen: set[int] = set()
    done = False

    async def other_task() -> None:
        while not done:
            seen.add(processor.learner.events_learned)
            await asyncio.sleep(0)

    before = processor.learner.events_learned
    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    await processor.process(records)
    done = True
    await task
    after = processor.learner.events_learned
    return {v for v in seen if before < v < after}


@pytest.fixture
async def started(redis_endpoint: Endpoint):
    """A started processor of the default model on a fresh Redis prefix, and its transport."""
    client = aioredis.Redis.from_url(redis_endpoint.url)
    store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"w-{uuid.uuid4().hex[:8]}"))
    transport = Transport()
    processor = transport.processor(store)
    await processor.start()
    yield processor, transport
    await client.aclose()


def _clock(step: float) -> tuple[list[float], ShareBudget]:
    """A live hit-rate budget on a clock that advances ``step`` seconds at every read (a sample reads
    it once before and once after ranking: a sample costs ``step``)."""
    clock = [0.0]

    def tick() -> float:
        clock[0] += step
        return clock[0]

    return clock, ShareBudget(HIT_TIME_SHARE, cap_seconds=0.05, clock=tick)


async def test_other_tasks_run_while_a_long_batch_is_learned(started) -> None:
    processor, transport = started
    n = 20 * YIELD_EVERY_EVENTS
    between = await _learned_seen_by_another_task(processor, transport.records(_likes(n)))
    assert processor.learner is not None and processor.learner.events_learned == n
    # a turn every YIELD_EVERY_EVENTS events (19 values strictly between 0 and n)
    assert len(between) >= n // YIELD_EVERY_EVENTS - 1, sorted(between)

    # one batch message (a JSON list of events) yields inside the message too
    batch = [{**e, "event_id": f"b{e['event_id']}"} for e in _likes(4 * YIELD_EVERY_EVENTS)]
    record = Record("events", 0, transport.offset, None, json.dumps(batch).encode(), handle=transport.offset)
    transport.offset += 1
    between = await _learned_seen_by_another_task(processor, [record])
    assert processor.learner.events_learned == n + len(batch)
    assert len(between) >= 3, sorted(between)


async def test_live_hit_rate_samples_keep_to_their_share_of_the_time(started) -> None:
    processor, transport = started
    clock, processor.hit_budget = _clock(0.005)  # a catalogue so large that ranking it takes 5 ms
    n = 40 * HIT_SAMPLE_EVERY * 10
    await processor.process(transport.records(_likes(n)))
    budget = processor.hit_budget
    samples = round(budget.spent / 0.005)
    assert 0 < samples < n // HIT_SAMPLE_EVERY  # sampled, but less often than every 20th positive
    assert budget.spent <= HIT_TIME_SHARE * clock[0] + budget.cap_seconds + 0.005


async def test_a_cheap_catalogue_is_sampled_at_every_20th_positive(started) -> None:
    processor, transport = started
    _, processor.hit_budget = _clock(0.0001)  # 0.1 ms a sample: well within the budget
    n = 100 * HIT_SAMPLE_EVERY
    await processor.process(transport.records(_likes(n)))
    assert processor.hit_budget.spent > 0
    assert len(processor._hits) == n // HIT_SAMPLE_EVERY  # every like is a positive


class _ShiftedTime:
    """The ``time`` module with its monotonic clocks moved ahead by ``shift`` seconds (a slow write moves it)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __getattr__(self, name: str) -> object:  # everything else is the real module's
        return getattr(time, name)

    def monotonic(self) -> float:
        return time.monotonic() + self.shift

    def perf_counter(self) -> float:
        return time.perf_counter() + self.shift


async def _slow_checkpoint(processor, transport, monkeypatch, seconds: float) -> tuple[_ShiftedTime, float]:
    """Learn enough for a checkpoint to be due, then write one that takes ``seconds`` on the worker's clocks.

    Returns the clock and the (shifted) monotonic time just before the checkpoint began."""
    clock = _ShiftedTime()
    monkeypatch.setattr(processor_module, "time", clock)
    write = processor.store.checkpoint

    async def slow_write(*args: object, **kwargs: object) -> int | None:
        clock.shift += seconds
        return await write(*args, **kwargs)

    monkeypatch.setattr(processor.store, "checkpoint", slow_write)
    n = processor.checkpoint_every_events
    await processor.process(transport.records(_likes(n)))
    assert processor.checkpoint_due()
    began = clock.monotonic()
    assert await processor.checkpoint() is not None
    # as many events again: due by count from here on, unless deferred
    more = [{**e, "event_id": f"m{e['event_id']}"} for e in _likes(n)]
    await processor.process(transport.records(more))
    assert processor._pending.learned_since >= processor.checkpoint_every_events
    return clock, began


async def test_a_checkpoint_is_not_judged_due_while_a_batch_or_checkpoint_runs(started) -> None:
    """The idle timer asks between the agent's batches; while one runs (the lock held), the answer waits for it: the
    budget is not asked mid-way through a checkpoint, and a timer does not queue a checkpoint behind a batch."""
    processor, transport = started
    await processor.process(transport.records(_likes(processor.checkpoint_every_events)))
    assert processor.checkpoint_due()
    async with processor._lock:
        assert not processor.checkpoint_due()
    assert processor.checkpoint_due()


async def test_checkpoints_keep_to_their_share_of_the_time(started, monkeypatch) -> None:
    """A checkpoint of C s (a large model's snapshot to write) at share 0.5 earns C / 2 s of budget while it runs
    and spends C: beyond the banked seconds, the rest of its debt defers the next one."""
    processor, transport = started
    processor.checkpoint_share = 0.5
    clock, began = await _slow_checkpoint(processor, transport, monkeypatch, 10.0)
    # banked 2 s + 5 s earned - 10 s spent: 3 s of debt, earned back at 0.5 s a second: due 6 s after it ended
    assert not processor.checkpoint_due()  # due by count, but deferred
    clock.shift = began - time.monotonic() + 10.0 + 5.0
    assert not processor.checkpoint_due()
    clock.shift = began - time.monotonic() + 10.0 + 7.0  # (C / share after it began, 20 s, would still wait)
    assert processor.checkpoint_due()


async def test_a_long_checkpoint_is_paid_from_the_bank(started, monkeypatch) -> None:
    """A checkpoint of 1.5 s with the bank full (what short checkpoints leave unused, up to CHECKPOINT_BANK_SECONDS)
    does not hold the next one back."""
    processor, transport = started
    processor.checkpoint_share = 0.5
    await _slow_checkpoint(processor, transport, monkeypatch, 1.5)
    assert processor.checkpoint_budget.left == pytest.approx(CHECKPOINT_BANK_SECONDS + 0.75 - 1.5, abs=0.05)
    assert processor.checkpoint_due()


async def test_a_deferred_checkpoint_can_still_be_written(started, monkeypatch) -> None:
    processor, transport = started
    processor.checkpoint_share = 0.5
    await _slow_checkpoint(processor, transport, monkeypatch, 10.0)
    assert not processor.checkpoint_due()
    # what the final checkpoint at shutdown and the retry of a stalled worker do: not asking whether it is due
    assert await processor.checkpoint() is not None
    assert not processor._pending.records


async def test_share_1_defers_nothing(started, monkeypatch) -> None:
    processor, transport = started
    processor.checkpoint_share = 1.0
    await _slow_checkpoint(processor, transport, monkeypatch, 10.0)
    assert processor.checkpoint_due()  # with share 1 a checkpoint earns what it spends


async def test_one_slow_checkpoint_defers_the_next_by_at_most_the_cap(started, monkeypatch) -> None:
    """A checkpoint slowed by a stall (here 20 s at share 0.2: 70 s of debt to earn back uncapped) holds the next
    back 30 s at most after it ended."""
    processor, transport = started
    processor.checkpoint_share = 0.2
    clock, began = await _slow_checkpoint(processor, transport, monkeypatch, 20.0)
    clock.shift = began - time.monotonic() + 20.0 + MAX_CHECKPOINT_SPACING_SECONDS - 2.0
    assert not processor.checkpoint_due()
    clock.shift = began - time.monotonic() + 20.0 + MAX_CHECKPOINT_SPACING_SECONDS + 2.0
    assert processor.checkpoint_due()


def test_the_checkpoint_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="checkpoint_share"):
        Transport().processor(None, checkpoint_share=0)  # type: ignore[arg-type]
    processor = Transport().processor(None, checkpoint_share=0.3)  # type: ignore[arg-type]
    assert processor.checkpoint_budget.share == 0.3
    with pytest.raises(ValueError, match="checkpoint_share"):
        processor.checkpoint_share = 1.5


def _batches(events: list[dict], per_message: int, first_offset: int) -> list[Record]:
    return [
        Record("events", 0, first_offset + k, None, json.dumps(events[m : m + per_message]).encode(), handle=k)
        for k, m in enumerate(range(0, len(events), per_message))
    ]


async def test_a_worker_behind_checkpoints_a_factor_further_apart_by_count_and_by_time(started, monkeypatch) -> None:
    """While more than ``checkpoint_every_events`` events wait in Kafka past those taken (the messages the agent
    says wait, at the last batch's events per message), a checkpoint is due only after ``checkpoint_catch_up_factor``
    times the events, or the interval; the gauge says so. Caught up, as before."""
    processor, _ = started
    clock = _ShiftedTime()
    monkeypatch.setattr(processor_module, "time", clock)
    processor.checkpoint_every_events, processor.checkpoint_catch_up_factor = 200, 4.0
    likes = [{**e, "event_id": f"b{n}"} for n, e in enumerate(_likes(1000))]
    await processor.process(_batches(likes[:200], 10, 0))  # 200 events, 10 a message
    processor.note_waiting(20)  # 200 events wait: not more than checkpoint_every_events
    assert not processor.behind and processor.checkpoint_due()
    assert REGISTRY.get_sample_value("recstream_worker_catching_up") == 0
    processor.note_waiting(21)
    assert processor.behind and not processor.checkpoint_due()
    assert REGISTRY.get_sample_value("recstream_worker_catching_up") == 1
    await processor.process(_batches(likes[200:790], 10, 20))
    assert not processor.checkpoint_due()  # 790 learned: under 4 x 200
    await processor.process(_batches(likes[790:800], 10, 79))
    assert processor.checkpoint_due()  # 800
    assert await processor.checkpoint() is not None
    await processor.process(_batches(likes[800:810], 10, 80))
    clock.shift += 1.5 * processor.checkpoint_interval_seconds
    assert not processor.checkpoint_due()  # by time: under 4 x the interval
    processor.note_waiting(0)  # caught up
    assert processor.checkpoint_due() and REGISTRY.get_sample_value("recstream_worker_catching_up") == 0
    processor.note_waiting(21)
    clock.shift += 2.6 * processor.checkpoint_interval_seconds
    assert processor.checkpoint_due()  # 4.1 x the interval
    processor.checkpoint_catch_up_factor = 1.0  # off: behind all the same, but due as usual
    assert processor.behind and REGISTRY.get_sample_value("recstream_worker_catching_up") == 1
    clock.shift -= 3.0 * processor.checkpoint_interval_seconds  # 1.1 x the interval since the last checkpoint
    assert processor.checkpoint_due()

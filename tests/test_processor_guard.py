"""The worker's processor with a real Redis: the model guard pauses learning, keeps the last version
current, quarantines what arrives meanwhile, and resumes by operator action or by itself.

Kafka is not involved in what is tested here (the processor is handed records directly), so the
transport callbacks are plain functions that record what the worker would produce and ack.
"""

from __future__ import annotations

import random
import uuid

import pytest
import redis.asyncio as aioredis

from learner.gate.gate import GateConfig, default_gate
from learner.gate.model_guard import ModelGuard
from learner.implicit_mf import ImplicitMF
from learner.online_learner import OnlineLearner
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from stream.processor import MODEL_PAUSED, QUARANTINED, EventProcessor
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration


def _stream(rnd: random.Random, n: int, start: int, flipped: bool) -> list[dict]:
    """Users like items of their own group and skip the other's; ``flipped`` turns that around."""
    events = []
    for k in range(start, start + n):
        user = rnd.randrange(40)
        own = user % 2
        group = own if rnd.random() < 0.5 else 1 - own
        item = f"g{group}-{rnd.randrange(10)}"
        liked = (group == own) != flipped
        events.append(
            {
                "event_id": f"e{k}",
                "user_id": f"u{user}",
                "item_id": item,
                "type": "like" if liked else "skip",
                "ts": iso(k * 0.05),
            }
        )
    return events


async def _paused(processor: EventProcessor, transport: Transport, seed: int) -> random.Random:
    """The good stream learned, then the flipped one until the guard pauses; the random source, to go on with."""
    rnd = random.Random(seed)
    await processor.process(transport.records(_stream(rnd, 3000, 0, flipped=False)))
    await processor.process(transport.records(_stream(rnd, 1500, 3000, flipped=True)))
    assert processor.paused_since is not None
    return rnd


@pytest.fixture
async def setup(redis_endpoint: Endpoint):
    client = aioredis.Redis.from_url(redis_endpoint.url)
    store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"g-{uuid.uuid4().hex[:8]}"))
    transport = Transport()
    guard = ModelGuard(recent_window=200, reference_window=2000, min_reference=500, resume_events=300)
    processor = transport.processor(store, new_learner=lambda: OnlineLearner(model=ImplicitMF(seed=1)), guard=guard)
    await processor.start()
    yield processor, store, transport, guard
    await client.aclose()


async def test_guard_pauses_on_degradation_and_an_operator_resumes(setup) -> None:
    processor, store, transport, guard = setup
    rnd = random.Random(5)
    await processor.process(transport.records(_stream(rnd, 3000, 0, flipped=False)))
    good_version = await processor.checkpoint()
    assert good_version is not None and processor.paused_since is None

    # Tastes flip (a broken client release labelling everything backwards): the loss jumps.
    await processor.process(transport.records(_stream(rnd, 1500, 3000, flipped=True)))
    assert processor.paused_since is not None, guard.status()
    learned_at_pause = processor.learner.events_learned
    held = [letter for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert held and all(letter["reason"] == MODEL_PAUSED for letter in held)
    assert held[0]["event"]["event_id"].startswith("e")  # the event travels with its reason

    # While paused: nothing is learned, the checkpoint writes no new version, offsets still move.
    version_after_pause = await processor.checkpoint()
    await processor.process(transport.records(_stream(rnd, 200, 4500, flipped=True)))
    assert processor.learner.events_learned == learned_at_pause
    assert await processor.checkpoint() == version_after_pause
    assert await store.current_version() == version_after_pause
    assert (await store.offsets())[("events", 0)] == transport.offset
    assert (await store.guard_status())["state"] == "paused"
    assert (await store.gate_counts())[MODEL_PAUSED] == len(
        [1 for kind, letter in transport.dead_letters if kind == QUARANTINED]
    )
    assert sorted(transport.acked) == list(range(transport.offset))  # everything handled is acked

    # An operator resumes this pause (named by its start, as the API does); the next checkpoint applies it.
    await store.request_resume((await store.guard_status())["since"])
    await processor.process(transport.records(_stream(rnd, 10, 4700, flipped=False)))
    await processor.checkpoint()
    assert processor.paused_since is None and not guard.paused
    await processor.process(transport.records(_stream(rnd, 10, 4710, flipped=False)))
    assert processor.learner.events_learned == learned_at_pause + 10


async def test_a_replay_of_what_a_pause_held_is_held_again_while_paused(setup) -> None:
    # The guard paused for traffic the gate let through; the operator replays what was held as model_paused: if the
    # guard is paused when the replay arrives (or pauses again for it), the replayed events are held again, even
    # those sent with the model_paused override an earlier release's replay wrote.
    processor, _store, transport, _guard = setup
    await _paused(processor, transport, 7)
    learned = processor.learner.events_learned
    held = [letter["event"] for kind, letter in transport.dead_letters if kind == QUARANTINED][:20]
    assert len(held) == 20
    transport.dead_letters.clear()
    replayed = transport.records(held)
    for k, record in enumerate(replayed):
        record.overrides = frozenset({MODEL_PAUSED}) if k % 2 else frozenset()
    await processor.process(replayed)
    assert processor.learner.events_learned == learned
    again = [letter for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert [letter["event"]["event_id"] for letter in again] == [e["event_id"] for e in held]
    assert {letter["reason"] for letter in again} == {MODEL_PAUSED}


async def test_guard_resumes_by_itself_when_the_stream_is_healthy_again(setup) -> None:
    processor, _store, transport, guard = setup
    rnd = await _paused(processor, transport, 6)
    learned_at_pause = processor.learner.events_learned
    # The bad release is rolled back: events look like before. The guard keeps scoring (not learning)
    # and resumes once the loss is back near its reference.
    await processor.process(transport.records(_stream(rnd, 3000, 4500, flipped=False)))
    assert processor.paused_since is None and guard.resumes == 1
    assert processor.learner.events_learned > learned_at_pause


async def test_a_pause_outlives_a_restart_and_ends_only_when_the_stream_is_healthy(setup) -> None:
    processor, store, transport, _guard = setup
    # the stream of the test above, where the guard resumes without a restart
    rnd = await _paused(processor, transport, 6)
    await processor.checkpoint()

    # The worker restarts while the bad release is still live: a fresh guard, the same Redis.
    fresh = ModelGuard(recent_window=200, reference_window=2000, min_reference=500, resume_events=300)
    restarted = transport.processor(store, new_learner=lambda: OnlineLearner(model=ImplicitMF(seed=1)), guard=fresh)
    await restarted.start()
    learned = restarted.learner.events_learned
    await restarted.process(transport.records(_stream(rnd, 1000, 4500, flipped=True)))
    assert restarted.paused_since is not None and fresh.paused, fresh.status()
    assert restarted.learner.events_learned == learned  # still bad: nothing learned

    # The release is rolled back: the restored reference tells the guard the stream is healthy again.
    await restarted.process(transport.records(_stream(rnd, 3000, 5500, flipped=False)))
    assert restarted.paused_since is None and fresh.resumes == 1, fresh.status()
    assert restarted.learner.events_learned > learned


async def test_a_resume_request_for_an_earlier_pause_does_not_end_a_later_one(setup) -> None:
    processor, store, transport, guard = setup
    rnd = random.Random(7)
    await processor.process(transport.records(_stream(rnd, 3000, 0, flipped=False)))
    await store.request_resume("1764400000.0")  # left over: that pause ended by itself before the worker read it
    await processor.checkpoint()
    await processor.process(transport.records(_stream(rnd, 1500, 3000, flipped=True)))
    assert processor.paused_since is not None
    await processor.checkpoint()
    assert processor.paused_since is not None and guard.paused  # the old request did not end this pause
    status = await store.guard_status()
    assert status["state"] == "paused" and status["since"] == str(processor.paused_since)
    # a request naming this pause ends it
    await store.request_resume(status["since"])
    await processor.checkpoint()
    assert processor.paused_since is None and not guard.paused


async def test_an_operator_promoting_an_early_version_does_not_pause_learning(setup) -> None:
    processor, store, transport, guard = setup
    rnd = random.Random(8)
    await processor.process(transport.records(_stream(rnd, 150, 0, flipped=False)))
    early = await processor.checkpoint()  # a model that has seen little: its losses are high
    await processor.process(transport.records(_stream(rnd, 3000, 150, flipped=False)))
    await processor.checkpoint()
    assert processor.paused_since is None and guard.status()["reference_loss"] < 0.6, guard.status()

    # An operator goes back to the early version; the stream is as healthy as before.
    await store.promote(early, reason="back to the early one")
    await processor.process(transport.records(_stream(rnd, 1500, 3150, flipped=False)))
    assert processor.paused_since is None and guard.pauses == 0, guard.status()
    assert processor.learner.events_learned == 150 + 1500  # the early version's events, then every new one
    # its own yardstick: built from the promoted version's losses only
    assert guard.status()["reference_loss"] > 0.0


async def test_a_rollback_during_a_pause_keeps_the_pause_and_its_reference(setup) -> None:
    processor, store, transport, guard = setup
    rnd = random.Random(6)
    await processor.process(transport.records(_stream(rnd, 3000, 0, flipped=False)))
    good = await processor.checkpoint()
    await processor.process(transport.records(_stream(rnd, 1500, 3000, flipped=True)))
    assert processor.paused_since is not None
    assert await processor.checkpoint() != good  # what it learned of the bad data before the pause is a version
    reference = guard.status()["reference_loss"]
    await store.promote(good, reason="roll back the bad data")  # step 2 of the runbook's "Model guard paused"
    await processor.process(transport.records(_stream(rnd, 100, 4500, flipped=True)))  # adopted before this batch
    assert processor.version == good
    assert processor.paused_since is not None and guard.paused
    assert guard.status()["reference_loss"] == reference  # still the last good model's yardstick


async def test_bad_data_still_arriving_after_a_rollback_is_judged_against_the_promoted_versions_own_level(
    setup,
) -> None:
    processor, store, transport, guard = setup
    rnd = random.Random(9)
    await processor.process(transport.records(_stream(rnd, 3000, 0, flipped=False)))
    good = await processor.checkpoint()
    await processor.process(transport.records(_stream(rnd, 1000, 3000, flipped=False)))
    await processor.checkpoint()
    assert processor.paused_since is None
    # The operator rolls back before the guard saw anything wrong, and the bad data goes on: the guard's new yardstick
    # is the promoted version's own progressive window (without it, the flipped losses would become the reference).
    await store.promote(good, reason="a suspicious release")
    await processor.process(transport.records(_stream(rnd, 1500, 4000, flipped=True)))
    assert processor.paused_since is not None and guard.pauses == 1, guard.status()


async def test_a_held_event_is_seen_by_its_user_though_not_learned(redis_endpoint: Endpoint) -> None:
    # The quality gate holds a like without a view; the model guard, while paused, holds everything. Either way the
    # person did it: its item is never recommended to them (the API leaves out their seen set).
    async with open_model_store(redis_endpoint.url, b"k", "held-seen") as store:
        transport = Transport()
        gate = default_gate(GateConfig(like_without_view_enabled=True))
        processor = transport.processor(store, new_learner=lambda: OnlineLearner(ImplicitMF(n_factors=4)), gate=gate)
        await processor.start()
        like = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso(0)}
        view = {"event_id": "e2", "user_id": "u1", "item_id": "v2", "type": "view", "ts": iso(1)}
        await processor.process(transport.records([like, view]))
        await processor.checkpoint()
        assert [kind for kind, _ in transport.dead_letters] == [QUARANTINED]  # the like, held
        assert processor.learner is not None and processor.learner.events_learned == 1  # the view
        assert await store.seen("u1") == {"v1", "v2"}


async def test_a_resume_request_outlives_a_worker_that_stopped_before_storing_it(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request stays in Redis until the checkpoint that stores the guard's new state deletes it: a worker that
    applied it and failed (or stopped) before that checkpoint leaves it for the next one, which resumes too."""
    processor, store, transport, _guard = setup
    rnd = await _paused(processor, transport, 5)  # the stream of the first test: it pauses
    await processor.checkpoint()
    since = (await store.guard_status())["since"]
    await store.request_resume(since)

    async def redis_gone(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(store, "checkpoint", redis_gone)
    await processor.process(transport.records(_stream(rnd, 10, 4500, flipped=False)))
    with pytest.raises(ConnectionError):
        await processor.checkpoint()  # applies the request in memory; its write fails
    assert processor.paused_since is None
    monkeypatch.undo()
    assert await store.resume_request() == since  # still there: nothing stored the resume

    # The worker stops there; the next one starts paused (as stored) and applies the request itself.
    fresh = ModelGuard(recent_window=200, reference_window=2000, min_reference=500, resume_events=300)
    restarted = transport.processor(store, new_learner=lambda: OnlineLearner(model=ImplicitMF(seed=1)), guard=fresh)
    await restarted.start()
    assert restarted.paused_since is not None
    await restarted.process(transport.records(_stream(rnd, 10, 4510, flipped=False)))
    assert await restarted.checkpoint() is not None
    assert restarted.paused_since is None and (await store.guard_status())["state"] == "learning"
    assert await store.resume_request() is None  # deleted by the checkpoint that stored the resume

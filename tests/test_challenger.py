"""Champion / challenger with a real Redis: a better challenger is promoted automatically, a worse one
is not, every promotion is recorded with its reason, and the contest survives a restart.

The processor is handed records directly (Kafka plays no part in the rule under test); the
stream has two taste groups, which item co-occurrence learns and all-time popularity cannot.
"""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from learner.challenger import PromotionRule
from learner.online_learner import OnlineLearner
from learner.registry import build_model
from store.keys import Keys
from store.model_store import CheckpointConflict, ModelStore
from store.signing import SnapshotSigner
from stream.processor import EventProcessor, PromotedMeanwhile
from tests.conftest import Endpoint
from tests.taste_stream import taste_events
from tests.transport import Transport

pytestmark = pytest.mark.integration

RULE = PromotionRule(window=200, margin=0.05, min_z=2.0, sample_every=1)


async def _started(
    store: ModelStore, transport: Transport, champion: str = "item_cooccurrence", challenger: str = "popularity"
) -> EventProcessor:
    """A worker's processor (started: state loaded from Redis) with one challenger in shadow."""
    contestants = {name: (lambda name=name: OnlineLearner(model=build_model(name))) for name in (champion, challenger)}
    processor = transport.processor(
        store, new_learner=contestants[champion], contestants=contestants, champion_name=champion, promotion_rule=RULE
    )
    await processor.start()
    return processor


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    client = aioredis.Redis.from_url(redis_endpoint.url)
    yield ModelStore(client, SnapshotSigner(b"k"), Keys(f"cc-{uuid.uuid4().hex[:8]}"), retention=50)
    await client.aclose()


async def _stream(processor: EventProcessor, transport: Transport, events: list[dict], batch: int = 250) -> None:
    for start in range(0, len(events), batch):
        await processor.process(transport.records(events[start : start + batch]))
        await processor.checkpoint()


async def test_a_better_challenger_is_promoted_automatically_and_recorded(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport, champion="popularity", challenger="item_cooccurrence")
    events = taste_events(seed=3, users_per_group=100)
    await _stream(processor, transport, events)

    assert processor.champion_name == "item_cooccurrence" and not transport.dead_letters
    promotions = await store.promotions()
    assert len(promotions) == 1, promotions  # promoted once, and the old champion did not come back
    record = promotions[0]
    assert (record["actor"], record["from_model"], record["to_model"]) == ("auto", "popularity", "item_cooccurrence")
    assert "McNemar" in record["reason"] and record["standing"]["samples"] == RULE.window
    assert record["standing"]["challenger_hit_rate"] - record["standing"]["champion_hit_rate"] >= RULE.margin
    # The promoted version holds the challenger's model; learning went on from it.
    promoted = await store.load(record["to"])
    assert promoted is not None and promoted.meta["contestant"] == "item_cooccurrence"
    assert OnlineLearner.from_bytes(promoted.blob).model.kind == "item_cooccurrence"
    current = await store.load_current()
    assert current.version > record["to"] and current.meta["contestant"] == "item_cooccurrence"
    # Both learned every event: the former champion goes on in shadow.
    assert processor.learner.events_learned == len(events)
    assert processor.challengers["popularity"].events_learned == len(events)
    contest = await store.contest()
    assert contest["champion"] == "item_cooccurrence" and set(contest["challengers"]) == {"popularity"}
    # The metrics show the new roles alone: no frozen progressive figure of the former champion's kind, no standing of
    # a contestant in its former role
    exported = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in REGISTRY.collect()
        if family.name in ("recstream_progressive_auc", "recstream_contest_hit_rate_at_10")
        for sample in family.samples
    }
    assert ("recstream_progressive_auc", (("model", "item_cooccurrence"),)) in exported
    assert ("recstream_progressive_auc", (("model", "popularity"),)) not in exported
    roles = {(dict(labels)["contestant"], dict(labels)["role"]) for name, labels in exported if "contest" in name}
    assert roles == {("item_cooccurrence", "champion"), ("popularity", "challenger")}, exported


async def test_a_worse_challenger_is_not_promoted(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await _stream(processor, transport, taste_events(seed=4, users_per_group=100))

    assert processor.champion_name == "item_cooccurrence" and not transport.dead_letters
    assert await store.promotions() == []
    standing = (await store.contest())["challengers"]["popularity"]
    assert standing["samples"] == RULE.window  # it was judged on a full window, and lost
    assert standing["challenger_hit_rate"] < standing["champion_hit_rate"]
    assert standing["verdict"] is None


async def test_the_contest_survives_a_restart_and_an_operator_can_promote(store: ModelStore) -> None:
    transport = Transport()
    first = await _started(store, transport)
    events = taste_events(seed=5, users_per_group=40)
    await _stream(first, transport, events[:1000])

    # A new worker process: the champion's name and the shadow model come back from Redis.
    second = await _started(store, transport)
    assert second.champion_name == "item_cooccurrence"
    assert second.challengers["popularity"].events_learned == first.challengers["popularity"].events_learned == 1000

    # An unknown name is refused (logged) and changes nothing; a known one is promoted at the next checkpoint.
    await store.request_challenger_promotion("no-such-model", "typo")
    await _stream(second, transport, events[1000:1100])
    assert second.champion_name == "item_cooccurrence" and await store.promotions() == []
    await store.request_challenger_promotion("popularity", "compare in production", actor="api")
    before = await store.current_version()
    await _stream(second, transport, events[1100:1200])
    assert second.champion_name == "popularity"
    [record] = await store.promotions()
    assert (record["actor"], record["reason"], record["from"], record["to_model"]) == (
        "api",
        "compare in production",
        before,
        "popularity",
    )
    assert (await store.load_current()).meta["contestant"] == "popularity"
    assert second.learner.events_learned == 1200 and second.challengers["item_cooccurrence"].events_learned == 1200
    # The operator's choice holds against the automatic rule for a while, also across a restart.
    assert 0 < second.auto_hold_samples <= RULE.window * RULE.hold_windows
    third = await _started(store, transport)
    assert third.champion_name == "popularity" and third.auto_hold_samples == second.auto_hold_samples


class _OperatorAtTheSameMoment:
    """Wraps the store so that an operator promotes ``version`` just before the worker's next checkpoint
    transaction (the interleaving a real race produces), once."""

    def __init__(self, store: ModelStore, version: int) -> None:
        self.store, self.version, self.done = store, version, False

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    async def checkpoint(self, *args, **kwargs):
        if not self.done:
            self.done = True
            await self.store.promote(self.version, reason="operator at the same moment")
        return await self.store.checkpoint(*args, **kwargs)


async def test_an_operator_promotion_racing_a_challenger_swap_stands_and_drops_the_earlier_request(
    store: ModelStore,
) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    events = taste_events(seed=6, users_per_group=20)
    await _stream(processor, transport, events[:400])
    first = (await store.versions())[0]["version"]

    await store.request_challenger_promotion("popularity", "swap", actor="api")
    processor.store = _OperatorAtTheSameMoment(store, first)
    with pytest.raises(PromotedMeanwhile):  # (not a failure: retried at once, no back-off)
        await processor.process(transport.records(events[400:450]))
        await processor.checkpoint()  # swaps in memory, then loses the race to the operator
    processor.store = store
    # adopts the operator's version; the request, made before the operator's promotion, was dropped by it
    await _stream(processor, transport, events[450:500])
    await _stream(processor, transport, events[500:550])

    records = await store.promotions()
    assert [(r["actor"], r["reason"]) for r in records] == [("operator", "operator at the same moment")]
    # the operator's version is the first, which the champion (item co-occurrence) wrote, and it stands
    (operator,) = records
    assert operator["to"] == first and "to_model" not in operator
    meta = await store.load(operator["to"])
    assert meta is not None and meta.meta["contestant"] == "item_cooccurrence"
    assert processor.champion_name == "item_cooccurrence" and await store.challenger_request() is None
    newest = await store.load(await store.current_version() or 0)
    assert newest is not None and newest.meta["contestant"] == "item_cooccurrence"

    # A request made after the promotion is applied at the next checkpoint.
    await store.request_challenger_promotion("popularity", "swap after", actor="api")
    await _stream(processor, transport, events[550:600])
    assert [(r["actor"], r["reason"]) for r in await store.promotions()][-1] == ("api", "swap after")
    assert processor.champion_name == "popularity" and await store.challenger_request() is None


async def test_a_second_worker_on_the_same_prefix_is_refused_not_merged(store: ModelStore) -> None:
    transport = Transport()
    first = await _started(store, transport)
    events = taste_events(seed=7, users_per_group=10)
    await _stream(first, transport, events[:100])
    second = await _started(store, Transport())
    await _stream(first, transport, events[100:200])  # the first worker moves on
    with pytest.raises(CheckpointConflict, match="another worker"):
        await second.process(Transport().records(events[200:210]))
    assert await store.promotions() == []


async def test_an_operator_request_survives_a_crash_before_its_checkpoint(store: ModelStore) -> None:
    transport = Transport()
    first = await _started(store, transport)
    events = taste_events(seed=8, users_per_group=10)
    await _stream(first, transport, events[:100])
    await store.request_challenger_promotion("popularity", "try it", actor="api")

    class Down:
        def __getattr__(self, name: str):
            return getattr(store, name)

        async def checkpoint(self, *_args, **_kwargs):
            raise ConnectionError("Redis went away")

    first.store = Down()
    await first.process(transport.records(events[100:110]))
    with pytest.raises(ConnectionError):
        await first.checkpoint()  # the swap was made in memory only; then the worker is killed
    assert await store.challenger_request() is not None

    second = await _started(store, transport)
    assert second.champion_name == "item_cooccurrence"
    await _stream(second, transport, events[110:120])
    assert second.champion_name == "popularity"
    assert [r["reason"] for r in await store.promotions()] == ["try it"]


async def test_a_challenger_left_out_of_the_configuration_for_a_while_starts_again(store: ModelStore) -> None:
    transport = Transport()
    events = taste_events(seed=9, users_per_group=10)
    with_it = await _started(store, transport)
    await _stream(with_it, transport, events[:100])
    without = await _started(store, transport, challenger="bpr")
    await _stream(without, transport, events[100:150])
    again = await _started(store, transport)
    # Its saved state is from before the 50 events it did not see: it starts from nothing instead.
    assert again.challengers["popularity"].events_learned == 0
    assert again.learner.events_learned == 150

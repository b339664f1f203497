"""The worker's Kafka consumer asks the broker for a short fetch wait and a minimum fetch size, and delivers messages
without Faust's per-message ``wait_first`` (stream/kafka_consumer.py says why)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator
from types import SimpleNamespace

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from recstream.settings import Settings
from stream.app import create_app
from stream.kafka_consumer import FAUST_DRAIN_MESSAGES_SHA256, BundledMessage, DirectDeliveryConsumer


async def _fetch_limits(settings: Settings) -> tuple[int, int]:
    app, _ = create_app(settings)
    # the aiokafka consumer the worker's consumer thread makes (not started: no broker is needed)
    consumer = app.consumer._thread._create_consumer(loop=asyncio.get_running_loop())
    try:
        return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes
    finally:
        await consumer.stop()


async def test_the_worker_consumer_uses_the_configured_fetch_limits_not_fausts() -> None:
    broker = "kafka://127.0.0.1:1"
    # Faust alone passes a 1,500 ms wait, and aiokafka a minimum of 1 byte
    assert await _fetch_limits(Settings(broker_url=broker)) == (100, 65_536)
    settings = Settings(broker_url=broker, broker_fetch_max_wait_seconds=0.25, broker_fetch_min_bytes=1)
    assert await _fetch_limits(settings) == (250, 1)


def test_the_worker_consumer_delivers_directly_and_follows_the_installed_fausts_loop() -> None:
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    assert isinstance(app.consumer, DirectDeliveryConsumer)
    # DirectDeliveryConsumer._drain_messages is a copy of Faust's but for the delivery: a Faust whose loop differs
    # from the one copied fails here, so that its changes are brought into the copy
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_MESSAGES_SHA256
    assert (
        "await self.wait_first(\n                                callback(message), self.suspend_flow.wait()" in source
    )


def test_a_full_stream_buffer_leaves_the_partition_in_the_fetch() -> None:
    """Faust takes a partition out of the fetch when the stream's buffer is nearly full and puts it back at 40%; the
    worker's consumer leaves it in (the delivery waits for room instead): see stream.kafka_consumer."""
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    consumer = app.consumer
    full, other = TP("events", 0), TP("events", 1)
    consumer._set_active_tps({full, other})
    consumer.on_buffer_full(full)
    assert consumer._get_active_partitions() == {full, other}
    FaustConsumer.on_buffer_full(consumer, full)  # what Faust's own consumer does
    assert consumer._get_active_partitions() == {other}


async def test_deliveries_wait_while_a_stream_buffer_is_under_pressure_until_it_drains() -> None:
    """Faust calls on_buffer_full at 80% of a stream's buffer and on_buffer_drop at 40% (per partition): between them
    the delivery loop waits (``_room``), so that the next messages go straight into the buffer instead of each
    through Faust's path for a full one (a task and an ``asyncio.wait`` per message)."""
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    consumer = app.consumer
    room = consumer._room
    first, second = TP("events", 0), TP("events", 1)
    assert room.is_set()
    consumer.on_buffer_full(first)
    consumer.on_buffer_full(second)
    assert not room.is_set()
    consumer.on_buffer_drop(first)
    assert not room.is_set()  # the other partition's buffer is still under pressure
    consumer.on_buffer_drop(second)
    assert room.is_set()
    consumer.on_buffer_drop(second)  # a drop without a full before it (Faust's own order of callbacks) changes nothing
    assert room.is_set()


def _records(offsets: range | list[int], partition: int = 0) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            topic="events",
            partition=partition,
            offset=n,
            key=None,
            value=b"{}",
            headers=[],
            timestamp=1_000 * n,
            timestamp_type=0,
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=2,
        )
        for n in offsets
    ]


async def test_the_consumer_bundles_fetched_records_up_to_the_configured_size_or_not_at_all() -> None:
    tp = TP("events", 0)
    for limit, expected in ((10, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], 10]), (0, list(range(11)))):
        app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1", stream_bundle_bytes=limit))
        consumer = app.consumer
        assert consumer.bundle_max_bytes == limit

        async def fetched(*_: object) -> dict:
            return {tp: _records(range(11))}

        consumer._thread.getmany = fetched
        runs = (await consumer._getmany({tp}, 1.0))[tp]
        assert [[r.offset for r in run] if isinstance(run, list) else run.offset for run in runs] == expected


async def _deliver(consumer: DirectDeliveryConsumer, tp: TP, messages: list) -> list:
    """Run the consumer's fetch loop over ``messages`` (as one fetch), returning what it delivered."""
    delivered = []
    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def getmany(**_: object) -> AsyncIterator:
        for message in messages:
            yield tp, message
        fetcher._stopped.set()

    async def callback(message: object) -> None:
        delivered.append(message)

    consumer.getmany, consumer.callback = getmany, callback
    await consumer._drain_messages(fetcher)
    return delivered


def _acking_consumer() -> tuple[DirectDeliveryConsumer, TP]:
    """A worker's consumer (bundles of up to 64 KiB) that acknowledges the messages of topic "events", and its
    partition 0."""
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1", stream_bundle_bytes=65_536))
    app.topics._acking_topics.add("events")  # (the conductor adds the topics it subscribes to)
    return app.consumer, TP("events", 0)


async def test_a_bundle_after_a_hole_leaves_its_own_offsets_out_of_the_gap_and_commits_once_acknowledged() -> None:
    """A hole before a bundle (records compacted away, say) is a gap to Faust, as between two messages; the bundle's
    own offsets are not, so nothing of it is committed before it is acknowledged (after its checkpoint)."""
    consumer, tp = _acking_consumer()
    consumer._committed_offset[tp] = 101
    consumer._read_offset[tp] = 100
    bundle = consumer._to_message(tp, _records(range(150, 161)))
    assert isinstance(bundle, BundledMessage)
    assert await _deliver(consumer, tp, [bundle]) == [bundle]
    # the hole 101-149 (Faust's gaps start above the committed offset), and not the bundle's 150-160
    assert sorted((i.begin, i.end) for i in consumer._gap[tp]) == [(102, 150)]
    assert consumer._new_offset(tp) is None  # nothing acknowledged: nothing to commit
    assert consumer.ack(bundle)
    assert consumer._new_offset(tp) == 161


async def test_a_bundle_partly_read_before_is_delivered_and_acknowledged_from_the_read_offset() -> None:
    """A bundle fetched again with records below the partition's read offset (a seek back, say) is delivered without
    them, as single messages below it are dropped, and its acknowledgement covers the records delivered: the
    acknowledgement does not read the records (the agent takes them from the bundle), only its first offset."""
    consumer, tp = _acking_consumer()
    consumer._committed_offset[tp] = 100
    consumer._read_offset[tp] = 120
    bundle = consumer._to_message(tp, _records(range(110, 131)))
    assert bundle.first_offset == 110
    assert await _deliver(consumer, tp, [bundle]) == [bundle]
    assert [r.offset for r in bundle.records] == list(range(120, 131)) and bundle.first_offset == 120
    bundle.records = []  # taken by the agent (stream.app.records_of)
    assert consumer.ack(bundle)
    assert sorted(consumer._acked[tp]) == list(range(120, 131))


def test_a_bundle_refetched_after_a_rebalance_acknowledges_every_offset_it_holds() -> None:
    """After a rebalance the partition is fetched again from its committed offset, and a bundle of the new generation
    may end on an offset a bundle of the old one acknowledged meanwhile (its checkpoint stored after the revocation
    cleared Faust's acknowledgements): Faust refuses that offset again, and the new bundle's other offsets must be
    acknowledged all the same, or the commit stays below them for good."""
    consumer, tp = _acking_consumer()
    consumer._committed_offset[tp] = 90
    old = consumer._to_message(tp, _records(range(100, 151)))
    assert consumer.ack(old)
    again = consumer._to_message(tp, _records(range(90, 151)))
    assert not consumer.ack(again)  # its last offset was acknowledged already
    assert consumer._new_offset(tp) == 151


def test_a_message_fetched_before_a_rebalance_is_not_committed_by_its_acknowledgement() -> None:
    """Faust's stream acknowledges the messages of an old generation that it skips, unprocessed, and a batch's
    acknowledgement may come after a rebalance. Such an acknowledgement must not carry the commit past messages the
    new generation has not learned (a crash would lose them): the message is done with, its offset not committed,
    and the new generation's own acknowledgement of it commits it."""
    consumer, tp = _acking_consumer()
    consumer._committed_offset[tp] = 100
    consumer.app.consumer_generation_id = 4
    old_bundle = consumer._to_message(tp, _records(range(100, 150)))
    (old_single,) = _records([150])
    old_single = consumer._to_message(tp, old_single)
    consumer.app.consumer_generation_id = 5  # a rebalance: the partition assigned again
    assert not consumer.ack(old_bundle) and not consumer.ack(old_single)
    assert old_bundle.acked and old_single.acked  # done with: nothing waits for them
    assert consumer._new_offset(tp) is None  # nothing to commit
    again = consumer._to_message(tp, _records(range(100, 151)))  # fetched again by the new generation
    assert consumer.ack(again)
    assert consumer._new_offset(tp) == 151

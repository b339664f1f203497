"""The worker's Kafka consumer asks the broker for a short fetch wait and a minimum fetch size, and delivers messages
without Faust's per-message ``wait_first`` (stream/kafka_consumer.py says why)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from recstream.settings import Settings
from stream.app import create_app
from stream.kafka_consumer import FAUST_DRAIN_MESSAGES_SHA256, DirectDeliveryConsumer


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

"""One-event messages fetched together reach the worker's stream as bundles (stream/kafka_consumer.py): each Kafka
record is still learned once, a rejected one names its own offset, and Kafka's committed offset follows the
checkpoints to the end of every partition."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from aiokafka.partitioner import DefaultPartitioner

from recstream import local_services
from stream.app import records_of
from stream.kafka_consumer import BundledMessage, DirectDeliveryConsumer, bundled
from tests.clock import iso
from tests.conftest import create_topics, stop_gracefully, wait_for
from tests.kafka_io import CheckpointReader, committed_offsets, produce, read_positions, read_topic

PARTITIONS = 2
EVENTS = 3000
MALFORMED_EVERY = 250  # every 250th message is not JSON


def _value(n: int) -> bytes:
    if n % MALFORMED_EVERY == MALFORMED_EVERY - 1:
        return f"not json {n}".encode()
    return (
        f'{{"event_id":"b{n}","user_id":"u{n % 53}","item_id":"v{(n * 7) % 101}","type":"view",'
        f'"ts":"{iso(n * 0.1)}","watch_seconds":5,"item_duration_seconds":30}}'
    ).encode()


def _key_to(partition: int) -> bytes:
    """A key the producer's default partitioner sends to ``partition``."""
    choose = DefaultPartitioner()
    return next(k for n in range(1000) if choose(k := b"k%d" % n, list(range(PARTITIONS)), None) == partition)


def _record(offset: int, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        topic="t",
        partition=1,
        offset=offset,
        key=b"k%d" % offset,
        value=value,
        headers=headers or [],
        timestamp=1_000 * offset,
        timestamp_type=0,
        serialized_value_size=len(value),
    )


def test_a_bundle_becomes_one_record_for_each_kafka_record_and_only_its_last_carries_the_acknowledgement() -> None:
    runs = bundled([_record(n, b"x" * 100) for n in range(5)], max_bytes=250)
    assert [[r.offset for r in run] if isinstance(run, list) else run.offset for run in runs] == [[0, 1], [2, 3], 4]
    consumer = DirectDeliveryConsumer.__new__(DirectDeliveryConsumer)  # _to_message reads only the app
    consumer.app = SimpleNamespace(consumer_generation_id=7)
    override = [("recstream-override", b"item_surge")]
    bundle = [_record(10, b"a"), _record(11, b"bb", override), _record(12, b"ccc")]
    message = consumer._to_message(("t", 1), bundle)
    assert isinstance(message, BundledMessage)
    assert (message.offset, message.timestamp, message.serialized_value_size) == (12, 12.0, 6)
    event = SimpleNamespace(message=message)
    increfs = []
    message.incref = lambda: increfs.append(1)
    records = records_of([event])
    assert [(r.offset, r.key, r.value) for r in records] == [
        (10, b"k10", b"a"),
        (11, b"k11", b"bb"),
        (12, b"k12", b"ccc"),
    ]
    assert [r.handle for r in records] == [None, None, event]
    assert message.records == [] and message.first_offset == 10  # taken: their bytes go with the records'
    assert [sorted(r.overrides) for r in records] == [[], ["item_surge"], []]
    assert increfs == [1]
    alone = SimpleNamespace(message=_record(13, b"dddd", override))  # a message not bundled: itself the record
    alone.message.incref = lambda: increfs.append(1)
    (record,) = records_of([alone])
    assert (record.offset, record.value, record.handle) == (13, b"dddd", alone)
    assert record.overrides == frozenset({"item_surge"})
    assert increfs == [1, 1]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_one_event_messages_are_learned_once_rejected_by_their_own_offset_and_committed_to_the_end(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    env = {**service_env, "RECSTREAM_TOPIC_PARTITIONS": str(PARTITIONS), "RECSTREAM_GATE_ENABLED": "false"}
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    try:
        create_topics(env)
        worker = local_services.start_worker(env)
        processes.append(worker)
        # First one message a partition, learned and committed alone; then bundles of the rest after it.
        first = [(_key_to(p), _value(p)) for p in range(PARTITIONS)]
        produce(broker, topic, first)
        wait_for(lambda: checkpoints.learned() == PARTITIONS, 60, f"the first messages (log: {worker.log_path})")
        ends = {p: o + 1 for p, o in read_positions(broker, topic, PARTITIONS).values()}
        assert sorted(ends) == list(range(PARTITIONS)), ends
        group = env["RECSTREAM_APP_ID"]
        wait_for(lambda: committed_offsets(broker, group) == ends, 30, f"commits at {ends}")

        rest = [(b"u%d" % (n % 53), _value(n)) for n in range(PARTITIONS, EVENTS)]
        produce(broker, topic, rest)
        malformed = [v for _, v in first + rest if not v.startswith(b"{")]
        expected = EVENTS - len(malformed)
        wait_for(lambda: checkpoints.learned() >= expected, 120, f"{expected} learned (log: {worker.log_path})")
        positions = read_positions(broker, topic, EVENTS)
        assert len(positions) == EVENTS
        ends = {}
        for partition, offset in positions.values():
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        wait_for(lambda: committed_offsets(broker, group) == ends, 30, f"commits at {ends}")
        stop_gracefully(worker)
        meta = checkpoints.meta()
        assert meta["events_learned"] == expected, meta
        assert meta["events_rejected"] == len(malformed), meta
        assert sum(meta["offsets"].values()) == EVENTS, meta["offsets"]
        letters = [json.loads(v) for v in read_topic(broker, env["RECSTREAM_TOPIC_REJECTED"], len(malformed))]
        named = sorted((letter["partition"], letter["offset"]) for letter in letters)
        assert named == sorted(positions[v] for v in malformed)
        assert all("index" not in letter for letter in letters)
    finally:
        checkpoints.close()

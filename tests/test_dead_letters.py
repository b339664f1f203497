"""What a dead letter carries (the refused bytes up to a cap, then their start, marked as cut) and where it goes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

import stream.dead_letters
from recstream.settings import Settings
from stream.app import create_app
from stream.dead_letters import DeadLetterSender, dead_letter_partition
from stream.processor import (
    DEAD_LETTER_PAYLOAD_BYTES,
    QUARANTINED,
    REJECTED,
    Record,
    _now_iso,
    rejection_payload,
)
from tests.conftest import Endpoint
from tests.kafka_io import bootstrap


def _letter(value: bytes) -> dict:
    return json.loads(rejection_payload(Record("events", 1, 42, None, value), "malformed JSON"))


def test_a_refused_message_under_the_cap_is_carried_whole_as_text_or_base64() -> None:
    text = _letter(b'{"not": json')
    assert text["payload"] == '{"not": json' and "payload_truncated" not in text and "payload_bytes" not in text
    binary = _letter(b"\xff\x00" * 10)
    assert base64.b64decode(binary["payload_base64"]) == b"\xff\x00" * 10 and "payload_truncated" not in binary
    assert (text["topic"], text["partition"], text["offset"]) == ("events", 1, 42)


def test_a_cut_inside_a_character_keeps_the_text_up_to_that_character() -> None:
    original = "a" + "é" * DEAD_LETTER_PAYLOAD_BYTES  # 2 bytes each after the first: the cap falls inside one
    letter = _letter(original.encode())
    assert letter["payload_truncated"] is True and letter["payload_bytes"] == len(original.encode())
    kept = letter["payload"]
    assert original.startswith(kept)
    assert DEAD_LETTER_PAYLOAD_BYTES - 3 <= len(kept.encode()) <= DEAD_LETTER_PAYLOAD_BYTES


def test_a_cut_binary_message_keeps_its_first_bytes_and_the_letter_stays_small() -> None:
    original = bytes(range(256)) * 4000  # ~1 MB: escaped or in base64 it would exceed the producer's 1 MiB
    raw = rejection_payload(Record("events", 0, 7, None, original), "malformed JSON")
    letter = json.loads(raw)
    assert letter["payload_bytes"] == len(original) and letter["payload_truncated"] is True
    assert base64.b64decode(letter["payload_base64"]) == original[:DEAD_LETTER_PAYLOAD_BYTES]
    assert len(raw) < 1024 * 1024 // 2


def test_a_dead_letter_to_a_one_partition_topic_is_not_hashed_and_otherwise_goes_where_kafka_puts_it(
    monkeypatch,
) -> None:
    keyed = DefaultPartitioner()

    def no_hashing(*_: object) -> int:
        raise AssertionError("a one-partition topic needs no hash of the key")

    with monkeypatch.context() as patched:
        patched.setattr(stream.dead_letters, "_KEYED", no_hashing)
        assert dead_letter_partition(b"user-1", [0], [0]) == 0
        assert dead_letter_partition(b"user-1", [3], []) == 3
    for key in (b"u1", b"user-42", b"x" * 50, None):
        if key is not None:
            assert dead_letter_partition(key, [0, 1, 2, 3], [0, 1, 2, 3]) == keyed(key, [0, 1, 2, 3], [0, 1, 2, 3])
        else:
            assert dead_letter_partition(key, [0, 1, 2, 3], [2]) == 2  # no key: an available partition


async def test_the_worker_producer_partitions_with_it() -> None:
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    producer = app.producer._new_producer()  # the aiokafka producer Faust makes (not started: no broker needed)
    try:
        assert producer._partitioner is dead_letter_partition
    finally:
        await producer.stop()


def test_a_letters_time_is_exact_to_the_millisecond() -> None:
    """Letters share the time text computed within the same millisecond (cheaper), never an older one."""
    for _ in range(3):
        before = datetime.now(UTC)
        stamped = datetime.fromisoformat(_now_iso())
        after = datetime.now(UTC)
        assert before - timedelta(milliseconds=2) <= stamped <= after  # (1 ms, and the clocks' rounding)
        deadline = time.monotonic() + 1.0
        while datetime.now(UTC) < after + timedelta(milliseconds=3) and time.monotonic() < deadline:
            pass  # a few milliseconds later, the next letter's time has moved with the clock


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_letters_go_out_in_record_batches_in_order_each_to_its_partition(broker_endpoint: Endpoint) -> None:
    """A real broker: letters to a one-partition topic and to a keyed three-partition one, more bytes than one batch
    holds. Every letter arrives, in order within its partition, where the worker's partitioner puts it; the letters of
    a batch share its delivery, so there are far fewer deliveries than letters."""
    run = uuid.uuid4().hex[:8]
    topics = {QUARANTINED: f"dl-q-{run}", REJECTED: f"dl-r-{run}"}
    address = bootstrap(broker_endpoint.url)
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics[QUARANTINED], 1, 1), NewTopic(topics[REJECTED], 3, 1)])
    finally:
        await admin.close()
    # the worker's partitioner; small batches, so that the letters need several
    producer = AIOKafkaProducer(
        bootstrap_servers=address, acks="all", linger_ms=5, max_batch_size=4096, partitioner=dead_letter_partition
    )

    async def started() -> AIOKafkaProducer:
        return producer

    letters: list[tuple[str, bytes | None, bytes]] = []
    for n in range(120):
        kind = REJECTED if n % 4 == 0 else QUARANTINED
        letters.append((kind, f"user-{n % 7}".encode(), json.dumps({"n": n, "pad": "x" * 200}).encode()))
    await producer.start()
    try:
        deliveries = await DeadLetterSender(started, topics)(letters)
        await asyncio.wait_for(asyncio.gather(*deliveries), 30)
    finally:
        await producer.stop()

    assert len(deliveries) == len(letters) and all(d.done() and d.exception() is None for d in deliveries)
    distinct = {id(d) for d in deliveries}
    assert 2 < len(distinct) < len(letters) // 4  # batched, and more than one batch for the quarantine topic

    keyed = DefaultPartitioner()
    expected: dict[tuple[str, int], list[bytes]] = {}
    for kind, key, value in letters:
        partition = 0 if kind == QUARANTINED else keyed(key, [0, 1, 2], [0, 1, 2])
        expected.setdefault((topics[kind], partition), []).append(value)
    got = await _read_partitions(address, list(topics.values()), len(letters))
    assert got == expected


async def _read_partitions(address: str, topics: list[str], expected: int) -> dict[tuple[str, int], list[bytes]]:
    """Every message of ``topics`` by (topic, partition), in offset order; until ``expected`` arrived or 30 s."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=address, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[tuple[str, int], list[bytes]] = {}
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while sum(map(len, found.values())) < expected and asyncio.get_running_loop().time() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                found.setdefault((tp.topic, tp.partition), []).extend(m.value for m in messages)
    finally:
        await consumer.stop()
    return found


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_batch_over_the_topics_size_limit_is_refused_whole_and_its_letters_pass_alone(
    broker_endpoint: Endpoint,
) -> None:
    """A dead-letter topic whose max.message.bytes is below a batch but above a letter: the batch's delivery fails
    (what the checkpoint then finds), and each letter sent again alone, as the processor does, is delivered."""
    topic = f"dl-small-{uuid.uuid4().hex[:8]}"
    address = bootstrap(broker_endpoint.url)
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all", linger_ms=5, partitioner=dead_letter_partition)

    async def started() -> AIOKafkaProducer:
        return producer

    send = DeadLetterSender(started, {QUARANTINED: topic})
    letters = [(QUARANTINED, b"u", json.dumps({"n": n, "pad": "x" * 400}).encode()) for n in range(10)]
    await producer.start()
    try:
        together = await send(letters)
        assert len({id(d) for d in together}) == 1
        with pytest.raises(MessageSizeTooLargeError):
            await asyncio.wait_for(together[0], 30)
        alone = [(await send([letter]))[0] for letter in letters]
        await asyncio.wait_for(asyncio.gather(*alone), 30)
    finally:
        await producer.stop()
    assert (await _read_partitions(address, [topic], len(letters)))[(topic, 0)] == [value for _, _, value in letters]

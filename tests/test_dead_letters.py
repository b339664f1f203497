"""What a dead letter carries (the refused bytes up to a cap, then their start, marked as cut) and where it goes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

import stream.dead_letters
from recstream.settings import Settings
from stream.app import create_app
from stream.dead_letters import BATCH_BYTES, DeadLetterSender, dead_letter_partition
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


async def test_the_worker_producer_builds_batches_of_the_dead_letter_size() -> None:
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    producer = app.producer._new_producer()  # the aiokafka producer Faust makes (not started: no broker needed)
    try:
        assert producer._message_accumulator._batch_size == BATCH_BYTES
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
    holds. Every letter arrives, in order within its partition, where Kafka's partitioner puts it by its key; the
    letters of a batch share its delivery, so there are far fewer deliveries than letters."""
    run = uuid.uuid4().hex[:8]
    topics = {QUARANTINED: f"dl-q-{run}", REJECTED: f"dl-r-{run}"}
    address = await _topics(broker_endpoint, [NewTopic(topics[QUARANTINED], 1, 1), NewTopic(topics[REJECTED], 3, 1)])
    letters: list[tuple[str, bytes | None, bytes]] = []
    for n in range(120):
        kind = REJECTED if n % 4 == 0 else QUARANTINED
        letters.append((kind, f"user-{n % 7}".encode(), json.dumps({"n": n, "pad": "x" * 200}).encode()))
    async with _producer(address) as started:
        send = DeadLetterSender(started, topics, batch_bytes=4096)  # small batches: the letters need several
        deliveries = await send(letters[:60])
        await asyncio.wait_for(asyncio.gather(*deliveries), 30)  # no flush: after their linger they go on their own
        send = DeadLetterSender(started, topics, linger=3600.0, batch_bytes=4096)
        later = await send(letters[60:])
        await send.flush()  # the open batches go now, and the flush waits for their answers
        assert all(d.done() for d in later)
        deliveries += later

    assert len(deliveries) == len(letters) and all(d.exception() is None for d in deliveries)
    distinct = {id(d) for d in deliveries}
    assert 4 < len(distinct) < len(letters) // 4  # batched, and more than one batch for the quarantine topic

    keyed = DefaultPartitioner()
    expected: dict[tuple[str, int], list[bytes]] = {}
    for kind, key, value in letters:
        partition = 0 if kind == QUARANTINED else keyed(key, [0, 1, 2], [0, 1, 2])
        expected.setdefault((topics[kind], partition), []).append(value)
    assert await _read_partitions(address, list(topics.values()), len(letters)) == expected


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_batches_over_a_topics_size_limit_are_refused_and_smaller_ones_carry_the_letters_sent_again(
    broker_endpoint: Endpoint,
) -> None:
    """A dead-letter topic whose max.message.bytes is below a batch but above a letter: the batch's delivery fails
    (what the checkpoint finds), the sender halves its batch size for the topic, and the letters sent again, as the
    checkpoint does until they are delivered, all arrive, each once."""
    topic = f"dl-small-{uuid.uuid4().hex[:8]}"
    address = await _topics(broker_endpoint, [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    letters = [(QUARANTINED, b"u", json.dumps({"n": n, "pad": "x" * 400}).encode()) for n in range(10)]
    refusals = 0
    async with _producer(address) as started:
        send = DeadLetterSender(started, {QUARANTINED: topic})
        waiting = letters
        for _ in range(12):  # the checkpoint's attempts
            deliveries = await send(waiting)
            await send.flush()
            outcomes = await asyncio.wait_for(asyncio.gather(*deliveries, return_exceptions=True), 30)
            refused = [isinstance(o, MessageSizeTooLargeError) for o in outcomes]
            refusals += sum(refused)
            waiting = [letter for letter, again in zip(waiting, refused, strict=True) if again]
            if not waiting:
                break
    assert refusals >= len(letters)  # the first batch held them all
    assert not waiting and send.batch_bytes[topic] < 2000
    got = (await _read_partitions(address, [topic], len(letters)))[(topic, 0)]
    assert sorted(got) == sorted(value for _, _, value in letters)


async def _topics(broker: Endpoint, topics: list[NewTopic]) -> str:
    address = bootstrap(broker.url)
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics(topics)
    finally:
        await admin.close()
    return address


@contextlib.asynccontextmanager
async def _producer(address: str) -> AsyncIterator[Callable[[], Awaitable[AIOKafkaProducer]]]:
    """A started producer configured as the worker's (acks from every replica), as DeadLetterSender takes it."""
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all")
    await producer.start()

    async def started() -> AIOKafkaProducer:
        return producer

    try:
        yield started
    finally:
        await producer.stop()


async def _read_partitions(address: str, topics: list[str], expected: int) -> dict[tuple[str, int], list[bytes]]:
    """Every message of ``topics`` by (topic, partition), in offset order; until ``expected`` arrived or 30 s. Checks
    that nothing else is in them: each partition's end offset is the number of messages read from it (new topics)."""
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
        ends = await consumer.end_offsets(list(consumer.assignment()))
        assert {(tp.topic, tp.partition): end for tp, end in ends.items() if end} == {
            where: len(values) for where, values in found.items()
        }
    finally:
        await consumer.stop()
    return found


class _YieldingProducer:
    """A real producer whose ``send_batch`` gives the event loop a few turns first, as a busy one does: a sender
    filling a batch then waits mid-call, and another caller gets its turn."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)

    async def send_batch(self, *args: object, **kwargs: object) -> object:
        for _ in range(3):
            await asyncio.sleep(0)
        return await self._producer.send_batch(*args, **kwargs)


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_two_callers_at_once_take_turns_and_every_letter_is_sent_in_order(broker_endpoint: Endpoint) -> None:
    """The worker's batch and a checkpoint's write (sending undelivered letters again) may call the sender at the
    same time. Each call fills and sends its batches whole before the other starts, so no batch is left behind in
    favour of another one (its letters would wait for a linger of an hour here, and the flush would not send them),
    and a partition gets the first call's letters, then the second's."""
    topic = f"dl-two-{uuid.uuid4().hex[:8]}"
    address = await _topics(broker_endpoint, [NewTopic(topic, 1, 1)])
    first = [(QUARANTINED, None, json.dumps({"call": 1, "n": n, "pad": "x" * 300}).encode()) for n in range(20)]
    second = [(QUARANTINED, None, json.dumps({"call": 2, "n": n, "pad": "x" * 300}).encode()) for n in range(20)]
    async with _producer(address) as started:
        producer = _YieldingProducer(await started())

        async def yielding() -> AIOKafkaProducer:
            return producer  # type: ignore[return-value]

        send = DeadLetterSender(yielding, {QUARANTINED: topic}, linger=3600.0, batch_bytes=2048)
        deliveries = await asyncio.gather(send(first), send(second))
        await send.flush()
        assert all(d.done() and d.exception() is None for call in deliveries for d in call)
    got = (await _read_partitions(address, [topic], len(first) + len(second)))[(topic, 0)]
    assert got == [value for _, _, value in first + second]

"""The worker's dead letters: a chunk's letters go to Kafka as record batches, not one message at a time.

The worker produces nothing but dead letters: refused messages (the rejected topic) and events the
quality gate held (the quarantine topic). Sent one by one through ``producer.send`` a letter cost
~35-45 µs of the worker's CPU (each has its own future, accumulator entry and done callback):
~6% of the worker's time when the gate holds a quarter of the stream, all of it under an attack.
:class:`DeadLetterSender` appends a chunk's letters to one record batch per topic partition and
submits each batch once (``create_batch`` / ``send_batch``): the letters of a batch share its
delivery, which the checkpoint awaits before it acknowledges their events' offsets (a refused
batch is sent again letter by letter, see ``EventProcessor._confirm_dead_letters``).

>>> dead_letter_partition(b"user-1", [0], [0])  # recstream's dead-letter topics have one partition
0
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from stream.processor import Letter

#: Most bytes of letters in one record batch (a letter alone may exceed it: an empty batch takes any one letter, see
#: aiokafka's BatchBuilder). A chunk's letters fit in one (500 held events of ~500 bytes), and it is well under the
#: dead-letter topics' ``max.message.bytes`` (1 MiB by default); a topic set below it refuses a full batch, whose
#: letters are then sent again one by one, and that checkpoint is retried (docs/operations.md).
BATCH_BYTES = 256 * 1024

_KEYED = DefaultPartitioner()


def dead_letter_partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """A dead letter's partition: the one partition of a one-partition topic, as recstream creates the dead-letter
    topics, without hashing the key; else Kafka's default (murmur2 of the key). aiokafka's murmur2 is pure Python,
    ~4 us a letter, ~2% of the worker's time when the gate holds a quarter of the stream."""
    if len(all_partitions) == 1:
        return all_partitions[0]
    return _KEYED(key, all_partitions, available)


class DeadLetterSender:
    """Sends letters ``(topic kind, key, value)`` in record batches; returns each letter's delivery, in order.

    ``producer`` returns the started aiokafka producer (the worker's: Faust's, started on the first letter);
    ``topics`` maps a letter's kind to its topic. Letters keep their order within a partition.
    """

    def __init__(self, producer: Callable[[], Awaitable[AIOKafkaProducer]], topics: Mapping[str, str]) -> None:
        self._producer = producer
        self._topics = dict(topics)

    async def __call__(self, letters: Sequence[Letter]) -> list[asyncio.Future[Any]]:
        producer = await self._producer()
        groups: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> the letters' positions, in order
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        for at, (kind, key, _) in enumerate(letters):
            topic = self._topics[kind]
            known = partitions.get(topic)
            if known is None:
                every = sorted(await producer.partitions_for(topic))  # waits for the topic's metadata if needed
                available = sorted(producer.client.cluster.available_partitions_for_topic(topic) or ())
                known = partitions[topic] = (every, available)
            groups.setdefault((topic, dead_letter_partition(key, *known)), []).append(at)
        deliveries: list[asyncio.Future[Any] | None] = [None] * len(letters)
        for (topic, partition), positions in groups.items():
            batch, members = producer.create_batch(), []
            for at in positions:
                _, key, value = letters[at]
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                    await self._send(producer, batch, topic, partition, members, deliveries)
                    batch, members = producer.create_batch(), []
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one letter
                members.append(at)
            await self._send(producer, batch, topic, partition, members, deliveries)
        return deliveries  # type: ignore[return-value] - every position was in a group

    @staticmethod
    async def _send(
        producer: AIOKafkaProducer,
        batch: Any,
        topic: str,
        partition: int,
        members: list[int],
        deliveries: list[asyncio.Future[Any] | None],
    ) -> None:
        batch.close()  # nothing else is added to it (producer.send could otherwise join an open batch)
        delivery = await producer.send_batch(batch, topic, partition=partition)
        for at in members:
            deliveries[at] = delivery

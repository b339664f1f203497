"""The worker's dead letters, gathered into Kafka record batches instead of sent one message at a time.

The worker produces nothing but dead letters: refused messages (the rejected topic) and events the
quality gate held (the quarantine topic). Sent one by one through ``producer.send`` a letter cost
~35-45 µs of the worker's CPU (each has its own future, accumulator entry and done callback),
most of it for every held event when the gate holds a large share of the stream (an attack).

:class:`DeadLetterSender` appends each letter to an open record batch of its topic partition (aiokafka's
``create_batch``) and sends a batch (``send_batch``) when it is full, ``linger`` seconds after its first
letter, or on :meth:`DeadLetterSender.flush` (before every checkpoint). The letters of a batch share
one delivery, which the checkpoint awaits before it acknowledges their events' offsets; the letters
of a batch that failed are sent again then. A batch the broker refuses as too large for the topic
(``max.message.bytes`` below the batch size) halves the topic's batch size, so that the letters sent
again go in smaller batches, down to one letter each.

>>> dead_letter_partition(b"user-1", [0], [0])  # recstream's dead-letter topics have one partition
0
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from stream.processor import Letter

#: Most bytes of letters in one record batch (the worker producer's ``max_batch_size``; an empty batch takes any one
#: letter, however large). A chunk's letters fit in one (500 held events of ~500 bytes), well under the dead-letter
#: topics' ``max.message.bytes`` (1 MiB by default).
BATCH_BYTES = 256 * 1024
#: How long a batch waits for more letters after its first (as aiokafka's linger does for the batches it builds).
LINGER_SECONDS = 0.005
#: A record's bytes in a batch beyond its key and value (varint lengths, offsets, timestamp, headers count): an upper
#: bound, for the halved batch sizes.
RECORD_OVERHEAD = 32

_KEYED = DefaultPartitioner()


def dead_letter_partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """A dead letter's partition: the one partition of a one-partition topic, as recstream creates the dead-letter
    topics, without hashing the key; else Kafka's default (murmur2 of the key). aiokafka's murmur2 is pure Python,
    ~4 us a letter, ~2% of the worker's time when the gate holds a quarter of the stream."""
    if len(all_partitions) == 1:
        return all_partitions[0]
    return _KEYED(key, all_partitions, available)


@dataclass
class _OpenBatch:
    builder: Any  # aiokafka's BatchBuilder
    delivery: asyncio.Future[Any]  # settled as the batch's delivery is
    timer: asyncio.TimerHandle | None = None
    letters: int = 0
    bytes: int = 0
    sent: bool = False  # given to the producer (or failed to be)


class DeadLetterSender:
    """Sends letters ``(topic kind, key, value)``; returns each letter's delivery, in order (see the module's doc).

    ``producer`` returns the started aiokafka producer (the worker's: Faust's, started on the first letter);
    ``topics`` maps a letter's kind to its topic. Letters keep their order within a partition.
    """

    def __init__(
        self,
        producer: Callable[[], Awaitable[AIOKafkaProducer]],
        topics: Mapping[str, str],
        linger: float = LINGER_SECONDS,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self._producer = producer
        self._topics = dict(topics)
        self._linger = linger
        self.batch_bytes = {topic: batch_bytes for topic in self._topics.values()}  # halved by size refusals
        self._open: dict[tuple[str, int], _OpenBatch] = {}
        self._order = asyncio.Lock()  # batches go to the producer one at a time, in the order they were closed
        # one caller at a time: the worker's batch and a checkpoint's write (sending undelivered letters again) may
        # both send, and a caller's await could otherwise let the other replace the open batch it was filling
        self._calling = asyncio.Lock()
        self._lingering: set[asyncio.Task[None]] = set()
        self._used = False  # a letter was given (else flush does not start the producer)

    async def __call__(self, letters: Sequence[Letter]) -> list[asyncio.Future[Any]]:
        async with self._calling:
            return await self._call(letters)

    async def _call(self, letters: Sequence[Letter]) -> list[asyncio.Future[Any]]:
        producer = await self._producer()
        self._used = True
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        deliveries: list[asyncio.Future[Any]] = []
        for kind, key, value in letters:
            topic = self._topics[kind]
            known = partitions.get(topic)
            if known is None:
                every = sorted(await producer.partitions_for(topic))  # waits for the topic's metadata if needed
                available = sorted(producer.client.cluster.available_partitions_for_topic(topic) or ())
                known = partitions[topic] = (every, available)
            where = (topic, dead_letter_partition(key, *known))
            size = len(value) + (len(key) if key else 0) + RECORD_OVERHEAD
            batch = self._open.get(where)
            if batch is not None and batch.bytes + size > self.batch_bytes[topic]:
                await self._send(where, batch)
                batch = None
            if batch is None or batch.builder.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full by the builder's own count of its bytes
                    await self._send(where, batch)
                batch = self._open[where] = self._new_batch(producer, where)
                batch.builder.append(key=key, value=value, timestamp=None)  # an empty batch takes any one letter
            batch.letters += 1
            batch.bytes += size
            deliveries.append(batch.delivery)
        return deliveries

    async def flush(self) -> None:
        """Send every open batch, then wait for the producer's flush (every batch sent and answered)."""
        if not self._used:
            return
        for where, batch in list(self._open.items()):
            await self._send(where, batch)
        if self._lingering:
            await asyncio.gather(*self._lingering, return_exceptions=True)
        await (await self._producer()).flush()

    def _new_batch(self, producer: AIOKafkaProducer, where: tuple[str, int]) -> _OpenBatch:
        loop = asyncio.get_running_loop()
        batch = _OpenBatch(producer.create_batch(), loop.create_future())
        batch.timer = loop.call_later(self._linger, self._linger_over, where, batch)
        return batch

    def _linger_over(self, where: tuple[str, int], batch: _OpenBatch) -> None:
        if not batch.sent:
            task = asyncio.get_running_loop().create_task(self._send(where, batch))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)

    async def _send(self, where: tuple[str, int], batch: _OpenBatch) -> None:
        """Close ``batch`` and give it to the producer; its delivery then follows the producer's. A failure to give it
        settles the delivery with the error (its letters are sent again at the checkpoint), it does not raise."""
        if batch.sent:
            return
        batch.sent = True
        if self._open.get(where) is batch:
            del self._open[where]
        if batch.timer is not None:
            batch.timer.cancel()
        batch.builder.close()
        topic, partition = where
        try:
            async with self._order:
                producer = await self._producer()
                sent = await producer.send_batch(batch.builder, topic, partition=partition)
        except asyncio.CancelledError:
            batch.delivery.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - the checkpoint finds it in the delivery and sends the letters again
            if not batch.delivery.done():
                batch.delivery.set_exception(exc)
            return
        sent.add_done_callback(lambda outcome: self._settle(batch, topic, outcome))

    def _settle(self, batch: _OpenBatch, topic: str, outcome: asyncio.Future[Any]) -> None:
        delivery = batch.delivery
        if outcome.cancelled():
            if not delivery.done():
                delivery.cancel()
            return
        error = outcome.exception()
        if isinstance(error, MessageSizeTooLargeError) and batch.letters > 1:
            self.batch_bytes[topic] = min(self.batch_bytes[topic], batch.bytes // 2)
        if delivery.done():
            return
        if error is not None:
            delivery.set_exception(error)
        else:
            delivery.set_result(None)

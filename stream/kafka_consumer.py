"""Faust's aiokafka consumer with fetch limits of our choosing (``RECSTREAM_BROKER_FETCH_*``).

Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and offers no setting for it. aiokafka
keeps one fetch in flight per broker, and leaves out of it the partitions whose fetched records the worker has
not taken yet; the broker holds that fetch until one of its partitions has data, or for the wait. So after
any pause of the worker (a whole snapshot encoded, a long checkpoint) the fetch in flight covers only the
partitions that were quiet meanwhile, and the ones just drained wait behind it: with a few messages a second
per partition, measured on the grown bench model under 5,000 ev/s, the worker then sat idle ~1 s and a
probe's event was learned 2.1-2.4 s after its POST. With a 0.1 s wait no probe took over 0.71 s (114 probes).
A quiet worker then sends up to ten empty fetches a second, which costs the broker next to nothing.

The broker also holds a fetch until it has ``RECSTREAM_BROKER_FETCH_MIN_BYTES`` (64 KiB) for it, within the same
wait; aiokafka's default of 1 byte answers every produce at once. Under a steady load that is a fetch per
producer request (~100 a second from the bench's background load at 5,000 ev/s), each one handled by the
consumer's thread, which holds the GIL the worker learns with, and by the broker. Measured at 5,000 ev/s (worker
and broker alone, three runs each): the worker's CPU per event 114-131 us instead of 133-188, the broker's CPU
0.32-0.40 cores instead of 0.45-0.59. The price is latency when traffic is light: a fetch then waits out the
wait (0.1 s) before it returns what little there is.

Faust's fetcher also hands each message to its conductor through ``wait_first(callback(message),
suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per message, so that a delivery still waiting when a
rebalance suspends the flow is abandoned. That was 18% of the worker's CPU with one event per message.
:class:`DirectDeliveryConsumer` awaits the delivery directly when it cannot wait at its start: the flow is not
suspended, flow control is active and the conductor's subscription lock is free (the usual case; it then waits
only on a full stream buffer), and keeps ``wait_first`` otherwise. A delivery waiting on a full buffer when a
rebalance starts is abandoned all the same: the rebalance clears the stream buffers (``flow_control.clear()``),
which cancels the waiting puts, and the delivery returns without the message.

When the stream's buffer (``stream_buffer_maxsize``, 4,096 messages) is nearly full, Faust takes the partition
out of the fetch, and puts it back once the buffer is down to 40%. With one event per message and a backlog, the
worker then took the buffer's ~4,000 messages in ~0.4 s, its queue ran dry, and it waited ~0.9 s before messages
came again, cycle after cycle: busy 49% of the time, 6,800 ev/s (the ingest bench's stream, gate off).
:class:`DirectDeliveryConsumer` leaves the partition in the fetch: the delivery of the message that found the
buffer full waits for room (as it already did), so the fetcher fetches nothing more meanwhile (aiokafka does not
fetch a partition whose fetched records were not taken), and the buffer stays the bound on what is held. Measured
the same way: busy 84-88%, 11,800-12,900 ev/s.

Waiting for room message by message was itself a cost: Faust's conductor hands a message that finds the buffer full
to a task of its own and waits for it (``asyncio.ensure_future`` and ``asyncio.wait``), and while the stream took
one message at a time from a full buffer, nearly every delivery went that way. So once the buffer is under pressure
(Faust calls ``on_buffer_full`` at 80%), the delivery loop waits until it is down to 40% (``on_buffer_drop``), or
until a rebalance suspends the flow, and then delivers the next messages straight into the buffer. Measured the same
way (one event per message, gate off, alternating): 55-61 µs of CPU per event instead of 71-72, 13,700-14,900 ev/s
instead of 12,000-12,300.

Even so, with one event per message Faust's path per message (the conductor, the stream's iteration and its
processors, the take, the acknowledgement) cost the worker more than the event's own work. So consecutive records
of one partition that come in one fetch reach the stream together, as one :class:`BundledMessage` of up to
``RECSTREAM_STREAM_BUNDLE_BYTES`` (64 KiB) of values; a larger record goes alone, as does a record fetched alone.
The worker's agent unpacks a bundle into one processor record per Kafka record, each with its own offset, key and
headers, so what the processor sees, learns, rejects and reports is the same. A bundle is acknowledged as one
message, whose offset is its last record's, once the checkpoint that covers that record is stored; the offsets of
its earlier records are acknowledged with it (:meth:`DirectDeliveryConsumer.ack`). So Kafka's committed offset
moves past them only then, never ahead of the checkpoint. (Handing them to Faust as a gap below the bundle instead
cost 6% of the worker's CPU: Faust rebuilds its interval tree of gaps at each one.) A bundle holds only records at
consecutive offsets: a hole (a transaction marker, a compacted record) is a gap between two messages, as without
bundles. The stream buffer's bound (4,096 messages) then holds up to 4,096 bundles, 256 MiB of values at the
default size; it already held 4,096 messages of up to the broker's message size. Measured on the ingest bench's
stream (one event per message, gate on, alternating): 47-53 µs of CPU per event instead of 70-75, 17,400-18,600 ev/s
instead of 12,500-13,100.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message, ack_lock
from mode import Service, ServiceT

from recstream import metrics


def use_fetch_limits(app: faust.App, seconds: float, min_bytes: int, bundle_bytes: int) -> None:
    """Make ``app``'s consumer ask the broker to answer a fetch once it has ``min_bytes`` for it, or within
    ``seconds`` with whatever it has (nothing included), and hand the stream consecutive records of a partition in
    bundles of up to ``bundle_bytes`` (0: each alone)."""
    wait_ms = max(1, round(seconds * 1000))

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # read when it starts (its fetcher is made then)
            consumer._fetch_max_wait_ms = wait_ms
            consumer._fetch_min_bytes = min_bytes
            return consumer

    class Consumer(DirectDeliveryConsumer):
        bundle_max_bytes = bundle_bytes

        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = Consumer  # type: ignore[misc]  # the transport creates the app's consumer from it


#: sha256 of the source of the Faust ``Consumer._drain_messages`` that DirectDeliveryConsumer's copy follows
#: (faust-streaming 0.15.3): tests/test_kafka_consumer.py fails when the installed Faust's differs, so an upgrade
#: brings its changes into the copy.
FAUST_DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


class BundledMessage(ConsumerMessage):
    """Consecutive records of one partition (aiokafka's ``ConsumerRecord``), in offset order, as one Faust message.

    Its offset and timestamp are its last record's; it has no key, headers or value of its own: the records carry
    theirs (``records``, until the worker's agent takes them: ``stream.app.records_of``). Its records are at
    consecutive offsets, from ``first_offset`` to its own."""

    records: list[Any]
    first_offset: int


def bundled(records: list[Any], max_bytes: int) -> list[Any]:
    """``records`` (one partition's, in offset order) with each run of records at consecutive offsets whose values add
    up to at most ``max_bytes`` gathered into a list: what :meth:`DirectDeliveryConsumer._to_message` makes a
    :class:`BundledMessage` of. A record alone in its run stays as it is. A hole in the offsets (a transaction marker,
    a compacted record) ends a run, so the fetch loop sees it as a gap between two messages, as without bundles.

    >>> from types import SimpleNamespace as R
    >>> out = bundled([R(offset=n, value=b"x" * size) for n, size in enumerate([10, 10, 30, 50, 10])], max_bytes=50)
    >>> [[r.offset for r in run] if isinstance(run, list) else run.offset for run in out]
    [[0, 1, 2], 3, 4]
    >>> out = bundled([R(offset=n, value=b"x") for n in (0, 1, 2, 4, 5, 9)], max_bytes=50)
    >>> [[r.offset for r in run] if isinstance(run, list) else run.offset for run in out]
    [[0, 1, 2], [4, 5], 9]
    """
    if len(records) < 2:
        return records
    out: list[Any] = []
    run: list[Any] = []
    size = 0
    for record in records:
        n = len(record.value) if record.value is not None else 0
        if run and (size + n > max_bytes or record.offset != run[-1].offset + 1):
            out.append(run if len(run) > 1 else run[0])
            run, size = [], 0
        run.append(record)
        size += n
    out.append(run if len(run) > 1 else run[0])
    return out


class DirectDeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, delivering a message without ``wait_first`` when nothing makes the delivery wait at its
    start (the module docstring says when, and why a delivery waiting later is still abandoned on a rebalance), and
    keeping a partition in the fetch when the stream's buffer is full: its deliveries wait for the buffer to drain
    instead."""

    bundle_max_bytes = 0  # every record alone; the worker's consumer bundles (use_fetch_limits)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._room = asyncio.Event()  # set: no stream buffer is under pressure (bound to a loop on first wait)
        self._room.set()
        self._pressed: set[Any] = set()  # partitions whose stream buffer is under pressure

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        limit = self.bundle_max_bytes
        return {tp: bundled(batch, limit) for tp, batch in records.items()} if records and limit else records

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if type(record) is not list:
            return super()._to_message(tp, record)
        last = record[-1]
        message = BundledMessage(
            last.topic,
            last.partition,
            last.offset,
            None if last.timestamp is None else last.timestamp / 1000.0,
            last.timestamp_type,
            [],
            None,
            b"",
            None,
            0,
            sum(r.serialized_value_size for r in record),
            tp,
            generation_id=self.app.consumer_generation_id,
        )
        message.records = record
        message.first_offset = record[0].offset
        return message

    def ack(self, message: Message) -> bool:
        """Faust's, and for a bundle its earlier records' offsets acknowledged with it (the module docstring).

        A message fetched before the last rebalance is marked acknowledged (nothing waits for it) but its offset is
        not taken for the commit. Faust's stream acknowledges such messages when it skips them, unprocessed; and the
        rebalance cleared the partition's acknowledgements, which the new generation builds again from its committed
        offset: an old message's offset among them could carry the commit past messages the new generation has not
        learned yet, and a crash then would lose them (the worker resumes at the committed offset). The new
        generation fetches those messages again and acknowledges them itself, after its checkpoint (the processor
        skips those it learned before).
        """
        with ack_lock:  # as Faust's: the bookkeeping below is one step with it
            if message.generation_id != self.app.consumer_generation_id:
                if not message.acked:
                    message.acked = True
                    self._unacked_messages.discard(message)
                return False
            final = not message.acked
            acked_now = super().ack(message)
            # Also when Faust refused the last offset because another message acknowledged it already (one of the
            # generation before a rebalance whose checkpoint was stored between the revocation, which cleared Faust's
            # acknowledgements, and the new assignment, which changes the generation id): the others must not be
            # left out, or the commit could never pass them.
            if final and type(message) is BundledMessage and self.app.topics.acks_enabled_for(message.topic):
                tp = message.tp
                committed = self._committed_offset[tp]
                acked_index, acked = self._acked_index[tp], self._acked[tp]
                for offset in range(message.first_offset, message.offset):
                    if (committed is None or offset >= committed) and offset not in acked_index:
                        acked_index.add(offset)
                        acked.append(offset)
            return acked_now

    def on_buffer_full(self, tp: Any) -> None:
        """The partition stays in the fetch (the module docstring says why); the delivery of the next messages waits
        until the buffer is down to 40% (:meth:`on_buffer_drop`) instead."""
        if self._room.is_set():
            metrics.STREAM_BUFFER_WAITS.inc()
        self._room.clear()
        self._pressed.add(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self._pressed.discard(tp)
        if not self._pressed:
            self._room.set()

    def _release_room(self) -> None:
        """Nothing is under pressure any more: a rebalance cleared the stream buffers. (Their drop callbacks fire at the
        stream's next take from an empty buffer in this worker, whose one agent keeps its stream; this does not
        depend on it.)"""
        self._pressed.clear()
        self._room.set()

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # Faust's Consumer._drain_messages (FAUST_DRAIN_MESSAGES_SHA256), but for the delivery of a message.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        suspended = self.suspend_flow.is_set
        crashed = cast(Service, self)._crashed.is_set
        flow_active = self.app.flow_control.is_active
        subscribing = self.app.topics._tp_to_callback_lock.locked  # type: ignore[attr-defined]

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        room = self._room  # a stream buffer under pressure: wait for it to drain (see on_buffer_full)

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            first = offset
                            if type(message) is BundledMessage:  # the change: see the module docstring
                                bundle = message.records
                                if r_offset is not None and bundle[0].offset < r_offset:  # as single messages are
                                    bundle[:] = [r for r in bundle if r.offset >= r_offset]
                                    message.first_offset = bundle[0].offset
                                first = bundle[0].offset
                            gap = first - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    # (a bundle's own offsets are acknowledged with it, not as a gap: the change)
                                    await self._add_gap(tp, r_offset + 1, offset if first == offset else first - 1)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            if not room.is_set():  # the change: see the module docstring
                                if not suspended():
                                    await self.wait_first(room.wait(), self.suspend_flow.wait())
                                if suspended():
                                    self._release_room()
                            if suspended() or consumer_should_stop() or crashed() or not flow_active() or subscribing():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:  # the change: no tasks per message (see the module docstring)
                                await callback(message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

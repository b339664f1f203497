"""Batches of events from a Faust stream, taken as soon as the stream has what was delivered (:func:`take_ready`).

Faust's ``Stream.take_events(max_, within)`` waits ``within`` after every batch unless ``max_`` messages fill it,
even when messages are already waiting. Under a steady load that wait is idle time in every cycle: at 5,000
events/s (the bench's freshness load: a 50-event message every 10 ms, fetched about every 0.1 s) the worker took a
batch, learned it in ~0.1 s, then waited out the 50 ms window while the next messages sat in its buffer. Its
events were learned 0.25-0.46 s after their time on average, none within 0.1 s (0.10-0.22 s with this module).

:func:`take_ready` yields a batch once it holds ``max_`` messages, or once ``linger`` has passed since its first
message reached the stream **and** the stream has taken every message delivered to it so far. A message that
reached the stream while the last batch was being processed has been waiting all along: right after that batch,
the messages delivered meanwhile (the fetches that came in) go out together at once. When messages trickle in, a
batch waits ``linger`` for company. The broker's fetch limits (``RECSTREAM_BROKER_FETCH_*``,
:mod:`stream.kafka_consumer`) already gather a fetch's worth, so the linger can be short.

With ``on_idle``, a quiet spell after a batch (nothing delivered for ``idle_seconds``) is reported once, between
batches: the worker checkpoints the end of a burst then, instead of after the rest of its checkpoint interval.

It is Faust's ``take_events`` (faust-streaming 0.15.3, ``FAUST_TAKE_EVENTS_SHA256``) with that rule for when a batch
is ready: the same processor on the stream, the same passive drain, the same strict ``max_``, events acknowledged
after their batch is consumed. tests/test_take.py fails when the installed Faust's ``take_events`` differs, so an
upgrade brings its changes into this copy; the stream internals it also relies on (its processors, its passive
drain, its channel's queue, ``current_event`` set before the processors run) are checked by that file's tests of
how batches form on Faust's own stream, not by source.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from faust.types import EventT, StreamT
from mode.utils.futures import notify

#: sha256 of the source of Faust's ``Stream.take_events`` that :func:`take_ready` follows (faust-streaming 0.15.3).
FAUST_TAKE_EVENTS_SHA256 = "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08"
#: At most this long after the linger, a batch waits for the stream to take the messages still delivered to it (it
#: stops waiting when they are taken or the batch is full; this bound is for a queue refilled as fast as the stream
#: takes from it, or messages Faust skips in a rebalance, which never reach the batch).
DRAIN_WAIT_SECONDS = 0.05
#: With nothing buffered, the loop looks whether the stream stopped at least this often.
IDLE_WAIT_SECONDS = 1.0


def take_ready(
    stream: StreamT,
    max_: int,
    linger: float,
    on_idle: Callable[[], Awaitable[None]] | None = None,
    idle_seconds: float = 0.0,
) -> AsyncGenerator[list[EventT], None]:
    """Batches of at most ``max_`` events (module doc says when one is ready); like ``stream.take_events``.

    With ``on_idle``, once the stream has delivered nothing for ``idle_seconds`` after a batch, it is awaited (once
    per quiet spell, between batches: the worker checkpoints the end of a burst then). It must not raise.
    """
    agen = _take_ready(stream, max_, linger, on_idle, idle_seconds)
    active = getattr(stream, "_active_agens", None)
    if active is not None:  # Faust closes the generators it tracks when the stream stops (as for take_events)
        active.add(agen)
    return agen


async def _take_ready(
    stream: Any,
    max_: int,
    linger: float,
    on_idle: Callable[[], Awaitable[None]] | None,
    idle_seconds: float,
) -> AsyncGenerator[list[EventT], None]:
    loop = asyncio.get_running_loop()
    events: list[EventT] = []
    first_at = 0.0  # when the buffered batch's first message reached the stream
    waiting_since: float | None = None  # messages were delivered and waiting when the last batch was yielded
    started = asyncio.Event()  # a first message is buffered
    full = asyncio.Event()  # max_ messages are buffered
    drained = asyncio.Event()  # the stream has taken every message delivered to it, or the buffer is full
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    quiet_owed = False  # a batch was yielded since on_idle last ran
    channel_it = aiter(stream.channel)
    queue = getattr(stream.channel, "queue", None)  # messages delivered to the stream, not taken yet
    delivered_all = queue.empty if queue is not None else lambda: True

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_at, waiting_since
        reached = loop.time()
        try:
            if consuming is not None:  # the last batch is being processed: wait for it
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            if not events:
                # a message that waited in the queue behind a full batch has been waiting since it was yielded
                first_at = reached if waiting_since is None else min(reached, waiting_since)
                waiting_since = None
                started.set()
            events.append(event)
            if len(events) >= max_:
                full.set()
                drained.set()  # nothing more can join: a drain wait ends too
                consumed.clear()
                await stream.wait(consumed)  # strict: never more than max_ in a batch
            elif delivered_all():
                drained.set()
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # pragma: no cover  (as Faust's take_events)
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream_enable_acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged here, after their batch is consumed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not events:
                started.clear()
                if quiet_owed and on_idle is not None:
                    await stream.wait_for_stopped(started, timeout=idle_seconds)
                    if not started.is_set() and not stream.should_stop:
                        quiet_owed = False
                        await on_idle()  # messages delivered meanwhile are buffered, as while a batch is processed
                    continue
                await stream.wait_for_stopped(started, timeout=IDLE_WAIT_SECONDS)
                continue
            if not full.is_set():
                left = first_at + linger - loop.time()
                if left > 0:  # wait for company, unless the buffer fills first
                    await stream.wait_for_stopped(full, timeout=left)
                if not full.is_set() and not delivered_all():  # the stream is still taking what was delivered
                    drained.clear()
                    await stream.wait_for_stopped(drained, timeout=DRAIN_WAIT_SECONDS)
            consuming = loop.create_future()  # the stream adds nothing while the batch is consumed
            waiting_since = None if delivered_all() else loop.time()
            quiet_owed = True
            try:
                yield list(events)
            finally:
                for event in events:  # the stream adds nothing until ``consuming`` is notified
                    await stream.ack(event)
                events.clear()
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)

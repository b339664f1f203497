"""The worker takes a batch as soon as the stream has what was delivered to it (stream/take.py says why).

The batches come from a Faust stream over one of Faust's in-memory channels: the stream, its processors, its passive
drain and its events are Faust's own; only where the messages come from differs from the worker's topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import faust
import pytest
from faust.streams import Stream

from stream import take
from stream.take import FAUST_TAKE_EVENTS_SHA256, take_ready


async def _stream() -> tuple[faust.ChannelT, faust.StreamT]:
    app = faust.App("take-test", broker="kafka://127.0.0.1:1")  # never connected: the channel is in memory
    app.flow_control.resume()  # as a running worker's is: a channel's put waits while it is suspended
    channel = app.channel(maxsize=1000)
    stream = app.stream(aiter(channel))  # subscribed: what is sent from now on reaches the stream
    await stream.maybe_start()
    return channel, stream


async def _send(channel: faust.ChannelT, values: range) -> None:
    for value in values:
        await channel.send(value=value)


def _values(batch: list) -> list[int]:
    return [event.value for event in batch]


@contextlib.asynccontextmanager
async def _taking(
    max_: int, linger: float, **kwargs: Any
) -> AsyncIterator[tuple[faust.ChannelT, faust.StreamT, AsyncGenerator[list, None]]]:
    """A stream over an in-memory channel, and ``take_ready``'s batches of it; both closed at the end."""
    channel, stream = await _stream()
    batches = take_ready(stream, max_, linger, **kwargs)
    try:
        yield channel, stream, batches
    finally:
        await batches.aclose()
        await stream.stop()


class LoopClock:
    """The running loop's clock, moved forward by the test: the timers due by then fire as if that time had passed.
    A linger of an hour on it shows whether a batch waited one, without timing anything."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        real = loop.time
        self.offset = 0.0
        monkeypatch.setattr(loop, "time", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


LINGER = 3600.0  # an hour of the loop's clock (LoopClock): a batch that waits it out misses the tests' deadlines
#: How long a test waits for a batch it expects at once: far below LINGER, far above what taking one takes.
AT_ONCE_SECONDS = 30


async def test_messages_delivered_while_a_batch_is_processed_are_taken_right_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = LoopClock(monkeypatch)
    async with _taking(100, LINGER) as (channel, stream, batches):
        first = asyncio.ensure_future(anext(batches))
        await _send(channel, range(3))
        await _until(stream.channel.queue.empty)  # the first messages reached the stream
        clock.advance(LINGER)  # the first batch waited its linger for company
        assert _values(await asyncio.wait_for(first, AT_ONCE_SECONDS)) == [0, 1, 2]
        # the first batch takes longer to process than the linger; meanwhile five more messages are delivered, the
        # first of them reaches the stream (and waits there for the batch to be consumed), the others queue behind it
        await _send(channel, range(3, 8))
        await _until(lambda: stream.channel.queue.qsize() == 4)  # the next message reached the stream
        clock.advance(2.5 * LINGER)
        # they have waited since they reached the stream: no linger counted afresh from the end of the first batch
        # (Faust's take_events waits its whole window here)
        second = await asyncio.wait_for(anext(batches), AT_ONCE_SECONDS)
        assert _values(second) == [3, 4, 5, 6, 7]


async def test_messages_queued_behind_a_full_batch_are_taken_right_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = LoopClock(monkeypatch)
    async with _taking(3, LINGER) as (channel, _, batches):
        first = asyncio.ensure_future(anext(batches))
        await _send(channel, range(5))
        assert _values(await asyncio.wait_for(first, AT_ONCE_SECONDS)) == [0, 1, 2]  # full: at once
        clock.advance(2.5 * LINGER)  # processed meanwhile; 3 and 4 wait in the stream's queue
        second = await asyncio.wait_for(anext(batches), AT_ONCE_SECONDS)
        assert _values(second) == [3, 4]  # their linger ran while they waited


async def test_a_batch_that_fills_while_the_stream_drains_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(take, "DRAIN_WAIT_SECONDS", 3600.0)  # only filling up can end this drain wait
    # no linger: the batch waits only for the stream to take what was delivered
    async with _taking(5, 0.0) as (channel, _, batches):
        await _send(channel, range(8))  # more than a batch, already delivered
        assert _values(await asyncio.wait_for(anext(batches), 30)) == [0, 1, 2, 3, 4]
        assert _values(await asyncio.wait_for(anext(batches), 30)) == [5, 6, 7]


async def test_a_batch_waits_the_linger_for_messages_that_trickle_in(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = LoopClock(monkeypatch)
    async with _taking(100, LINGER) as (channel, stream, batches):
        first = asyncio.ensure_future(anext(batches))
        await _send(channel, range(1))
        await _until(stream.channel.queue.empty)
        clock.advance(LINGER / 2)
        await asyncio.sleep(0.1)
        assert not first.done()  # the first message waits for company (half its linger passed)
        await _send(channel, range(1, 3))
        await _until(stream.channel.queue.empty)
        clock.advance(LINGER / 2)  # the linger of the first message is over
        assert _values(await asyncio.wait_for(first, AT_ONCE_SECONDS)) == [0, 1, 2]


async def test_a_full_batch_goes_at_once_and_never_holds_more_than_max() -> None:
    # only filling up can end a batch this test waits for
    async with _taking(3, 3600.0) as (channel, _, batches):
        first = asyncio.ensure_future(anext(batches))
        await _send(channel, range(7))
        assert _values(await asyncio.wait_for(first, 30)) == [0, 1, 2]
        assert _values(await asyncio.wait_for(anext(batches), 30)) == [3, 4, 5]


async def test_a_batch_is_acknowledged_once_the_next_is_asked_for() -> None:
    async with _taking(2, 3600.0) as (channel, stream, batches):
        first = asyncio.ensure_future(anext(batches))
        await _send(channel, range(4))
        taken = await asyncio.wait_for(first, 30)
        for event in taken:  # the reference a topic's conductor holds for the stream (a channel's messages have none)
            event.message.incref()
        assert stream.enable_acks is False  # the taker acknowledges, not the stream
        assert [event.message.acked for event in taken] == [False, False]  # held while the batch is processed
        await asyncio.wait_for(anext(batches), 30)
        assert [(event.message.refcount, event.message.acked) for event in taken] == [(0, True), (0, True)]
    assert stream.enable_acks is True  # restored when the taker ends


def test_take_ready_follows_the_installed_fausts_take_events() -> None:
    # take_ready is a copy of Faust's take_events but for when a batch is ready: a Faust whose take_events differs
    # fails here, so that its changes are brought into the copy
    source = inspect.getsource(inspect.unwrap(Stream.take_events))
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_TAKE_EVENTS_SHA256


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_quiet_spell_after_a_batch_calls_on_idle_once() -> None:
    calls: list[float] = []

    async def on_idle() -> None:
        calls.append(time.monotonic())

    async with _taking(100, 0.0, on_idle=on_idle, idle_seconds=0.2) as (channel, _, batches):
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.6)
        assert calls == []  # no batch yet: nothing to save, however long it is quiet
        await _send(channel, range(2))
        assert _values(await asyncio.wait_for(first, 30)) == [0, 1]
        asked = time.monotonic()
        second = asyncio.ensure_future(anext(batches))
        await _until(lambda: len(calls) == 1)
        assert calls[0] - asked >= 0.2  # after the quiet spell, not before
        await asyncio.sleep(0.6)
        assert len(calls) == 1  # once a spell: a quiet stream is not checkpointed over and over
        await _send(channel, range(2, 3))
        assert _values(await asyncio.wait_for(second, 30)) == [2]
        third = asyncio.ensure_future(anext(batches))
        await _until(lambda: len(calls) == 2)  # the next batch's spell has its own call
        third.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await third


async def test_messages_closer_than_the_idle_time_never_call_on_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = LoopClock(monkeypatch)
    idle = 3600.0  # on the loop's clock (LoopClock)
    calls = 0

    async def on_idle() -> None:
        nonlocal calls
        calls += 1

    async with _taking(100, 0.0, on_idle=on_idle, idle_seconds=idle) as (channel, _, batches):
        for value in range(8):  # a message every half idle time, each a batch of its own
            taking = asyncio.ensure_future(anext(batches))
            await _send(channel, range(value, value + 1))
            assert _values(await asyncio.wait_for(taking, 30)) == [value]
            clock.advance(idle / 2)
            await asyncio.sleep(0.05)
        assert calls == 0  # four idle times passed in all, never one without a message

        def quiet() -> bool:  # the stream goes quiet: its clock runs on until on_idle is called
            clock.advance(idle / 4)
            return calls == 1

        last = asyncio.ensure_future(anext(batches))
        await _until(quiet)
        last.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await last

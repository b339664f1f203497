"""The ingest producer's start while the broker does not answer: one start at a time, shared by every request that
arrives meanwhile, so each is answered within about the timeout, however many arrive together; the readiness probe
does not wait for it longer than its own bound.

The broker is a listening socket that takes connections and never answers (a broker hung, or still starting): what
the producer does then depends only on the broker's silence, which a real Kafka cannot be made to keep."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from api.producer import BrokerUnavailable, EventProducer

pytestmark = pytest.mark.timeout(60)


class SilentBroker:
    """Accepts connections on 127.0.0.1 and never answers; counts them (a producer's start opens one or more)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)  # (accept wakes up to see the end)
        self.port = self._server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentBroker]:
    broker = SilentBroker()
    try:
        yield broker
    finally:
        broker.close()


RECORDS = [(b"u1", b'[{"event_id":"e1"}]')]


async def _attempts(producer: EventProducer, requests: int) -> list[BaseException | None]:
    async def one() -> None:
        await producer.send_batch(RECORDS)

    try:
        return list(await asyncio.gather(*(one() for _ in range(requests)), return_exceptions=True))
    finally:
        await producer.stop()


def test_requests_arriving_together_share_one_start_of_the_producer(silent: SilentBroker) -> None:
    alone = asyncio.run(_attempts(EventProducer(f"127.0.0.1:{silent.port}", "events", timeout=1.0), 1))
    assert len(alone) == 1 and isinstance(alone[0], BrokerUnavailable), alone
    per_start = len(silent.connections)
    assert per_start >= 1  # the producer reached the silent broker
    together = asyncio.run(_attempts(EventProducer(f"127.0.0.1:{silent.port}", "events", timeout=1.0), 8))
    assert all(isinstance(outcome, BrokerUnavailable) for outcome in together), together
    # one start for the eight: each of them waited for the same one, not for the start of each before it (eight
    # starts would open at least eight connections; how many one opens depends on the client's timing)
    assert 1 <= len(silent.connections) - per_start < 8


def test_a_failed_start_is_tried_again_by_the_next_request(silent: SilentBroker) -> None:
    async def twice() -> list[BaseException | None]:
        producer = EventProducer(f"127.0.0.1:{silent.port}", "events", timeout=0.5)
        try:
            first = await asyncio.gather(producer.send_batch(RECORDS), return_exceptions=True)
            once = len(silent.connections)
            second = await asyncio.gather(producer.send_batch(RECORDS), return_exceptions=True)
            assert len(silent.connections) > once  # a start of its own: the broker may be back
            return [*first, *second]
        finally:
            await producer.stop()

    assert all(isinstance(outcome, BrokerUnavailable) for outcome in asyncio.run(twice()))


def test_the_readiness_probe_does_not_wait_for_the_whole_start(
    silent: SilentBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.producer.PING_SECONDS", 0.2)

    async def probe_during_a_start() -> tuple[bool, bool]:
        producer = EventProducer(f"127.0.0.1:{silent.port}", "events", timeout=30.0)
        try:
            ingest = asyncio.create_task(producer.send_batch(RECORDS))
            await asyncio.sleep(0)  # the ingest request starts the producer
            ready = await producer.ping()
            return ready, ingest.done()
        finally:
            await producer.stop()  # (cancels the start: the ingest request then fails)
            await asyncio.gather(ingest, return_exceptions=True)

    ready, ingest_done = asyncio.run(probe_during_a_start())
    assert ready is False
    assert not ingest_done  # the probe answered while the start it joined still waited for the broker


def test_stopping_during_a_start_answers_the_waiting_requests_and_leaves_no_start_behind(silent: SilentBroker) -> None:
    async def stop_during_a_start() -> tuple[BaseException | None, bool]:
        producer = EventProducer(f"127.0.0.1:{silent.port}", "events", timeout=30.0)
        ingest = asyncio.create_task(producer.send_batch(RECORDS))
        await asyncio.sleep(0)  # the request made the start's task, which has not run yet
        assert producer._starting is not None and not producer._starting.done()
        await producer.stop()  # the API process stopping
        (outcome,) = await asyncio.gather(ingest, return_exceptions=True)
        return outcome, producer._starting is None

    outcome, cleared = asyncio.run(stop_during_a_start())
    assert isinstance(outcome, BrokerUnavailable), outcome  # an answer (503), not a cancellation
    assert cleared  # a later request would start it again, not wait on a cancelled start

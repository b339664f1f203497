"""Produces validated events to Kafka for the ingest endpoint, all or nothing from the caller's view.

A batch is accepted (202) only when the broker has acknowledged every event (acks=all).
If the broker does not take them within the timeout, :class:`BrokerUnavailable` is raised
and the endpoint answers 503: the client must resend the batch (events carry ``event_id``,
so a resent event that did reach Kafka the first time is recognised as a duplicate).

The producer starts on the first request. While the broker does not answer, one start is tried at a time and
every request arriving meanwhile waits for that one (not for a start of its own after it): each answers within
about the timeout however many arrive together, and the readiness probe waits for it at most its own two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from recstream import metrics

log = logging.getLogger(__name__)

#: The most the readiness probe waits for the producer's start and then for the broker's metadata, each.
PING_SECONDS = 2.0


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the batch in time."""


class EventProducer:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        timeout: float = 5.0,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """``client_kwargs``: Kafka security options (:func:`recstream.components.kafka_client_kwargs`)."""
        self.bootstrap_servers = bootstrap_servers
        self._client_kwargs = dict(client_kwargs or {})
        self.topic = topic
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[AIOKafkaProducer] | None = None  # the start under way, shared by its waiters

    async def _ensure_started(self, wait: float | None = None) -> AIOKafkaProducer:
        """The started producer; starts it, or waits for the start under way, at most ``wait`` seconds (the start's
        own timeout when None). A waiter that gives up or is cancelled leaves the start to the others."""
        if self._producer is not None:
            return self._producer
        if self._starting is None:
            self._starting = asyncio.create_task(self._start())
            self._starting.add_done_callback(_retrieved)
        try:
            return await asyncio.wait_for(asyncio.shield(self._starting), wait)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling():
                raise  # this request was cancelled
            raise BrokerUnavailable("the API process is stopping") from None  # (stop() cancelled the start)

    async def _start(self) -> AIOKafkaProducer:
        try:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                acks="all",
                enable_idempotence=False,
                linger_ms=2,
                request_timeout_ms=int(self.timeout * 1000),
                **self._client_kwargs,
            )
            try:
                await asyncio.wait_for(producer.start(), timeout=self.timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
            return producer
        finally:
            if self._starting is asyncio.current_task():  # (stop() may have let go of it already)
                self._starting = None  # (a failed start is tried again by the next request)

    async def send_batch(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send (key, value) pairs; return once all are acknowledged, else raise BrokerUnavailable."""
        try:
            producer = await self._ensure_started()
            futures = [await producer.send(self.topic, value=value, key=key) for key, value in records]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.timeout)
        except Exception as exc:
            metrics.KAFKA_ERRORS.labels("api").inc()
            reason = str(exc) or type(exc).__name__  # (aiokafka's timeouts have no message)
            log.warning("broker did not take a batch of %d events: %s", len(records), reason)
            raise BrokerUnavailable(reason) from exc

    async def ping(self) -> bool:
        try:
            producer = await self._ensure_started(wait=PING_SECONDS)
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=PING_SECONDS)
            return True
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    async def stop(self) -> None:
        starting, self._starting = self._starting, None  # (a start cancelled before it ran never clears it itself)
        if starting is not None:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Marks a start's failure as seen: every waiter may have given up on it (asyncio would log it as never
    retrieved); the next request tries again and reports its own."""
    if not task.cancelled():
        task.exception()

"""Produces validated events to Kafka for the ingest endpoint, all or nothing from the caller's view.

A batch is accepted (202) only when the broker has acknowledged every event (acks=all).
If the broker does not take them within the timeout, :class:`BrokerUnavailable` is raised
and the endpoint answers 503: the client must resend the batch (events carry ``event_id``,
so a resent event that did reach Kafka the first time is recognised as a duplicate).
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
        self._lock = asyncio.Lock()

    async def _ensure_started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
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
            return self._producer

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
            producer = await self._ensure_started()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2)
            return True
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

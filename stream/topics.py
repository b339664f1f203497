"""Creates the service's topics with the partition counts we mean (brokers may auto-create with others)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from recstream.components import bootstrap_servers, kafka_client_kwargs
from recstream.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings),
        request_timeout_ms=int(timeout * 1000),
        **kafka_client_kwargs(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.topic_events, num_partitions=settings.topic_partitions, replication_factor=1),
            NewTopic(settings.topic_rejected, num_partitions=1, replication_factor=1),
            NewTopic(settings.topic_quarantined, num_partitions=1, replication_factor=1),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", [t.name for t in missing])
        deadline = asyncio.get_running_loop().time() + timeout
        while not {t.name for t in wanted} <= set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics {[t.name for t in wanted]} did not appear within {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()

"""Small synchronous helpers for tests: produce to and read from a real broker, read checkpoints from Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from store.keys import Keys


def bootstrap(broker_url: str) -> str:
    return broker_url.split("://", 1)[-1]


def produce(broker_url: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) pairs and wait until the broker acknowledged all of them."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(broker_url), acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=value, key=key) for key, value in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_events(broker_url: str, topic: str, events: list[dict[str, Any]]) -> None:
    produce(broker_url, topic, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])


def read_records(broker_url: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Read a topic from the beginning until ``expected`` records arrived or the deadline passed (aiokafka's records:
    value, partition, offset...)."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap(broker_url), auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while len(records) < expected and asyncio.get_running_loop().time() < deadline:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(messages)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def read_topic(broker_url: str, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    """The values of :func:`read_records`."""
    return [m.value for m in read_records(broker_url, topic, expected, timeout)]


class CheckpointReader:
    """Reads what the worker last checkpointed (metadata only; no snapshot decoding)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.keys = Keys(prefix)

    def version(self) -> int | None:
        raw = self.redis.get(self.keys.current_version)
        return int(raw) if raw is not None else None

    def meta(self) -> dict[str, Any]:
        version = self.version()
        if version is None:
            return {}
        raw = self.redis.hget(self.keys.version(version), "meta")
        return json.loads(raw) if raw else {}

    def learned(self) -> int:
        return int(self.meta().get("events_learned", 0))

    def close(self) -> None:
        self.redis.close()


def committed_offsets(broker_url: str, group: str) -> dict[int, int]:
    """The consumer group's committed offset of each partition (partition -> offset) that has one."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(broker_url))
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    return asyncio.run(run())


def read_positions(broker_url: str, topic: str, expected: int, timeout: float = 30.0) -> dict[bytes, tuple[int, int]]:
    """Each message's value -> (partition, offset), from :func:`read_records`."""
    return {m.value: (m.partition, m.offset) for m in read_records(broker_url, topic, expected, timeout)}

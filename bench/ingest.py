"""Ingest: events/s from the broker through one worker (decode, gate, predict+learn, checkpoint to Redis).

Next to, on the same broker, topic and events, measured in the same run: (a) a bare aiokafka
consume loop (assign every partition, read from the beginning, count), and (b) the bare learner
loop (decode + predict + learn, no Kafka, no Redis, no gate). Run with the gate on and off.
"""

from __future__ import annotations

import asyncio
import json
import time

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Row, TimeBudget, events, wait_for
from bench.stack import Services, ensure_topics, run_env, start_worker
from recstream.components import new_learner
from recstream.events import parse_event
from recstream.settings import Settings
from store.keys import Keys

TARGET_EVENTS_PER_SECOND = 20_000
TARGET_RATIO = 0.5


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value=v, key=json.loads(v)["user_id"].encode()) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def bare_consume(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float) -> float:
    """A bare aiokafka loop: assign all partitions, read from the beginning, count messages."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        started = time.perf_counter()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        while seen < expected:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"bare consume read {seen} of {expected} messages in {timeout:.0f}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(messages) for messages in batches.values())
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def bare_learner(values: list[bytes]) -> float:
    learner = new_learner(Settings())
    started = time.perf_counter()
    for raw in values:
        event, _ = parse_event(raw)
        assert event is not None
        learner.learn(
            event.user_id,
            event.item_id,
            event.type,
            event.watch_seconds,
            event.item_duration_seconds,
            ts=event.ts.timestamp(),
        )
    return len(values) / (time.perf_counter() - started)


def handled(r: redis.Redis, keys: Keys) -> int:
    """Messages the worker has checkpointed (learned, held, dropped as duplicates or rejected)."""
    return sum(int(v) for v in r.hvals(keys.offsets))


def learned(r: redis.Redis, keys: Keys) -> int:
    version = r.get(keys.current_version)
    if version is None:
        return 0
    meta = r.hget(keys.version(int(version)), "meta")
    return int(json.loads(meta)["events_learned"]) if meta else 0


def run_once(services: Services, n_events: int, gate: bool, budget: TimeBudget) -> dict:
    run = run_env(services, "ingest" if gate else "ingest-nogate", RECSTREAM_GATE_ENABLED=str(gate).lower())
    ensure_topics(run)
    settings = Settings()
    values = events(n_events, users=5_000, items=10_000)
    warmup = events(500, users=50, items=50, seed=2, prefix="w")
    bootstrap = services.broker.address
    r = redis.Redis.from_url(services.redis.url)
    keys = Keys(settings.redis_prefix)
    worker = start_worker(run.env)
    try:
        asyncio.run(produce(bootstrap, settings.topic_events, warmup))
        wait_for(lambda: handled(r, keys) >= len(warmup), min(120, budget.left()), "the worker's warm-up")
        started = time.perf_counter()
        produce_seconds = asyncio.run(produce(bootstrap, settings.topic_events, values))
        wait_for(lambda: handled(r, keys) >= len(warmup) + n_events, budget.left(), "the worker to take the events")
        worker_rate = n_events / (time.perf_counter() - started)
        n_learned = learned(r, keys)
        held = {k.decode(): int(v) for k, v in r.hgetall(keys.gate_counts).items()}
    finally:
        worker.stop(timeout=30)
    consume_rate = asyncio.run(
        bare_consume(bootstrap, settings.topic_events, settings.topic_partitions, n_events + len(warmup), 120)
    )
    learner_rate = bare_learner(values)
    return {
        "events": n_events,
        "gate": gate,
        "learned": n_learned,
        "held_or_dropped": held,
        "worker_events_per_second": worker_rate,
        "producer_events_per_second": n_events / produce_seconds,
        "bare_consume_events_per_second": consume_rate,
        "bare_learner_events_per_second": learner_rate,
        "ratio_to_smaller_reference": worker_rate / min(consume_rate, learner_rate),
    }


def run(services: Services, n_events: int, budget: TimeBudget) -> tuple[dict, list[Row]]:
    gate_on = run_once(services, n_events, True, budget)
    gate_off = run_once(services, n_events, False, budget)
    rows = []
    for result in (gate_on, gate_off):
        label = "gate on" if result["gate"] else "gate off"
        worker = result["worker_events_per_second"]
        smaller = min(result["bare_consume_events_per_second"], result["bare_learner_events_per_second"])
        for ref_key, ref_name in (
            ("bare_consume_events_per_second", "bare aiokafka consume"),
            ("bare_learner_events_per_second", "bare predict+learn loop"),
        ):
            reference = result[ref_key]
            is_smaller = reference == smaller
            rows.append(
                Row(
                    "ingest",
                    f"worker ev/s, {label}",
                    worker,
                    "ev/s",
                    reference,
                    ref_name,
                    f">= {TARGET_EVENTS_PER_SECOND:,} and >= {TARGET_RATIO}x" if is_smaller else "",
                    (worker >= TARGET_EVENTS_PER_SECOND and worker / reference >= TARGET_RATIO) if is_smaller else None,
                )
            )
    rows.append(
        Row(
            "ingest",
            "worker ev/s, gate on vs off",
            gate_on["worker_events_per_second"],
            "ev/s",
            gate_off["worker_events_per_second"],
            "same worker, gate off",
        )
    )
    return {"gate_on": gate_on, "gate_off": gate_off}, rows

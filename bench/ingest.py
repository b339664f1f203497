"""Ingest: events/s from the broker through one worker (decode, gate, predict+learn, checkpoint to Redis).

Next to, on the same broker, topic and messages, measured in the same run: (a) a bare aiokafka
consume loop (assign every partition, read from the beginning, count), and (b) the bare learner
loop (decode + predict + learn, no Kafka, no Redis, no gate). Run with the gate on and off, and
with two message formats: one event per Kafka message (a publisher writing to Kafka directly)
and batch messages of ``BATCH_EVENTS`` events (a JSON list: what ``POST /v1/events`` publishes).
"""

from __future__ import annotations

import asyncio
import json
import time

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Row, TimeBudget, cpu_seconds, events, wait_for
from bench.stack import Services, ensure_topics, run_env, start_worker
from recstream.components import new_learner
from recstream.events import parse_message
from recstream.settings import Settings
from store.keys import Keys

TARGET_EVENTS_PER_SECOND = 20_000
TARGET_RATIO = 0.5
BATCH_EVENTS = 500  # events per batch message, as the ingest endpoint sends a request of 500 events


def as_messages(values: list[bytes], per_message: int) -> list[bytes]:
    """One event per message, or JSON lists of ``per_message`` events."""
    if per_message == 1:
        return values
    return [b"[" + b",".join(values[i : i + per_message]) + b"]" for i in range(0, len(values), per_message)]


def _key(value: bytes) -> bytes | None:
    return None if value[:1] == b"[" else json.loads(value)["user_id"].encode()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value=v, key=_key(v)) for v in values]
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


def bare_learner(messages: list[bytes]) -> float:
    """Decode (the worker's decoder) + predict + learn every event of ``messages``; events/s."""
    learner = new_learner(Settings())
    n = 0
    started = time.perf_counter()
    for raw in messages:
        for decoded in parse_message(raw):
            event = decoded.event
            assert event is not None
            learner.learn(
                event.user_id,
                event.item_id,
                event.type,
                event.watch_seconds,
                event.item_duration_seconds,
                ts=event.ts.timestamp(),
            )
            n += 1
    return n / (time.perf_counter() - started)


def handled(r: redis.Redis, keys: Keys) -> int:
    """Messages the worker has checkpointed (learned, held, dropped as duplicates or rejected)."""
    return sum(int(v) for v in r.hvals(keys.offsets))


def learned(r: redis.Redis, keys: Keys) -> int:
    version = r.get(keys.current_version)
    if version is None:
        return 0
    meta = r.hget(keys.version(int(version)), "meta")
    return int(json.loads(meta)["events_learned"]) if meta else 0


def run_once(services: Services, n_events: int, gate: bool, per_message: int, budget: TimeBudget) -> dict:
    name = f"ingest{'' if gate else '-nogate'}-{per_message}"
    run = run_env(services, name, RECSTREAM_GATE_ENABLED=str(gate).lower())
    ensure_topics(run)
    settings = Settings()
    values = as_messages(events(n_events, users=5_000, items=10_000), per_message)
    warmup = as_messages(events(500, users=50, items=50, seed=2, prefix="w"), per_message)
    bootstrap = services.broker.address
    r = redis.Redis.from_url(services.redis.url)
    keys = Keys(settings.redis_prefix)
    # The reference is measured right before and right after the worker (their mean is the
    # figure): this VM's speed drifts by up to 2x over a minute, and one side alone can land on a
    # fast or a slow stretch that the worker's run did not see.
    learner_before = bare_learner(values)
    worker = start_worker(run.env)
    try:
        asyncio.run(produce(bootstrap, settings.topic_events, warmup))
        wait_for(lambda: handled(r, keys) >= len(warmup), min(120, budget.left()), "the worker's warm-up")
        started, cpu_before = time.perf_counter(), cpu_seconds(worker.pid)
        produce_seconds = asyncio.run(produce(bootstrap, settings.topic_events, values))
        wait_for(lambda: handled(r, keys) >= len(warmup) + len(values), budget.left(), "the worker to take the events")
        wall = time.perf_counter() - started
        worker_cpu = cpu_seconds(worker.pid) - cpu_before
        worker_rate = n_events / wall
        n_learned = learned(r, keys)
        held = {k.decode(): int(v) for k, v in r.hgetall(keys.gate_counts).items()}
    finally:
        worker.stop(timeout=30)
    messages_per_second = asyncio.run(
        bare_consume(bootstrap, settings.topic_events, settings.topic_partitions, len(values) + len(warmup), 120)
    )
    consume_rate = messages_per_second * per_message
    learner_after = bare_learner(values)
    learner_rate = (learner_before + learner_after) / 2
    return {
        "events": n_events,
        "events_per_message": per_message,
        "gate": gate,
        "learned": n_learned,
        "held_or_dropped": held,
        "worker_events_per_second": worker_rate,
        # CPU time is less sensitive than wall time to other load on a shared machine; cpu/wall
        # below 1 on a quiet machine is time the worker waited (broker, Redis, its take window).
        "worker_cpu_seconds": worker_cpu,
        "worker_cpu_microseconds_per_event": 1e6 * worker_cpu / n_events,
        "worker_cpu_share_of_wall": worker_cpu / wall,
        "producer_events_per_second": n_events / produce_seconds,
        "bare_consume_events_per_second": consume_rate,
        "bare_learner_events_per_second": learner_rate,  # mean of the two below
        "bare_learner_events_per_second_before_after": [learner_before, learner_after],
        "ratio_to_smaller_reference": worker_rate / min(consume_rate, learner_rate),
    }


def run(services: Services, n_events: int, budget: TimeBudget) -> tuple[dict, list[Row]]:
    results = {
        f"gate_{'on' if gate else 'off'}_{per_message}": run_once(services, n_events, gate, per_message, budget)
        for per_message in (BATCH_EVENTS, 1)
        for gate in (True, False)
    }
    gate_on, gate_off = results[f"gate_on_{BATCH_EVENTS}"], results[f"gate_off_{BATCH_EVENTS}"]
    rows = []
    for result in results.values():
        fmt = "1 event/msg" if result["events_per_message"] == 1 else f"{result['events_per_message']} events/msg"
        label = f"{'gate on' if result['gate'] else 'gate off'}, {fmt}"
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
    for result in (gate_on, gate_off):
        label = f"{'gate on' if result['gate'] else 'gate off'}, {BATCH_EVENTS} events/msg"
        rows.append(
            Row(
                "ingest",
                f"worker CPU us/event, {label} (CPU busy {result['worker_cpu_share_of_wall']:.0%} of wall)",
                result["worker_cpu_microseconds_per_event"],
                "us",
                1e6 / result["bare_learner_events_per_second"],
                "bare predict+learn loop",
            )
        )
    rows.append(
        Row(
            "ingest",
            f"worker ev/s, gate on vs off, {BATCH_EVENTS} events/msg",
            gate_on["worker_events_per_second"],
            "ev/s",
            gate_off["worker_events_per_second"],
            "same worker, gate off",
        )
    )
    return results, rows

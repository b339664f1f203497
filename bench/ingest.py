"""Ingest: events/s from the broker through one worker (decode, gate, predict+learn, checkpoint to Redis).

Next to, on the same broker, topic and messages, measured in the same run: (a) a bare aiokafka
consume loop (assign every partition, read from the beginning, count), and (b) the bare learner
loop (decode + predict + learn, no Kafka, no Redis, no gate; under the worker's garbage-collector
thresholds, as the worker runs). Run with the gate on and off, and
with two message formats: one event per Kafka message (a publisher writing to Kafka directly)
and batch messages of ``BATCH_EVENTS`` events (a JSON list: what ``POST /v1/events`` publishes).

The target rows time the worker on a backlog: the events are on the topic before it starts, as they are for the
bare consume loop (which reads the topic from its start) and the bare learner loop (messages in memory), and the
rate runs from its first checkpoint past the warm-up to its last. The same events produced while the worker runs
are timed too, as a row of their own: the bench's producer then shares the two cores with the worker and the
broker, which its references do not. At one event per message the worker then spent 40-46 us of CPU an event
instead of 35-37 and waited 14% of its time: 0.42-0.46x the bare loop against 0.55-0.57x on the backlog
(``/tmp/s45/backlog.py``, forty-fifth session). A publisher's traffic arriving as the worker learns is what the
freshness part measures (at a steady 1,000 and 5,000 ev/s).

Those runs start from an empty model. :func:`run_grown` measures what a long-running worker
does: the worker on a model that has already learned ``grown_events`` events, next to the bare
loop over the same events on a model grown the same way, and to its own first events on the
empty model (learning and each checkpoint's whole snapshot cost more as the model grows).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from datetime import UTC, datetime, timedelta

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Row, TimeBudget, cpu_seconds, events, wait_for
from bench.stack import Services, ensure_topics, forget_run, run_env, start_worker
from learner.online_learner import OnlineLearner
from recstream.components import new_learner
from recstream.events import decoded_messages
from recstream.gc_tuning import WORKER_GC_THRESHOLD
from recstream.settings import Settings
from store.keys import Keys

TARGET_EVENTS_PER_SECOND = 20_000
TARGET_RATIO = 0.5
BATCH_EVENTS = 500  # events per batch message, as the ingest endpoint sends a request of 500 events
GROWN_EVENTS = 1_000_000  # learned before the grown-model run measures (run_grown)
GROWN_USERS, GROWN_ITEMS = 50_000, 100_000


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


def bare_learner(messages: list[bytes], learner: OnlineLearner | None = None) -> float:
    """Decode (as the worker decodes) + predict + learn every event of ``messages`` (into ``learner``, default a
    new one); events/s. Under the worker's garbage-collector thresholds (recstream.gc_tuning), as the worker
    runs: with CPython's defaults this loop measured 6-17% slower, which flattered the worker's ratio."""
    learner = learner or new_learner(Settings())
    n = 0
    thresholds = gc.get_threshold()
    gc.set_threshold(*WORKER_GC_THRESHOLD)
    try:
        started = time.perf_counter()
        for decoded_message in decoded_messages(messages):  # as the worker decodes them
            for decoded in decoded_message:
                event = decoded.event
                assert event is not None
                learner.learn(
                    event.user_id,
                    event.item_id,
                    event.type,
                    event.watch_seconds,
                    event.item_duration_seconds,
                    ts=event.ts_seconds,  # ts.timestamp(), as the worker computes it
                )
                n += 1
        seconds = time.perf_counter() - started
    finally:
        gc.set_threshold(*thresholds)
    return n / seconds


def handled(r: redis.Redis, keys: Keys) -> int:
    """Messages the worker has checkpointed (learned, held, dropped as duplicates or rejected)."""
    return sum(int(v) for v in r.hvals(keys.offsets))


def learned(r: redis.Redis, keys: Keys) -> int:
    version = r.get(keys.current_version)
    if version is None:
        return 0
    meta = r.hget(keys.version(int(version)), "meta")
    return int(json.loads(meta)["events_learned"]) if meta else 0


def whole_snapshot_bytes(r: redis.Redis, keys: Keys, version: int) -> int:
    """Bytes of the whole snapshot ``version`` is, or is built from (a delta version: down its chain)."""
    while (base := r.hget(keys.version(version), "base")) is not None:
        version = int(base)
    return r.hstrlen(keys.version(version), "blob")


def run_once(services: Services, n_events: int, gate: bool, per_message: int, budget: TimeBudget) -> dict:
    """The worker's rate over ``n_events`` on a backlog (the target row: its references read what is there too),
    and over the same events produced while it runs (shown, not a target), next to the bare references."""
    name = f"ingest{'' if gate else '-nogate'}-{per_message}"
    values = as_messages(events(n_events, users=5_000, items=10_000), per_message)
    warmup = as_messages(events(500, users=50, items=50, seed=2, prefix="w"), per_message)
    # The reference is measured right before and right after the worker (their mean is the
    # figure): this VM's speed drifts by up to 2x over a minute, and one side alone can land on a
    # fast or a slow stretch that the worker's run did not see.
    learner_before = bare_learner(values)
    backlog = _worker_run(services, name, gate, per_message, warmup, values, budget, backlog=True)
    producing = _worker_run(services, f"{name}-producing", gate, per_message, warmup, values, budget, backlog=False)
    messages_per_second = asyncio.run(
        bare_consume(services.broker.address, backlog["topic"], backlog["partitions"], len(values) + len(warmup), 120)
    )
    consume_rate = messages_per_second * per_message
    learner_after = bare_learner(values)
    learner_rate = (learner_before + learner_after) / 2
    worker_rate = backlog["events_per_second"]
    return {
        "events": n_events,
        "events_per_message": per_message,
        "gate": gate,
        "learned": backlog["learned"],
        "held_or_dropped": backlog["held_or_dropped"],
        "worker_events_per_second": worker_rate,
        "worker_events_measured": backlog["events_measured"],
        # CPU time is less sensitive than wall time to other load on a shared machine; cpu/wall
        # below 1 on a quiet machine is time the worker waited (broker, Redis, its take window).
        "worker_cpu_seconds": backlog["cpu_seconds"],
        "worker_cpu_microseconds_per_event": backlog["cpu_microseconds_per_event"],
        "worker_cpu_share_of_wall": backlog["cpu_share_of_wall"],
        "producing": producing,
        "producer_events_per_second": producing["producer_events_per_second"],
        "bare_consume_events_per_second": consume_rate,
        "bare_learner_events_per_second": learner_rate,  # mean of the two below
        "bare_learner_events_per_second_before_after": [learner_before, learner_after],
        "ratio_to_smaller_reference": worker_rate / min(consume_rate, learner_rate),
    }


def _worker_run(
    services: Services,
    name: str,
    gate: bool,
    per_message: int,
    warmup: list[bytes],
    values: list[bytes],
    budget: TimeBudget,
    backlog: bool,
) -> dict:
    """One worker on a topic of its own taking ``warmup`` then ``values``; its rate over ``values``.

    ``backlog``: both are on the topic before the worker starts, as its references read them (the bare consume
    loop reads the topic from its start, the bare learner loop messages in memory); the rate is measured from the
    first checkpoint that covers the warm-up (its start and its first events left out) to the one that covers
    every message, over the events between. Otherwise the worker takes the warm-up first, and ``values`` are
    produced while it runs, the rate measured from the start of producing them: the bench's producer then shares
    the two cores with the worker and the broker, which the references do not.
    """
    run = run_env(services, name, RECSTREAM_GATE_ENABLED=str(gate).lower())
    ensure_topics(run)
    settings = Settings()
    bootstrap, topic = services.broker.address, settings.topic_events
    r = redis.Redis.from_url(services.redis.url)
    keys = Keys(settings.redis_prefix)
    total = len(warmup) + len(values)
    produce_seconds = None
    if backlog:
        asyncio.run(produce(bootstrap, topic, warmup + values))
    worker = start_worker(run.env)
    try:
        if backlog:
            deadline = time.monotonic() + min(120, budget.left())
            while (first := handled(r, keys)) < len(warmup):
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out waiting for the worker's first checkpoint")
                time.sleep(0.005)
        else:
            asyncio.run(produce(bootstrap, topic, warmup))
            wait_for(lambda: handled(r, keys) >= len(warmup), min(120, budget.left()), "the worker's warm-up")
            first = len(warmup)
        started, cpu_before = time.perf_counter(), cpu_seconds(worker.pid)
        if not backlog:
            produce_seconds = asyncio.run(produce(bootstrap, topic, values))
        wait_for(lambda: handled(r, keys) >= total, budget.left(), "the worker to take the events", interval=0.005)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(worker.pid) - cpu_before
        n_learned = learned(r, keys)
        held = {k.decode(): int(v) for k, v in r.hgetall(keys.gate_counts).items()}
    finally:
        worker.stop(timeout=30)
        r.close()
    measured = (total - first) * per_message
    if measured <= 0:
        raise RuntimeError(f"the worker took all {total:,} messages before its first checkpoint: measure more events")
    return {
        "topic": topic,
        "partitions": settings.topic_partitions,
        "backlog": backlog,
        "events_measured": measured,
        "events_per_second": measured / wall,
        "cpu_seconds": cpu,
        "cpu_microseconds_per_event": 1e6 * cpu / measured,
        "cpu_share_of_wall": cpu / wall,
        "producer_events_per_second": None if produce_seconds is None else len(values) * per_message / produce_seconds,
        "learned": n_learned,
        "held_or_dropped": held,
    }


def _take(
    worker_pid: int,
    bootstrap: str,
    topic: str,
    values: list[bytes],
    done: int,
    r: redis.Redis,
    keys: Keys,
    budget: TimeBudget,
) -> dict:
    """Produce ``values`` and wait until the worker's checkpoints cover ``done`` messages, as :func:`run_once`
    times it (its last checkpoint included: on a large model that is ~1 s, plus up to the checkpoint spacing);
    also counts the checkpoints written meanwhile."""
    seen = r.get(keys.current_version)
    started, cpu_before = time.perf_counter(), cpu_seconds(worker_pid)
    asyncio.run(produce(bootstrap, topic, values))
    checkpoints = 0
    while True:
        finished = handled(r, keys) >= done  # read first: the version read next is then at least the final one
        version = r.get(keys.current_version)
        if version != seen:
            seen, checkpoints = version, checkpoints + 1
        if finished:
            break
        budget.check("waiting for the worker to take the events")
        time.sleep(0.02)
    wall = time.perf_counter() - started
    n = len(values) * BATCH_EVENTS
    return {
        "seconds": wall,
        "checkpoints": checkpoints,
        "events_per_second": n / wall,
        "cpu_microseconds_per_event": 1e6 * (cpu_seconds(worker_pid) - cpu_before) / n,
    }


def run_grown(services: Services, n_events: int, grown_events: int, budget: TimeBudget) -> dict:
    """One worker, gate on, batch messages over ``GROWN_USERS`` users and ``GROWN_ITEMS`` items: its rate over its
    first ``n_events`` on an empty model, then over ``n_events`` more once it has learned ``grown_events`` in all;
    next to the bare predict+learn loop over the same stretches of the same stream."""
    run = run_env(services, "ingest-grown", RECSTREAM_GATE_ENABLED="true")
    ensure_topics(run)
    settings = Settings()
    r = redis.Redis.from_url(services.redis.url)
    keys = Keys(settings.redis_prefix)
    bootstrap, topic = services.broker.address, settings.topic_events
    # stretches of stream time one after the other, all within the last four hours (none late, none ahead)
    origin = datetime.now(UTC) - timedelta(hours=3)
    grow_n = max(grown_events - n_events, 0)

    def stretch(n: int, index: int, prefix: str) -> list[bytes]:
        start = origin + timedelta(seconds=3000 * index)
        values = events(n, users=GROWN_USERS, items=GROWN_ITEMS, seed=11 + index, prefix=prefix, start=start)
        return as_messages(values, BATCH_EVENTS)

    first, grow, last = stretch(n_events, 0, "f"), stretch(grow_n, 1, "g"), stretch(n_events, 2, "t")
    # The bare loop over the same stream, its last stretch timed before the worker runs and, on a copy of the
    # model as it was then, after (their mean is the reference: this VM's speed drifts, see run_once).
    learner = new_learner(Settings())
    bare_first = bare_learner(first, learner)
    bare_learner(grow, learner)
    copy = OnlineLearner.from_bytes(learner.to_bytes())
    bare_grown_before = bare_learner(last, learner)
    del learner
    warm_n = 500
    warmup = as_messages(
        events(warm_n, users=50, items=50, seed=2, prefix="w", start=origin - timedelta(hours=1)), BATCH_EVENTS
    )
    budget.check("starting the grown-model run")
    worker = start_worker(run.env)
    try:
        asyncio.run(produce(bootstrap, topic, warmup))
        wait_for(lambda: handled(r, keys) >= len(warmup), min(120, budget.left()), "the worker's warm-up")
        done = len(warmup) + len(first)
        fresh = _take(worker.pid, bootstrap, topic, first, done, r, keys, budget)
        asyncio.run(produce(bootstrap, topic, grow))
        done += len(grow)
        wait_for(lambda: handled(r, keys) >= done, budget.left(), "the worker to grow its model")
        done += len(last)
        grown = _take(worker.pid, bootstrap, topic, last, done, r, keys, budget)
        version = r.get(keys.current_version)
        snapshot = whole_snapshot_bytes(r, keys, int(version)) if version is not None else 0
        n_learned = learned(r, keys)
        held = {k.decode(): int(v) for k, v in r.hgetall(keys.gate_counts).items()}
    finally:
        worker.stop(timeout=60)
        forget_run(r, settings.redis_prefix)  # its ~130 MB snapshots would stay in Redis for the later parts
    bare_grown_after = bare_learner(last, copy)
    return {
        "events": n_events,
        "grown_events": n_events + grow_n,
        "users": GROWN_USERS,
        "items": GROWN_ITEMS,
        "sent": warm_n + 2 * n_events + grow_n,
        "learned": n_learned,
        "held_or_dropped": held,
        "fresh": fresh,
        "grown": grown,
        "fresh_events_per_second": fresh["events_per_second"],
        "fresh_cpu_microseconds_per_event": fresh["cpu_microseconds_per_event"],
        "grown_events_per_second": grown["events_per_second"],
        "grown_cpu_microseconds_per_event": grown["cpu_microseconds_per_event"],
        "snapshot_bytes": snapshot,
        "checkpoint_share": settings.checkpoint_share,
        "bare_learner_fresh_events_per_second": bare_first,
        "bare_learner_grown_events_per_second": (bare_grown_before + bare_grown_after) / 2,
        "bare_learner_grown_events_per_second_before_after": [bare_grown_before, bare_grown_after],
    }


def run(
    services: Services, n_events: int, budget: TimeBudget, grown_events: int = GROWN_EVENTS
) -> tuple[dict, list[Row]]:
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
                    f"worker ev/s, {label}, a backlog",
                    worker,
                    "ev/s",
                    reference,
                    ref_name,
                    f">= {TARGET_EVENTS_PER_SECOND:,} and >= {TARGET_RATIO}x" if is_smaller else "",
                    (worker >= TARGET_EVENTS_PER_SECOND and worker / reference >= TARGET_RATIO) if is_smaller else None,
                )
            )
        # the same events produced while the worker takes them: the bench's producer then uses part of the two
        # cores the worker and the broker share (not its references' condition; shown, not a target)
        rows.append(
            Row(
                "ingest",
                f"worker ev/s, {label}, produced while it runs (the producer on the same cores)",
                result["producing"]["events_per_second"],
                "ev/s",
                result["bare_learner_events_per_second"],
                "bare predict+learn loop",
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
    grown = None
    if grown_events > 0:
        try:
            grown = results["grown"] = run_grown(services, n_events, grown_events, budget)
        except Exception as exc:  # noqa: BLE001 - the runs above keep their figures
            results["grown"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench: ingest on a grown model failed: {exc}", file=sys.stderr, flush=True)
    if grown is not None:
        label = f"gate on, {BATCH_EVENTS} events/msg, model grown by {grown['grown_events']:,} events"
        size = f"{grown['users']:,} users, {grown['items']:,} items; snapshot {grown['snapshot_bytes'] / 1e6:.0f} MB"
        rows.append(
            Row(
                "ingest",
                f"worker ev/s, {label} ({size})",
                grown["grown_events_per_second"],
                "ev/s",
                grown["bare_learner_grown_events_per_second"],
                "bare predict+learn loop, same grown model",
            )
        )
        rows.append(
            Row(
                "ingest",
                f"worker ev/s, gate on, {BATCH_EVENTS} events/msg, empty model (the same stream's start)",
                grown["fresh_events_per_second"],
                "ev/s",
                grown["bare_learner_fresh_events_per_second"],
                "bare predict+learn loop, same events",
            )
        )
        rows.append(
            Row(
                "ingest",
                f"worker ev/s, {label}",
                grown["grown_events_per_second"],
                "ev/s",
                grown["fresh_events_per_second"],
                "same worker, empty model",
            )
        )
        rows.append(
            Row(
                "ingest",
                f"worker CPU us/event, {label}",
                grown["grown_cpu_microseconds_per_event"],
                "us",
                grown["fresh_cpu_microseconds_per_event"],
                "same worker, empty model",
            )
        )
    return results, rows

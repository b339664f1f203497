"""``python -m bench [--events N] [--items N] [--seconds S]``: ingest and serving, each next to a reference.

Starts what it needs (local broker, Redis, worker, API) on loopback, runs each benchmark for a
bounded time, prints a table and writes ``bench/results/latest.json``. Figures are machine
dependent; the ratios to the references measured in the same run are what to compare.

* ingest: events/s from the broker through the worker (decode, learn, checkpoint to Redis),
  next to (a) a bare aiokafka consume loop over the same messages on the same broker and
  (b) the bare learner loop (decode + predict + learn, no Kafka, no Redis) over the same events.
* serving: top-10 recommendations over a catalogue of N items at 1 connection (p50/p99 and
  requests/s, load from a second process) next to ``/healthz`` on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from api.auth import hash_key, new_key
from recstream import local_services
from recstream.components import new_learner
from recstream.events import parse_event
from recstream.settings import Settings
from store.keys import Keys
from store.signing import SnapshotSigner
from stream.topics import ensure_topics

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _events(n: int, users: int, items: int, seed: int = 1, prefix: str = "b") -> list[bytes]:
    """``n`` events spread over the last hour (so the gate's time and rate rules see a plausible stream)."""
    from datetime import UTC, datetime, timedelta

    rnd = random.Random(seed)
    kinds = ["view", "like", "like", "share", "skip"]
    start = datetime.now(UTC) - timedelta(hours=1)
    step = 3000.0 / max(n, 1)
    return [
        json.dumps(
            {
                "event_id": f"{prefix}{i}",
                "user_id": f"u{rnd.randrange(users)}",
                "item_id": f"v{rnd.randrange(items)}",
                "type": rnd.choice(kinds),
                "ts": (start + timedelta(seconds=i * step)).isoformat(),
                "watch_seconds": 12.0,
                "item_duration_seconds": 30.0,
            }
        ).encode()
        for i in range(n)
    ]


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value=v, key=v[30:40]) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _bare_consume(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """A bare aiokafka loop: assign all partitions, read from the beginning, count messages."""
    from aiokafka import TopicPartition

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
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(messages) for messages in batches.values())
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def _bare_learner(values: list[bytes]) -> float:
    learner = new_learner(Settings())
    started = time.perf_counter()
    for raw in values:
        event, _ = parse_event(raw)
        assert event is not None
        learner.learn(event.user_id, event.item_id, event.type, event.watch_seconds, event.item_duration_seconds)
    return len(values) / (time.perf_counter() - started)


def _handled(r: redis.Redis, keys: Keys) -> int:
    """Messages the worker has checkpointed (learned, held, dropped as duplicates or rejected)."""
    return sum(int(v) for v in r.hvals(keys.offsets))


def _learned(r: redis.Redis, keys: Keys) -> int:
    version = r.get(keys.current_version)
    if version is None:
        return 0
    meta = r.hget(keys.version(int(version)), "meta")
    return int(json.loads(meta)["events_learned"]) if meta else 0


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.02)


def bench_ingest(broker: local_services.LocalService, redis_url: str, n_events: int, gate: bool = True) -> dict:
    run = uuid.uuid4().hex[:6]
    env = {
        "RECSTREAM_GATE_ENABLED": "true" if gate else "false",
        "RECSTREAM_BROKER_URL": broker.url,
        "RECSTREAM_REDIS_URL": redis_url,
        "RECSTREAM_APP_ID": f"bench-{run}",
        "RECSTREAM_REDIS_PREFIX": f"bench-{run}",
        "RECSTREAM_TOPIC_EVENTS": f"bench-events-{run}",
        "RECSTREAM_TOPIC_REJECTED": f"bench-events-{run}.rejected",
        "RECSTREAM_TOPIC_QUARANTINED": f"bench-events-{run}.quarantined",
        "RECSTREAM_TOPIC_PARTITIONS": "2",
        "RECSTREAM_BROKER_SESSION_TIMEOUT": "6",
    }
    os.environ.update(env)
    settings = Settings()
    asyncio.run(ensure_topics(settings))
    values = _events(n_events, users=5_000, items=10_000)
    warmup = _events(500, users=50, items=50, seed=2, prefix="w")
    r = redis.Redis.from_url(redis_url)
    keys = Keys(settings.redis_prefix)
    worker = local_services.start_worker(env)
    try:
        asyncio.run(_produce(broker.address, settings.topic_events, warmup))
        _wait(lambda: _handled(r, keys) >= len(warmup), 120, "the worker to take the warm-up events")
        started = time.perf_counter()
        produce_seconds = asyncio.run(_produce(broker.address, settings.topic_events, values))
        _wait(lambda: _handled(r, keys) >= len(warmup) + n_events, 600, "the worker to take the benchmark events")
        worker_rate = n_events / (time.perf_counter() - started)
        learned = _learned(r, keys)
        held = {k.decode(): int(v) for k, v in r.hgetall(keys.gate_counts).items()}
    finally:
        worker.stop(timeout=30)
    bare_consume = asyncio.run(
        _bare_consume(broker.address, settings.topic_events, settings.topic_partitions, n_events + len(warmup))
    )
    bare_learner = _bare_learner(values)
    return {
        "events": n_events,
        "gate": gate,
        "learned": learned,
        "held_or_dropped": held,
        "worker_events_per_second": worker_rate,
        "producer_events_per_second": n_events / produce_seconds,
        "bare_consume_events_per_second": bare_consume,
        "bare_learner_events_per_second": bare_learner,
        "ratio_to_bare_consume": worker_rate / bare_consume,
        "ratio_to_bare_learner": worker_rate / bare_learner,
        "ratio_to_smaller_reference": worker_rate / min(bare_consume, bare_learner),
    }


def bench_serving(broker: local_services.LocalService, redis_url: str, n_items: int, seconds: float) -> dict:
    run = uuid.uuid4().hex[:6]
    api_key = new_key()  # measured with authentication on, as in production
    entry = {"name": "bench", "scopes": ["read", "admin"], "hash": hash_key(api_key)}
    env = {
        "RECSTREAM_BROKER_URL": broker.url,
        "RECSTREAM_REDIS_URL": redis_url,
        "RECSTREAM_REDIS_PREFIX": f"bench-serve-{run}",
        "RECSTREAM_HMAC_KEY": f"bench-{run}",
        "RECSTREAM_API_KEYS": json.dumps([entry]),
        # the load generator must not be throttled: this measures serving, not the limiter's refusals
        "RECSTREAM_RATE_LIMIT_READ_PER_SECOND": "1000000",
        "RECSTREAM_RATE_LIMIT_READ_BURST": "1000000",
    }
    os.environ.update(env)
    settings = Settings()
    # A model over n_items items and 2,000 users, checkpointed into Redis as the worker would.
    learner = new_learner(settings)
    rnd = random.Random(3)
    for item in range(n_items):
        learner.learn(f"u{rnd.randrange(2000)}", f"v{item}", "like", None, None)
    for _ in range(20_000):
        learner.learn(f"u{rnd.randrange(2000)}", f"v{rnd.randrange(n_items)}", "like", None, None)
    blob = learner.to_bytes()
    keys = Keys(settings.redis_prefix)
    r = redis.Redis.from_url(redis_url)
    signer = SnapshotSigner(settings.hmac_key.get_secret_value().encode())
    r.hset(keys.version(1), mapping={"blob": blob, "tag": signer.sign(blob), "meta": "{}"})
    r.set(keys.current_version, 1)
    r.sadd(keys.seen("u7"), *[f"v{i}" for i in range(20)])
    api = local_services.start_api(env)
    try:
        _wait(
            lambda: b'"model_version":1' in _get(f"{api.url}/v1/users/u7/recommendations", api_key),
            30,
            "the API to load the model",
        )
        results = {}
        for name, path in (("trivial", "/healthz"), ("recommendations", "/v1/users/u7/recommendations?k=10")):
            out = subprocess.run(
                [sys.executable, "-m", "bench.load", api.url + path, str(seconds), api_key],
                capture_output=True,
                text=True,
                check=True,
                timeout=seconds + 60,
            )
            results[name] = json.loads(out.stdout)
    finally:
        api.stop()
    return {
        "items": n_items,
        "snapshot_bytes": len(blob),
        "trivial": results["trivial"],
        "recommendations": results["recommendations"],
        "p99_ratio_to_trivial": results["recommendations"]["p99_ms"] / results["trivial"]["p99_ms"],
        "rps_ratio_to_trivial": results["recommendations"]["requests_per_second"]
        / results["trivial"]["requests_per_second"],
    }


def _get(url: str, api_key: str) -> bytes:
    import httpx

    try:
        return httpx.get(url, timeout=2, headers={"Authorization": f"Bearer {api_key}"}).content
    except httpx.HTTPError:
        return b""


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the ``finally`` blocks stop every process we started."""
    import signal

    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    _stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the ingest benchmark")
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size for the serving benchmark")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each serving load run")
    parser.add_argument("--broker", choices=["auto", "kafka", "tansu"], default="auto")
    args = parser.parse_args()

    broker = local_services.start_broker(args.broker)
    redis_service = local_services.start_redis()
    try:
        ingest = bench_ingest(broker, redis_service.url, args.events, gate=True)
        ingest_no_gate = bench_ingest(broker, redis_service.url, args.events, gate=False)
        serving = bench_serving(broker, redis_service.url, args.items, args.seconds)
    finally:
        redis_service.stop()
        broker.stop()
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "broker": broker.name},
        "ingest": ingest,
        "ingest_without_gate": ingest_no_gate,
        "gate_throughput_ratio": ingest["worker_events_per_second"] / ingest_no_gate["worker_events_per_second"],
        "serving": serving,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    i, s = ingest, serving
    print(f"\nbroker: {broker.name}; results in {RESULTS}\n")
    print(f"{'benchmark':<44}{'figure':>16}{'reference':>16}{'ratio':>8}")
    print(
        f"{'ingest events/s (worker vs bare consume)':<44}"
        f"{i['worker_events_per_second']:>16,.0f}{i['bare_consume_events_per_second']:>16,.0f}"
        f"{i['ratio_to_bare_consume']:>8.2f}"
    )
    print(
        f"{'ingest events/s (worker vs bare learner)':<44}"
        f"{i['worker_events_per_second']:>16,.0f}{i['bare_learner_events_per_second']:>16,.0f}"
        f"{i['ratio_to_bare_learner']:>8.2f}"
    )
    off = ingest_no_gate["worker_events_per_second"]
    print(
        f"{'ingest events/s (gate on vs gate off)':<44}{i['worker_events_per_second']:>16,.0f}{off:>16,.0f}"
        f"{i['worker_events_per_second'] / off:>8.2f}"
    )
    print(f"  gate on: learned {i['learned']:,} of {i['events'] + 500:,}; held/dropped {i['held_or_dropped']}")
    rec, triv = s["recommendations"], s["trivial"]
    label = f"top-10 over {s['items']:,} items"
    for q in ("p50", "p99"):
        mine, ref = rec[f"{q}_ms"], triv[f"{q}_ms"]
        print(f"{label + f' {q} ms (vs /healthz)':<44}{mine:>16.3f}{ref:>16.3f}{mine / ref:>8.2f}")
    print(
        f"{label + ' req/s, 1 conn':<44}{rec['requests_per_second']:>16,.0f}"
        f"{triv['requests_per_second']:>16,.0f}{s['rps_ratio_to_trivial']:>8.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

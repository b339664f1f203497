"""Chaos: kill and restart the worker, Redis and the API at random points of a live stream, then count.

A seeded schedule (the seed is printed; ``RECSTREAM_CHAOS_SEED=N`` replays one) SIGKILLs the worker
three times, restarts Redis twice (once SIGKILL, once SIGTERM; AOF on, same port and data) and
SIGKILLs the API once, while a few thousand events flow in, directly to Kafka and through
``POST /v1/events`` (resent until accepted, as a client would). The stream holds invalid messages
(dead-lettered by the worker, or refused at ingest), events from the future (quarantined by the
gate's timestamp rule: the only rule that can hold an event here, the statistical ones are out of
reach, see ``COUNTABLE_GATE_ENV``) and re-sent events (duplicates).

Then it waits for the worker to catch up and compares the final model with what was published:
popularity counts each learned like/share once per item, so per item the model's count must equal
the number of distinct valid, non-quarantined positive events. ``lost`` sums the shortfalls,
``learned_twice`` the excesses; both must be 0, and ``events_learned`` must equal the number of
distinct valid events that were not quarantined.

Redis runs with ``appendfsync always``: it fsyncs the AOF before it answers a write, so a
checkpoint Redis acknowledged survives a SIGKILL whatever the disk does (with the default
``everysec`` Redis may delay the AOF write by up to two seconds when fsync is slow, and a kill
in that window would lose an acknowledged checkpoint: acknowledged Kafka offsets would then point
past events the model no longer holds).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from aiokafka import AIOKafkaConsumer, TopicPartition

from recstream import local_services
from store.keys import Keys
from tests.conftest import (
    COUNTABLE_GATE_ENV,
    TEST_API_KEY,
    Endpoint,
    challenger_learner,
    create_topics,
    current_learner,
    make_env,
    popularity_counts,
    wait_for,
)
from tests.kafka_io import CheckpointReader, bootstrap, produce

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

CHUNKS = 40  # direct chunks to Kafka
CHUNK_EVENTS = 50  # valid events per direct chunk
API_BATCHES = 24
API_BATCH_EVENTS = 30
USERS = 300
ITEMS = 80
POSITIVE = ("like", "share")
PACE_SECONDS = 0.25  # between direct chunks, so the faults land in the middle of the stream


@dataclass
class Ledger:
    """What the test published, to compare with what the worker did."""

    valid: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> event (learnable)
    future: set[str] = field(default_factory=set)  # event ids the timestamp rule must hold
    invalid_direct: int = 0  # messages the worker must dead-letter
    rejected_ingest: int = 0  # events the API refused (never reach Kafka)
    duplicates_sent: int = 0  # deliberate re-sends of learnable events
    api_resends: int = 0  # API batches sent again after a failure (may add duplicates)
    api_failures: int = 0  # failed ingest attempts (API down or answering 5xx)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _event(rng: random.Random, event_id: str, now: datetime, future: bool = False) -> dict[str, Any]:
    ts = now + timedelta(hours=1) if future else now - timedelta(seconds=rng.uniform(5, 1800))
    return {
        "event_id": event_id,
        "user_id": f"u{rng.randrange(USERS)}",
        "item_id": f"v{rng.randrange(ITEMS)}",
        "type": rng.choice(("like", "like", "share", "view")),
        "ts": ts.isoformat(),
    }


def _invalid(rng: random.Random, n: int) -> bytes:
    choices = [
        b"{not json",
        json.dumps({"event_id": f"bad{n}", "user_id": "u1", "type": "like", "ts": "2026-01-01T00:00:00Z"}).encode(),
        json.dumps(
            {"event_id": f"bad{n}", "user_id": "u1", "item_id": "v1", "type": "poke", "ts": "2026-01-01T00:00:00Z"}
        ).encode(),
        json.dumps({"event_id": f"bad{n}", "user_id": "u 1", "item_id": "v1", "type": "like", "ts": "x"}).encode(),
        b"\xff\xfe\x00binary",
    ]
    return rng.choice(choices)


def _read_all(broker_url: str, topic: str, n_partitions: int = 1) -> list[bytes]:
    """Every message of ``topic`` (created with ``n_partitions``), from the beginning to its current end."""

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker_url), enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(n_partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            values: list[bytes] = []
            deadline = asyncio.get_running_loop().time() + 30
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"could not read {topic} to its end {end}")
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    values.extend(m.value for m in messages)
            return values
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _end_offsets(broker_url: str, topic: str, n_partitions: int) -> dict[str, int]:
    async def run() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker_url), enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(n_partitions)]
            end = await consumer.end_offsets(partitions)
            return {f"{tp.topic}/{tp.partition}": offset for tp, offset in end.items()}
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _progress(checkpoints: CheckpointReader) -> int:
    """Messages the current checkpoint covers (-1 while Redis cannot be read)."""
    try:
        return sum(checkpoints.meta().get("offsets", {}).values())
    except redis_lib.RedisError:
        return -1


class Chaos:
    """Starts, kills and restarts the worker, Redis and the API; registers every process for teardown."""

    def __init__(
        self, env: dict[str, str], workdir: Path, redis_port: int, api_port: int, processes: list[Any]
    ) -> None:
        self.env = env
        self.workdir = workdir  # every process's log stays here (one directory per start)
        self.starts: Counter[str] = Counter()
        redis_dir = workdir / "redis"
        self.redis_dir, self.redis_port, self.api_port = redis_dir, redis_port, api_port
        self.processes = processes
        self.redis = self._start_redis()
        self.worker = self._start_worker()
        self.api = self._start_api()
        self.redis_down = False
        self.log: list[str] = []

    def _start_redis(self) -> local_services.LocalService:
        service = local_services.start_redis(self.redis_dir, self.redis_port, appendonly=True, appendfsync="always")
        self.processes.append(service)
        return service

    def _dir(self, name: str) -> Path:
        self.starts[name] += 1
        return self.workdir / f"{name}{self.starts[name]}"

    def _start_worker(self) -> local_services.LocalService:
        service = local_services.start_worker(self.env, workdir=self._dir("worker"))
        self.processes.append(service)
        return service

    def _start_api(self) -> local_services.LocalService:
        service = local_services.start_api(self.env, port=self.api_port, workdir=self._dir("api"))
        self.processes.append(service)
        return service

    def kill_worker(self) -> None:
        self.worker.kill()
        self.worker = self._start_worker()
        self.log.append("worker SIGKILL+restart" + (" (Redis down)" if self.redis_down else ""))

    def stop_redis(self, how: str) -> None:
        if how == "SIGKILL":
            self.redis.kill()
        else:
            self.redis.stop(timeout=20)  # SIGTERM: Redis flushes the AOF and exits
        self.redis_down = True
        self.log.append(f"redis {how}")

    def start_redis(self) -> None:
        self.redis = self._start_redis()
        self.redis_down = False
        self.log.append("redis restarted (AOF)")

    def restart_api(self) -> None:
        self.api.kill()
        self.api = self._start_api()
        self.log.append("api SIGKILL+restart")


def _ingest_via_api(
    url: str,
    batches: list[list[dict[str, Any]]],
    go: threading.Semaphore,
    ledger: Ledger,
    done: threading.Event,
    errors: list[str],
) -> None:
    """Send each batch (when ``go`` allows) until the API accepts it (202), as a client that retries would."""
    pause = threading.Event()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=10) as client:
        for batch in batches:
            if not go.acquire(timeout=120):
                errors.append("the test never released the next API batch")
                break
            deadline = time.monotonic() + 120
            attempts = 0
            while True:
                attempts += 1
                try:
                    r = client.post("/v1/events", json=batch)
                    if r.status_code == 202:
                        with ledger.lock:
                            ledger.rejected_ingest += r.json()["rejected"]
                            ledger.api_resends += attempts - 1
                        break
                    status = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:  # the API is being restarted
                    status = repr(exc)
                with ledger.lock:
                    ledger.api_failures += 1
                if time.monotonic() > deadline:
                    errors.append(f"batch never accepted; last answer {status}")
                    done.set()
                    return
                pause.wait(0.2)  # the client's retry interval
    done.set()


def test_chaos_kills_and_restarts_lose_nothing_and_learn_nothing_twice(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService], tmp_path: Path
) -> None:
    seed = int(os.environ.get("RECSTREAM_CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
    print(f"chaos seed={seed} (replay with RECSTREAM_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()

    redis_port, api_port = local_services.free_port(), local_services.free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **make_env(Endpoint(redis_url, "own redis with AOF"), broker_endpoint),
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_BATCH_MAX_EVENTS": "100",
        # A challenger in shadow: its state is checkpointed with the champion's and must count exactly too.
        "RECSTREAM_CHALLENGERS": '["popularity"]',
        "RECSTREAM_PROMOTE_AUTO": "false",
    }
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    create_topics(env)
    chaos = Chaos(env, tmp_path, redis_port, api_port, processes)
    checkpoints = CheckpointReader(redis_url, env["RECSTREAM_REDIS_PREFIX"])

    # -- what will be published ----------------------------------------------------------------
    now = datetime.now(UTC)
    ledger = Ledger()
    direct_chunks: list[list[tuple[bytes | None, bytes]]] = []
    learnable_direct: list[tuple[bytes | None, bytes]] = []  # candidates for deliberate re-sends
    for c in range(CHUNKS):
        chunk: list[tuple[bytes | None, bytes]] = []
        fresh: list[tuple[bytes | None, bytes]] = []
        for i in range(CHUNK_EVENTS):
            future = rng.random() < 0.02
            event = _event(rng, f"d{c}-{i}", now, future=future)
            message = (event["user_id"].encode(), json.dumps(event).encode())
            if future:
                ledger.future.add(event["event_id"])
            else:
                ledger.valid[event["event_id"]] = event
                fresh.append(message)
            chunk.append(message)
        for _ in range(rng.randint(0, 4)):
            ledger.invalid_direct += 1
            chunk.insert(rng.randrange(len(chunk) + 1), (b"u1", _invalid(rng, ledger.invalid_direct)))
        if learnable_direct:
            for _ in range(rng.randint(0, 8)):  # re-send an earlier learnable event, byte for byte
                chunk.insert(rng.randrange(len(chunk) + 1), rng.choice(learnable_direct))
                ledger.duplicates_sent += 1
        learnable_direct.extend(fresh)
        direct_chunks.append(chunk)

    api_batches: list[list[dict[str, Any]]] = []
    for b in range(API_BATCHES):
        batch = []
        for i in range(API_BATCH_EVENTS):
            future = rng.random() < 0.02
            event = _event(rng, f"a{b}-{i}", now, future=future)
            if future:
                ledger.future.add(event["event_id"])
            else:
                ledger.valid[event["event_id"]] = event
            batch.append(event)
        for j in range(rng.randint(0, 2)):  # refused at ingest, named in the 202's errors
            batch.insert(rng.randrange(len(batch) + 1), {"event_id": f"ai{b}-{j}", "user_id": "u1", "type": "poke"})
        api_batches.append(batch)

    # -- the fault schedule --------------------------------------------------------------------
    actions = ["kill_worker", "kill_worker", "kill_worker", "redis:SIGKILL", "redis:SIGTERM", "kill_api"]
    rng.shuffle(actions)
    positions = sorted(rng.sample(range(2, CHUNKS - 6), len(actions)))
    schedule = dict(zip(positions, actions, strict=True))
    redis_back_at: int | None = None
    armed_kills: list[int] = []
    print("chaos schedule: " + ", ".join(f"chunk {p}: {a}" for p, a in sorted(schedule.items())))

    # The API batches go out alongside the direct chunks, so the API restart lands in the middle of them.
    api_chunks = set(rng.sample(range(CHUNKS), API_BATCHES))
    go = threading.Semaphore(0)
    done = threading.Event()
    api_errors: list[str] = []
    ingest = threading.Thread(
        target=_ingest_via_api, args=(chaos.api.url, api_batches, go, ledger, done, api_errors), daemon=True
    )
    pace = threading.Event()
    try:
        ingest.start()
        for c, chunk in enumerate(direct_chunks):
            if redis_back_at is not None and c >= redis_back_at:
                chaos.start_redis()
                redis_back_at = None
            action = schedule.get(c)
            if action == "kill_worker":
                # Armed now, fired once the running worker has checkpointed progress (or at once while
                # Redis is down), so each kill lands on a worker that is working through the stream.
                armed_kills.append(_progress(checkpoints))
            if armed_kills and (chaos.redis_down or _progress(checkpoints) > armed_kills[0]):
                armed_kills.pop(0)
                chaos.kill_worker()
                armed_kills = [_progress(checkpoints) for _ in armed_kills]
            if action == "kill_api":
                # Kill it, then let the client send while it is down: the batch is retried until the new API
                # process (same port) accepts it.
                chaos.api.kill()
                failures = ledger.api_failures
                go.release()
                wait_for(lambda f=failures: ledger.api_failures > f, 30, "the client to hit the dead API")
                chaos.restart_api()
            elif action is not None and action.startswith("redis:"):
                if chaos.redis_down:
                    chaos.start_redis()
                chaos.stop_redis(action.split(":", 1)[1])
                redis_back_at = c + rng.randint(1, 4)  # publishing goes on while Redis is down
            produce(broker, topic, chunk)
            if c in api_chunks:
                go.release()
            pace.wait(PACE_SECONDS)
        if chaos.redis_down:
            chaos.start_redis()
        for _ in armed_kills:  # still armed when the stream ended: fire now
            chaos.kill_worker()
        assert done.wait(180), "the API ingest thread did not finish"
        ingest.join(10)
        assert not api_errors, api_errors
        print("chaos faults: " + "; ".join(chaos.log))

        # -- catch up: the current checkpoint covers every message in the topic -----------------
        end = _end_offsets(broker, topic, int(env["RECSTREAM_TOPIC_PARTITIONS"]))
        try:
            wait_for(lambda: checkpoints.meta().get("offsets") == end, 120, f"the worker to checkpoint up to {end}")
        except AssertionError as exc:  # the worker's directory goes with the test: show its log here
            raise AssertionError(
                f"{exc}; checkpointed {checkpoints.meta().get('offsets')}\n"
                f"--- worker log ({chaos.worker.log_path}) ---\n{chaos.worker.log_tail(80)}"
            ) from exc

        # -- count -------------------------------------------------------------------------------
        learner = current_learner(env)
        assert learner is not None
        expected = Counter(e["item_id"] for e in ledger.valid.values() if e["type"] in POSITIVE)
        actual = popularity_counts(learner)
        items = set(expected) | set(actual)
        lost = sum(max(0, expected[i] - actual.get(i, 0)) for i in items)
        learned_twice = sum(max(0, actual.get(i, 0) - expected[i]) for i in items)

        rejected_sources = {
            (r["partition"], r["offset"]) for r in map(json.loads, _read_all(broker, env["RECSTREAM_TOPIC_REJECTED"]))
        }
        quarantined = [json.loads(v) for v in _read_all(broker, env["RECSTREAM_TOPIC_QUARANTINED"])]
        quarantined_ids = {q["event"]["event_id"] for q in quarantined}
        redis_client = redis_lib.Redis.from_url(redis_url)
        try:
            gate_counts = {
                k.decode(): int(v)
                for k, v in redis_client.hgetall(Keys(env["RECSTREAM_REDIS_PREFIX"]).gate_counts).items()
            }
        finally:
            redis_client.close()
        messages = sum(end.values())
        print(
            f"published={len(ledger.valid) + len(ledger.future)} messages={messages} "
            f"expected_learned={len(ledger.valid)} learned={learner.events_learned} "
            f"rejected={len(rejected_sources)} rejected_ingest={ledger.rejected_ingest} "
            f"quarantined={len(quarantined_ids)} duplicate={gate_counts.get('duplicate', 0)} "
            f"(sent {ledger.duplicates_sent} + {ledger.api_resends} API resends) "
            f"lost={lost} learned_twice={learned_twice} seed={seed} wall={time.monotonic() - started:.0f}s"
        )
        assert lost == 0 and learned_twice == 0, f"lost={lost} learned_twice={learned_twice} (seed {seed})"
        assert learner.events_learned == len(ledger.valid), (learner.events_learned, len(ledger.valid))
        shadow = challenger_learner(env, "popularity")
        assert shadow is not None, "the challenger's state is not in Redis"
        assert popularity_counts(shadow) == popularity_counts(learner)
        assert shadow.events_learned == len(ledger.valid), (shadow.events_learned, len(ledger.valid))
        assert len(rejected_sources) == ledger.invalid_direct
        assert quarantined_ids == ledger.future
        assert {q["reason"] for q in quarantined} == {"future_timestamp"}
        assert gate_counts.get("duplicate", 0) >= ledger.duplicates_sent

        # The API restarted and lived through both Redis restarts; it serves the latest version.
        latest = checkpoints.version()
        with httpx.Client(base_url=chaos.api.url, timeout=10) as client:
            wait_for(
                lambda: (
                    client.get("/readyz").json()
                    == {
                        "status": "ready",
                        "checks": {"redis": "ok", "broker": "ok", "model": f"v{latest}"},
                    }
                ),
                30,
                f"the API to serve v{latest}",
            )
    finally:
        done.set()
        checkpoints.close()

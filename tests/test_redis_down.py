"""Redis unreachable under a running API and worker.

The API keeps serving the model in memory (``/readyz`` 200 "degraded", recommendations 200 marked
``degraded``, leaving out the seen sets it held as of their last sync, ingest 202); the worker stops taking events
and retries with capped backoff; once Redis is back (AOF, same port and data) the worker learns every event exactly
once, the API picks up the new versions and its held sets catch up. Plus unit tests of the worker's backoff.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream import local_services, metrics
from store.model_store import CheckpointConflict, ModelStore
from stream.app import Backoff, retry_until_done
from stream.processor import PromotedMeanwhile
from tests.clock import iso
from tests.conftest import (
    COUNTABLE_GATE_ENV,
    Endpoint,
    current_learner,
    make_env,
    open_model_store,
    popularity_counts,
    start_stack,
    wait_for,
)
from tests.kafka_io import produce_events
from tests.transport import NothingLearnedStore, Transport

SAMPLE = re.compile(r"^(recstream_[a-z0-9_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN)$", re.MULTILINE)


def scrape(url: str) -> dict[str, float]:
    return {name + (labels or ""): float(value) for name, labels, value in SAMPLE.findall(httpx.get(url).text)}


def events(prefix: str, count: int) -> list[dict[str, Any]]:
    """Positive events (like/share, each counted once by popularity) and a few unlabelled views."""
    kinds = ("like", "share", "like", "view")
    return [
        {
            "event_id": f"{prefix}{n}",
            "user_id": f"u{n % 150}",
            "item_id": f"v{(n * 7) % 61}",
            "type": kinds[n % 4],
            "ts": iso(n * 0.1),
        }
        for n in range(count)
    ]


def positives_per_item(batch: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["item_id"] for e in batch if e["type"] in ("like", "share"))


# -- unit: the worker's backoff -----------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    now = [100.0]
    backoff = Backoff(first=0.5, cap=5.0, clock=lambda: now[0])
    assert not backoff.stalled and backoff.ready() and backoff.delay() == 0
    waits = [backoff.failed() for _ in range(7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.stalled and not backoff.ready() and backoff.delay() == 5.0
    now[0] += 5.0
    assert backoff.ready()
    now[0] += 2.0
    assert backoff.succeeded() == 7.0  # stalled since the first failure
    assert not backoff.stalled and backoff.failed() == 0.5


def test_retry_until_done_waits_between_attempts_and_reports_the_stall() -> None:
    attempts: list[int] = []
    failures_seen: list[int] = []

    async def flaky() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 4:
            raise ConnectionError("Redis is down")
        return "done"

    async def run() -> tuple[str, Backoff]:
        backoff = Backoff(first=0.01, cap=0.02)
        result = await retry_until_done(
            flaky, backoff, "checkpoint", "checkpoint", on_failure=lambda: failures_seen.append(len(attempts))
        )
        return result, backoff

    result, backoff = asyncio.run(run())
    assert result == "done" and len(attempts) == 4 and failures_seen == [1, 2, 3]
    assert not backoff.stalled and not backoff.retrying


def test_an_operators_promotion_during_a_write_is_retried_at_once_without_a_stall() -> None:
    """Not a failure: the checkpoint it refused is written again at once (adopting the version), and the worker is
    not reported stalled (recstream_worker_stalled, the ERROR line) nor backed off."""
    attempts: list[int] = []
    clock = [0.0]

    async def promoted_first() -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise PromotedMeanwhile("current model version is 3, this worker expected 9")
        return "done"

    async def run() -> tuple[str, Backoff]:
        backoff = Backoff(first=60.0, cap=60.0, clock=lambda: clock[0])  # a back-off would wait a minute
        return await retry_until_done(promoted_first, backoff, "checkpoint", "checkpoint"), backoff

    result, backoff = asyncio.run(asyncio.wait_for(run(), 10))
    assert result == "done" and len(attempts) == 2
    assert not backoff.stalled and backoff.failures == 0


def test_a_promotion_refusing_the_attempt_that_adopts_it_is_a_failure() -> None:
    """The attempt right after one refused by a promotion adopts it; refused again, something else is wrong: the
    usual retry with back-off (not a hot loop)."""
    attempts: list[int] = []

    async def promoted_twice() -> str:
        attempts.append(len(attempts))
        if len(attempts) <= 2:
            raise PromotedMeanwhile("current model version is 3, this worker expected 9")
        return "done"

    retries = metrics.WORKER_RETRIES.labels("checkpoint")
    before = retries._value.get()
    backoff = Backoff(first=0.01, cap=0.02)
    assert asyncio.run(asyncio.wait_for(retry_until_done(promoted_twice, backoff, "checkpoint", "checkpoint"), 10))
    assert len(attempts) == 3 and retries._value.get() - before == 1  # the second refusal counted and backed off


class RefusesTheWrite(NothingLearnedStore):
    """Answers as an empty Redis, but refuses the checkpoint's transaction (Redis reached, the write refused)."""

    async def checkpoint(self, *_args: Any, **_kwargs: Any) -> None:
        raise CheckpointConflict("current model version is 7, this worker expected None")


async def _failed_checkpoint(store: Any, unreachable: ModelStore | None = None) -> tuple[Any, Exception, int, int]:
    """A processor on ``store`` learns an event, then checkpoints (over ``unreachable`` instead, when given), which
    fails; the processor, the error, and how much the failed-checkpoint and worker Redis-error counters grew."""
    transport = Transport()
    processor = transport.processor(store)
    event = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}
    await processor.start()
    await processor.process(transport.records([event]))
    if unreachable is not None:
        processor.store = unreachable  # Redis gone between the learning and the checkpoint
    failed, errors = metrics.CHECKPOINTS.labels("failed"), metrics.REDIS_ERRORS.labels("worker")
    failed_before, errors_before = failed._value.get(), errors._value.get()
    with pytest.raises(Exception) as raised:
        await processor.checkpoint()
    return processor, raised.value, failed._value.get() - failed_before, errors._value.get() - errors_before


async def test_a_checkpoint_that_cannot_reach_redis_counts_as_failed_and_its_error_once(
    redis_endpoint: Endpoint,
) -> None:
    closed_port = f"redis://127.0.0.1:{local_services.free_port()}"
    async with open_model_store(redis_endpoint.url, b"k", "down") as store:
        client = aioredis.Redis.from_url(closed_port, socket_connect_timeout=2)
        try:
            unreachable = ModelStore(client, store.signer, store.keys)
            processor, raised, failed, errors = await _failed_checkpoint(store, unreachable)
        finally:
            await client.aclose()
    assert isinstance(raised, RedisConnectionError), repr(raised)  # what redis-py raises for a closed port
    assert (failed, errors) == (1, 1)
    before = metrics.REDIS_ERRORS.labels("worker")._value.get()
    metrics.count_redis_error("worker", raised)  # the same error seen again, by the retry it reaches
    assert metrics.REDIS_ERRORS.labels("worker")._value.get() == before
    assert processor.pending_records, "the learned event's record stays pending: the next checkpoint covers it"


async def test_a_refused_checkpoint_counts_as_failed_but_not_as_a_redis_error() -> None:
    _, raised, failed, errors = await _failed_checkpoint(RefusesTheWrite())
    assert isinstance(raised, CheckpointConflict), repr(raised)
    assert (failed, errors) == (1, 0)


def test_retry_until_done_lets_cancellation_through() -> None:
    async def run() -> asyncio.Future:
        async def down() -> None:
            raise ConnectionError("down")

        backoff, failed = Backoff(first=10, cap=10), asyncio.Event()
        task = asyncio.ensure_future(retry_until_done(down, backoff, "checkpoint", "checkpoint", on_failure=failed.set))
        # on_failure runs just before the backoff wait, and the task runs on to it without yielding:
        # by the time this wakes up, the task waits in its backoff.
        await asyncio.wait_for(failed.wait(), 10)
        assert backoff.stalled and backoff.delay() > 0 and not task.done()
        task.cancel()
        await asyncio.wait({task}, timeout=10)  # a deadline: it ends at once unless it swallowed the cancellation
        return task

    # Not asyncio.run: its shutdown would wait forever for a task that swallowed its cancellation.
    loop = asyncio.new_event_loop()
    try:
        task = loop.run_until_complete(run())
    finally:
        loop.close()
    assert task.cancelled(), "the retry loop did not let the cancellation through"


# -- integration -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(240)
def test_redis_down_api_degrades_worker_stalls_then_learns_everything(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService], tmp_path: Path
) -> None:
    redis_dir, redis_port = tmp_path / "redis", local_services.free_port()
    # AOF with fsync before every answer: a SIGKILL (or a host crash) loses no write Redis acknowledged.
    redis = local_services.start_redis(redis_dir, redis_port, appendonly=True, appendfsync="always")
    processes.append(redis)
    metrics_port = local_services.free_port()
    env = {
        **make_env(Endpoint(redis.url, "own redis"), broker_endpoint),
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_WORKER_METRICS_PORT": str(metrics_port),
    }
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    stack = start_stack(env, processes, client_timeout=15)
    worker, client, checkpoints = stack.worker, stack.client, stack.checkpoints
    try:
        before = events("a", 400)
        produce_events(broker, topic, before)
        wait_for(lambda: checkpoints.learned() == len(before), 90, f"the first events learned (log: {worker.log_path})")
        version = checkpoints.version()
        wait_for(
            lambda: client.get("/readyz").json()["checks"]["model"] == f"v{version}", 30, f"the API to serve v{version}"
        )
        assert client.get("/readyz").json()["status"] == "ready"
        seen_item = before[0]["item_id"]
        # A user served before the outage: this API process holds their seen set from then on.
        regular = before[1]["user_id"]
        seen_before = {e["item_id"] for e in before if e["user_id"] == regular}

        def recommended(user: str) -> dict[str, Any]:
            r = client.get(f"/v1/users/{user}/recommendations", params={"k": 100})  # k above the 61 items: all of them
            assert r.status_code == 200, r.text
            return r.json()

        served = recommended(regular)
        assert served["degraded"] is False and not seen_before & {i["item_id"] for i in served["items"]}

        # -- Redis goes away --
        redis.kill()

        def degraded() -> dict[str, Any] | None:
            r = client.get("/readyz")
            return r.json() if r.status_code == 200 and r.json()["status"] == "degraded" else None

        ready = wait_for(degraded, 20, "/readyz to say degraded")
        assert isinstance(ready, dict)
        assert ready["checks"] == {"redis": "unreachable", "broker": "ok", "model": f"v{version}"}
        r = client.get(f"/v1/users/{before[0]['user_id']}/recommendations", params={"k": 100})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True and body["model_version"] == version
        # Seen items are not excluded while Redis is down (the user's own item can come back).
        assert seen_item in {item["item_id"] for item in body["items"]}
        # A held set is still left out, as of its last sync: degraded too, once the model holder's refresh has failed.
        held = wait_for(lambda: (b := recommended(regular))["degraded"] and b, 20, "the held set's answer degraded")
        assert isinstance(held, dict) and held["model_version"] == version
        assert not seen_before & {item["item_id"] for item in held["items"]}
        assert client.post("/v1/scores", json={"user_id": "u1", "item_ids": ["v1"]}).status_code == 200

        # Ingest needs only Kafka: the rate limiter fails open.
        during = events("b", 300)
        for start in range(0, len(during), 100):
            r = client.post("/v1/events", json=during[start : start + 100])
            assert r.status_code == 202 and r.json()["accepted"] == 100, r.text
        # and the regular user likes an item new to them (its seen log entry is written once Redis is back)
        unseen = sorted({e["item_id"] for e in before} - seen_before)[0]
        new_like = {**during[0], "event_id": "b-new", "user_id": regular, "item_id": unseen, "type": "like"}
        r = client.post("/v1/events", json=[new_like])
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
        during.append(new_like)

        # The worker stops taking events: it is stalled, retrying, and consumes nothing meanwhile.
        stalled = wait_for(
            lambda: (m := scrape(worker_metrics)).get("recstream_worker_stalled") == 1 and m,
            30,
            f"the worker to stall (log: {worker.log_path})",
        )
        assert isinstance(stalled, dict)

        def retries(sample: dict[str, float]) -> float:
            return sum(v for k, v in sample.items() if k.startswith("recstream_worker_retries_total"))

        consumed = stalled.get("recstream_events_consumed_total", 0.0)
        after_two_more = wait_for(
            lambda: retries(m := scrape(worker_metrics)) >= retries(stalled) + 2 and m,
            30,
            "two more retries while Redis is down",
        )
        assert isinstance(after_two_more, dict)
        assert after_two_more["recstream_events_consumed_total"] == consumed, "the worker kept consuming"

        def redis_errors(sample: dict[str, float]) -> float:
            return sample.get('recstream_redis_errors_total{component="worker"}', 0.0)

        # each failed attempt counts as a failed Redis operation (the runbook's "Redis unreachable" watches it)
        assert redis_errors(stalled) >= 1, stalled
        assert redis_errors(after_two_more) >= redis_errors(stalled) + 2, (stalled, after_two_more)
        assert after_two_more["recstream_worker_stalled"] == 1
        wait_for(
            lambda: sum(v for k, v in scrape(worker_metrics).items() if k.startswith("recstream_consumer_lag")) > 0,
            30,
            "the consumer lag to show the waiting events",
        )
        log_text = worker.log_path.read_text() if worker.log_path else ""
        assert "the worker takes no new events until it succeeds" in log_text
        assert client.get("/healthz").status_code == 200

        # -- Redis comes back on the same port and data --
        restarted = local_services.start_redis(redis_dir, redis_port, appendonly=True, appendfsync="always")
        processes.append(restarted)
        after = events("c", 200)
        produce_events(broker, topic, after)
        published = before + during + after
        wait_for(
            lambda: checkpoints.learned() == len(published),
            90,
            f"the worker to learn all {len(published)} events after Redis returned (log: {worker.log_path})",
        )
        wait_for(lambda: scrape(worker_metrics).get("recstream_worker_stalled") == 0, 10, "the stall to end")
        assert "stalled: consuming again" in (worker.log_path.read_text() if worker.log_path else "")

        # The API picks up versions written after Redis returned, and is fully ready again.
        latest = checkpoints.version()
        assert latest is not None and version is not None and latest > version

        def caught_up() -> bool:
            r = client.get("/readyz")
            return (
                r.status_code == 200 and r.json()["status"] == "ready" and r.json()["checks"]["model"] == f"v{latest}"
            )

        wait_for(caught_up, 30, f"the API to serve v{latest} and be ready")
        r = client.get(f"/v1/users/{before[0]['user_id']}/recommendations", params={"k": 100})
        assert r.status_code == 200 and r.json()["degraded"] is False
        assert seen_item not in {item["item_id"] for item in r.json()["items"]}
        # The held set caught up with what the user saw during the outage and after (the worker learned it since).
        seen_since = {e["item_id"] for e in during + after if e["user_id"] == regular}
        assert unseen in seen_since - seen_before
        caught = recommended(regular)
        assert caught["degraded"] is False
        assert not (seen_before | seen_since) & {item["item_id"] for item in caught["items"]}

        # Exactly once: per-item positive counts in the final model equal what was published.
        learner = current_learner(env)
        assert learner is not None and learner.events_learned == len(published)
        assert popularity_counts(learner) == dict(positives_per_item(published))
    finally:
        stack.close()

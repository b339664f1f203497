"""A snapshot whose HMAC does not verify is never loaded: not by the worker, not by the API."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from recstream import local_services
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from tests.clock import iso
from tests.conftest import api_client, metric_value, stop_gracefully, wait_for
from tests.kafka_io import CheckpointReader, produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REFUSED = "recstream_snapshots_refused_total"


def _events(prefix: str, n: int) -> list[dict]:
    return [
        {
            "event_id": f"{prefix}{i}",
            "user_id": f"u{i % 5}",
            "item_id": f"v{i % 11}",
            "type": "like",
            "ts": iso(i),
        }
        for i in range(n)
    ]


def test_tampered_snapshot_is_refused_by_worker_and_api(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    env = {**service_env, "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port())}
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    r = redis.Redis.from_url(env["RECSTREAM_REDIS_URL"])
    keys = Keys(env["RECSTREAM_REDIS_PREFIX"])
    try:
        worker = local_services.start_worker(env)
        processes.append(worker)
        api = local_services.start_api(env)
        processes.append(api)
        client = api_client(api)

        produce_events(broker, topic, _events("a", 50))
        wait_for(lambda: checkpoints.learned() == 50, 60, "the first 50 events to be learned")
        good = checkpoints.version()
        wait_for(
            lambda: client.get("/v1/users/u1/recommendations").json().get("model_version") == good,
            10,
            "the API to load the good version",
        )
        # Both export the refusal counter at 0 before any refusal: the first one is then an increase that an alert
        # sees (increase() over a series that starts at 1 is 0)
        assert f'{REFUSED}{{component="api"}} 0.0' in client.get("/metrics").text
        metrics_url = f"http://127.0.0.1:{env['RECSTREAM_WORKER_METRICS_PORT']}/metrics"
        assert f'{REFUSED}{{component="worker"}} 0.0' in httpx.get(metrics_url).text
        stop_gracefully(worker)
        good = checkpoints.version()
        assert good is not None

        # An attacker with Redis access writes a new version: a changed blob under the old tag.
        fields = r.hgetall(keys.version(good))
        blob = bytearray(fields[b"blob"])
        blob[-1] ^= 0xFF
        forged = good + 1
        r.hset(keys.version(forged), mapping={"blob": bytes(blob), "tag": fields[b"tag"], "meta": fields[b"meta"]})
        r.set(keys.current_version, forged)
        r.publish(keys.announce_channel, str(forged))

        # The API refuses it, says so in its metrics, and keeps serving the last good model.
        wait_for(
            lambda: metric_value(client.get("/metrics").text, REFUSED, 'component="api"') >= 1,
            10,
            "the API to refuse the forged version",
        )
        served = client.get("/v1/users/u1/recommendations").json()
        assert served["model_version"] == good
        assert metric_value(client.get("/metrics").text, "recstream_current_version_refused", 'component="api"') == 1

        # A restarted worker refuses it too: it logs why, counts it, and does not consume.
        restarted = local_services.start_worker(env)
        processes.append(restarted)
        wait_for(
            lambda: metric_value(httpx.get(metrics_url).text, REFUSED, 'component="worker"') >= 1,
            60,
            "the worker to refuse the forged version",
        )
        worker_page = httpx.get(metrics_url).text  # (the gauges are set before the count)
        assert metric_value(worker_page, "recstream_worker_stalled") == 1  # (it consumes nothing)
        assert metric_value(worker_page, "recstream_current_version_refused", 'component="worker"') == 1
        assert restarted.log_path is not None
        log_text = restarted.log_path.read_text()
        assert f"model snapshot v{forged} failed HMAC authentication and was refused" in log_text
        produce_events(broker, topic, _events("b", 10))
        # It does not learn or overwrite: the forged version stays current and nothing new is written
        # (checked after the worker has had several checkpoint intervals to misbehave).
        wait_for(
            lambda: log_text.count("failed HMAC") < restarted.log_path.read_text().count("failed HMAC"),
            20,
            "a second refusal (retry)",
        )
        assert checkpoints.version() == forged
        assert json.loads(r.hget(keys.version(forged), "meta"))["events_learned"] == 50
        assert r.hget(keys.version(forged), "blob") == bytes(blob)
        # An operator points current back at the good version, which the API still serves: the gauge says 0 again
        r.set(keys.current_version, good)
        r.publish(keys.announce_channel, str(good))
        wait_for(
            lambda: (
                metric_value(client.get("/metrics").text, "recstream_current_version_refused", 'component="api"') == 0
            ),
            10,
            "the API to stop reporting the current version refused",
        )
    finally:
        checkpoints.close()
        r.close()


def test_a_signed_snapshot_the_api_cannot_decode_is_counted_refused(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    # authenticated, but not a snapshot this release reads (a newer release's format, say): the API keeps serving
    # what it has, logs why, and counts it, so RecstreamSnapshotRefused pages (before, only the log said so)
    env = service_env
    api = local_services.start_api(env)
    processes.append(api)

    async def write() -> int | None:
        client = aioredis.Redis.from_url(env["RECSTREAM_REDIS_URL"])
        try:
            store = ModelStore(
                client, SnapshotSigner(env["RECSTREAM_HMAC_KEY"].encode()), Keys(env["RECSTREAM_REDIS_PREFIX"])
            )
            await store.checkpoint(None, b"RSNAP9 not a format this release reads", {}, {}, {})
            return await store.current_version()
        finally:
            await client.aclose()

    version = asyncio.run(write())
    with api_client(api) as client:
        wait_for(
            lambda: metric_value(client.get("/metrics").text, REFUSED, 'component="api"') >= 1,
            15,
            "the API to count the version it cannot load",
        )
        assert api.log_path is not None and f"model v{version} cannot be loaded" in api.log_path.read_text()
        # counted before any scrape could see 0 (the API loads at its start): the gauge says it while it lasts
        page = client.get("/metrics").text
        assert metric_value(page, "recstream_current_version_refused", 'component="api"') == 1
        served = client.get("/v1/users/u1/recommendations")  # (nothing to serve yet: the version is not loaded)
        assert served.status_code == 503, served.text

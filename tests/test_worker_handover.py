"""Two workers on one prefix (a rolling deploy): the second waits as a standby and takes over when the first stops.

Real broker, real Redis, real worker processes. The writer lease (store/writer_lease.py) lets one of them write; the
other has not joined the consumer group yet, so the first keeps every partition and nothing is learned twice.
"""

from __future__ import annotations

import os

import httpx
import pytest
import redis

from recstream import local_services
from store.keys import Keys
from tests.clock import iso
from tests.conftest import COUNTABLE_GATE_ENV, metric_value, run_cli, stop_gracefully, wait_for
from tests.kafka_io import CheckpointReader, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BATCH = 800


def _events(start: int, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(start, start + count):
        user, item = f"u{n % 53}", f"v{(n * 7) % 131}"
        value = (
            f'{{"event_id":"h{n}","user_id":"{user}","item_id":"{item}","type":"{("view", "like")[n % 2]}",'
            f'"ts":"{iso(n * 0.5)}","watch_seconds":{n % 30},"item_duration_seconds":30}}'
        )
        out.append((user.encode(), value.encode()))
    return out


def _log(service: local_services.LocalService) -> str:
    assert service.log_path is not None
    return service.log_path.read_text()


def _learned_in_memory(worker: local_services.LocalService) -> int:
    """The worker's ``recstream_events_learned_total``: learned, checkpointed or not."""
    return int(metric_value(httpx.get(worker.url, timeout=5).text, "recstream_events_learned_total"))


# Checkpoints only when asked (at a stop) or every 15 s: a stop finds learned events not checkpointed yet (the
# third batch below is learned and looked at well within the 15 s after the checkpoint of the second, however slow
# the machine).
SPARSE_CHECKPOINTS = {
    "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "1000000",
    "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "15",
    "RECSTREAM_CHECKPOINT_IDLE_SECONDS": "0",
}


def test_a_second_worker_waits_then_takes_over_learning_every_event_once(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    # A lease far longer than the wait for the takeover below: the first worker must give it back as it stops.
    env = {**service_env, **COUNTABLE_GATE_ENV, **SPARSE_CHECKPOINTS, "RECSTREAM_WORKER_LEASE_SECONDS": "120"}
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    try:
        first = local_services.start_worker({**env, "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port())})
        processes.append(first)
        produce(broker, topic, _events(0, BATCH))
        wait_for(lambda: checkpoints.learned() == BATCH, 90, f"the first worker to learn (log: {first.log_path})")
        first_writer = checkpoints.meta()["writer"]

        second = local_services.start_worker(env)
        processes.append(second)
        wait_for(lambda: "waits as a standby" in _log(second), 60, f"the second worker to wait ({second.log_path})")
        assert first_writer in _log(second)  # it names the worker it waits for
        # A standby stopped while it waits exits at once and cleanly (it holds nothing).
        third = local_services.start_worker(env)
        processes.append(third)
        wait_for(lambda: "waits as a standby" in _log(third), 60, f"a third worker to wait ({third.log_path})")
        stop_gracefully(third, timeout=10)
        assert third.process.returncode == 0 and "stopped while waiting for the writer lease" in _log(third)
        status = run_cli("status", env={**os.environ, **env})
        assert status.returncode == 0, status.stderr
        assert f"writer     {first_writer} (its lease runs" in status.stdout, status.stdout
        produce(broker, topic, _events(BATCH, BATCH))  # while both run, the first learns these
        wait_for(lambda: checkpoints.learned() == 2 * BATCH, 90, "the first worker to learn the second batch")
        assert checkpoints.meta()["writer"] == first_writer
        assert "writer lease taken" not in _log(second)

        # The first stops with events learned that no checkpoint holds yet: its final checkpoint writes them before it
        # gives the lease back, and the second starts from there.
        produce(broker, topic, _events(2 * BATCH, BATCH))
        wait_for(lambda: _learned_in_memory(first) == 3 * BATCH, 60, "the first worker to learn the third batch")
        before_stop = checkpoints.meta()
        assert before_stop["events_learned"] < 3 * BATCH, "checkpointed before the stop: nothing was pending"
        stop_gracefully(first)
        assert first.process.returncode == 0, first.log_tail()
        assert "writer lease released" in _log(first)
        assert checkpoints.meta()["events_learned"] == 3 * BATCH
        wait_for(lambda: "writer lease taken" in _log(second), 30, f"the second to take over ({second.log_path})")
        produce(broker, topic, _events(3 * BATCH, BATCH))
        wait_for(lambda: checkpoints.learned() >= 4 * BATCH, 90, f"the second worker to learn ({second.log_path})")
        assert checkpoints.meta()["writer"] not in ("", first_writer)
        stop_gracefully(second)
        final = checkpoints.meta()
        assert final["events_learned"] == 4 * BATCH, final  # each event once: none lost, none learned twice
        assert sum(final["offsets"].values()) == 4 * BATCH, final["offsets"]
        assert "written by another worker" not in _log(first) + _log(second)
    finally:
        checkpoints.close()


def test_a_worker_whose_lease_was_taken_stops_without_writing(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    # no checkpoint but the one at a stop: the worker holds learned events when it loses the lease
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        **SPARSE_CHECKPOINTS,
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "600",
        "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port()),
    }
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    keys = Keys(env["RECSTREAM_REDIS_PREFIX"])
    client = redis.Redis.from_url(env["RECSTREAM_REDIS_URL"])
    try:
        worker = local_services.start_worker(env)
        processes.append(worker)
        produce(broker, topic, _events(0, BATCH))
        wait_for(lambda: _learned_in_memory(worker) == BATCH, 90, f"the worker to learn (log: {worker.log_path})")
        assert client.get(keys.current_version) is None  # nothing checkpointed yet
        # Another worker took the lease over (as one would once this one had been frozen past the lease time).
        client.incr(keys.writer_epoch)
        client.set(keys.writer_lease, "other-worker:1:abc", px=60_000)
        assert worker.process.wait(60) == 1, worker.log_tail()
        log = _log(worker)
        assert "worker other-worker:1:abc took over the writer lease" in log
        # Its final checkpoint wrote nothing: no version, no offsets, no learned ids, no seen sets.
        assert client.get(keys.current_version) is None
        assert client.hgetall(keys.offsets) == {}
        assert client.keys(f"{keys.prefix}:dedupe:*") == [] and client.keys(f"{keys.prefix}:seen:*") == []
        assert client.get(keys.writer_lease) == b"other-worker:1:abc"  # and it did not release another's lease
    finally:
        client.close()

"""A backlog of batch messages (the worker restarted while the app kept publishing): the worker takes it in
large batches, but works through each in slices and checkpoints between them, so versions keep coming during
the catch-up instead of one per take (and makes delta versions whole in the background meanwhile). Real broker,
real Redis, the real worker process."""

from __future__ import annotations

import json

import httpx
import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import COUNTABLE_GATE_ENV, create_topics, wait_for
from tests.kafka_io import CheckpointReader, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MESSAGES = 40
EVENTS_PER_MESSAGE = 500  # ~58 kB a message


def _backlog() -> list[tuple[bytes | None, bytes]]:
    messages = []
    for m in range(MESSAGES):
        batch = [
            {
                "event_id": f"e{n}",
                "user_id": f"u{n % 700}",
                "item_id": f"v{n * 7 % 900}",
                "type": "like",
                "ts": iso(n / 10),
            }
            for n in range(m * EVENTS_PER_MESSAGE, (m + 1) * EVENTS_PER_MESSAGE)
        ]
        messages.append((None, json.dumps(batch).encode()))
    return messages


@pytest.mark.parametrize("factor", [1, 4])
def test_a_backlog_taken_at_once_is_checkpointed_slice_by_slice(
    factor: int,
    service_env: dict[str, str],
    processes: list[local_services.LocalService],
    checkpoints: CheckpointReader,
) -> None:
    """Each slice of the take is checkpointed (factor 1, the default). With RECSTREAM_CHECKPOINT_CATCH_UP_FACTOR at 4,
    the slices of the take still to process count as waiting: the worker is behind while more than 200 events of
    them are left, and checkpoints every 800 events."""
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_BATCH_SLICE_BYTES": "32768",  # each ~58 kB message is a slice of its own
        "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "200",  # so a checkpoint is due after every slice
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "30",  # and not because time passed between takes
        "RECSTREAM_CHECKPOINT_CATCH_UP_FACTOR": str(factor),
        "RECSTREAM_MODEL_RETENTION": "1000",  # every version stays, to read what each one covered
    }
    create_topics(env)
    backlog = _backlog()
    produce(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], backlog)  # before the worker starts
    worker = local_services.start_worker(env)
    processes.append(worker)
    total = MESSAGES * EVENTS_PER_MESSAGE
    wait_for(lambda: checkpoints.learned() == total, 120, f"the worker to learn the backlog (log: {worker.log_path})")

    keys, redis = checkpoints.keys, checkpoints.redis
    versions = [int(v) for v in redis.zrange(keys.versions, 0, -1)]
    learned = sorted(json.loads(redis.hget(keys.version(v), "meta"))["events_learned"] for v in versions)
    steps = [b - a for a, b in zip([0, *learned], learned, strict=False)]
    if factor == 1:
        # A slice is one message, and a checkpoint is due after each unless its time budget defers it a little.
        # (Measured: 40 versions of 500 events; without the slices, one version of all 20,000: the backlog was one
        # take.)
        assert max(steps) <= 4 * EVENTS_PER_MESSAGE, steps
    else:
        # Every other slice (800 events or more learned) (measured: 20 versions of 1,000 events).
        assert len(steps) <= 24 and max(steps) <= 8 * EVENTS_PER_MESSAGE, steps
    # Meanwhile the worker made delta versions whole in the background (from a thread, over its bulk client):
    # their metadata says which version each delta was made against (measured: 19 of the 40).
    metas = [json.loads(redis.hget(keys.version(v), "meta")) for v in versions]
    assert any("consolidated_from" in meta for meta in metas), metas


def test_a_backlog_of_one_event_messages_past_the_stream_buffer_is_learned_once(
    service_env: dict[str, str], processes: list[local_services.LocalService], checkpoints: CheckpointReader
) -> None:
    """8,000 one-event messages, about twice the stream's buffer (4,096 messages): the worker's consumer holds its
    deliveries while the buffer is under pressure and resumes them once it has drained (stream.kafka_consumer), so
    the backlog is learned whole, each event once, without stalling. Each message reaches the stream alone (no
    bundles): so they fill the buffer, as large messages do with bundles on."""
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port()),
        "RECSTREAM_STREAM_BUNDLE_BYTES": "0",
    }
    create_topics(env)
    total = 8_000
    events = [
        {"event_id": f"o{n}", "user_id": f"u{n % 300}", "item_id": f"v{n * 7 % 900}", "type": "like", "ts": iso(n / 10)}
        for n in range(total)
    ]
    backlog = [(e["user_id"].encode(), json.dumps(e).encode()) for e in events]
    produce(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], backlog)  # before the worker starts
    worker = local_services.start_worker(env)
    processes.append(worker)
    wait_for(lambda: checkpoints.learned() == total, 90, f"the worker to learn the backlog (log: {worker.log_path})")
    assert checkpoints.learned() == total
    metrics = httpx.get(f"http://127.0.0.1:{env['RECSTREAM_WORKER_METRICS_PORT']}/metrics").text
    name = "recstream_stream_buffer_waits_total "
    waits = [float(line[len(name) :]) for line in metrics.splitlines() if line.startswith(name)]
    assert waits and waits[0] >= 1  # the buffer was under pressure, and the consumer waited for it to drain


@pytest.mark.parametrize("factor", [4, 1])
def test_a_worker_behind_checkpoints_less_often_until_it_caught_up(
    factor: int,
    service_env: dict[str, str],
    processes: list[local_services.LocalService],
    checkpoints: CheckpointReader,
) -> None:
    """400 messages of 50 events waiting when the worker starts, taken two at a time. While more than
    RECSTREAM_CHECKPOINT_EVERY_EVENTS (500) events wait to be learned, checkpoints are the catch-up factor's times
    further apart (at 4, a version every ~2,000 events instead of every 500); near the end, and once caught up, as
    often as before. With the factor 1 (off, the default), a version every ~500 events throughout."""
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_WORKER_METRICS_PORT": str(local_services.free_port()),
        "RECSTREAM_STREAM_BUNDLE_BYTES": "0",  # a take is two messages, not two bundles of them
        "RECSTREAM_BATCH_MAX_EVENTS": "2",
        "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "500",
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "30",  # checkpoints by count only
        "RECSTREAM_CHECKPOINT_CATCH_UP_FACTOR": str(factor),
        "RECSTREAM_MODEL_RETENTION": "1000",  # every version stays, to count them
    }
    create_topics(env)
    total, per_message = 20_000, 50
    events = [
        {"event_id": f"c{n}", "user_id": f"u{n % 700}", "item_id": f"v{n * 7 % 900}", "type": "like", "ts": iso(n / 10)}
        for n in range(total)
    ]
    backlog = [(None, json.dumps(events[m : m + per_message]).encode()) for m in range(0, total, per_message)]
    produce(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], backlog)  # before the worker starts
    worker = local_services.start_worker(env)
    processes.append(worker)
    wait_for(lambda: checkpoints.learned() == total, 120, f"the worker to learn the backlog (log: {worker.log_path})")

    versions = checkpoints.redis.zcard(checkpoints.keys.versions)
    if factor > 1:  # ~10 of ~2,000 events while behind, then a few of ~500 (quiet checkpoints may add one or two)
        assert versions <= 16, versions
    else:  # ~40 of ~500 events (fewer if a checkpoint's time budget defers one)
        assert versions >= 28, versions
    metrics = httpx.get(f"http://127.0.0.1:{env['RECSTREAM_WORKER_METRICS_PORT']}/metrics").text
    assert "recstream_worker_catching_up 0.0" in metrics.splitlines()  # caught up

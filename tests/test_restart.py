"""Stopping the worker mid-stream loses nothing and learns nothing twice (SIGTERM and SIGKILL)."""

from __future__ import annotations

import signal
import threading

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import stop_gracefully, wait_for
from tests.kafka_io import CheckpointReader, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOTAL = 6000
CHUNKS = 60


def _events(start: int, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(start, start + count):
        user, item = f"u{n % 97}", f"v{(n * 7) % 211}"
        kind = ("view", "like", "skip", "share")[n % 4]
        value = (
            f'{{"event_id":"r{n}","user_id":"{user}","item_id":"{item}","type":"{kind}",'
            f'"ts":"{iso(n * 0.5)}","watch_seconds":{n % 30},"item_duration_seconds":30}}'
        )
        out.append((user.encode(), value.encode()))
    return out


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_mid_stream_learns_every_event_exactly_once(
    stop_signal: signal.Signals, service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    # Checkpoints every 2 s, so at the stop there is learned-but-not-checkpointed work, and Kafka's
    # own offset commits (every 2.8 s in Faust) would run ahead of the checkpoint if we let them.
    env = {
        **service_env,
        "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "1000000",
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "2",
        "RECSTREAM_BATCH_MAX_EVENTS": "100",
        "RECSTREAM_CHECKPOINT_IDLE_SECONDS": "0",  # the stream is paced: no checkpoint in its pauses either
    }
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    first_chunk, first_checkpoint = threading.Event(), threading.Event()
    try:
        worker = local_services.start_worker(env)
        processes.append(worker)
        chunk = TOTAL // CHUNKS
        published = threading.Event()

        def publish_stream() -> None:
            for c in range(CHUNKS):
                if c == CHUNKS // 3:  # the rest (>= 6 s of pacing) only once the worker runs: the stop lands mid-stream
                    first_checkpoint.wait(120)
                produce(broker, topic, _events(c * chunk, chunk))
                if c == 0:
                    first_chunk.set()
                published.wait(0.15)  # pace the stream so the stop lands in the middle of it
            published.set()

        publisher = threading.Thread(target=publish_stream, daemon=True)
        publisher.start()
        first_chunk.wait(30)
        # Stop it while the stream is still flowing: some events are checkpointed, some are not.
        wait_for(lambda: 0 < checkpoints.learned(), 90, f"a first checkpoint (log: {worker.log_path})")
        first_checkpoint.set()
        first = checkpoints.version()
        wait_for(lambda: (checkpoints.version() or 0) > (first or 0), 30, "a second checkpoint")
        published.wait(1.0)  # stop between two checkpoints, a second after the last one
        at_stop = checkpoints.meta()  # one read: the current version and what it had learned
        # read as the stop is sent: a graceful stop's own checkpoint may outlast the rest of the stream
        mid_stream = not published.is_set()
        if stop_signal == signal.SIGKILL:
            worker.kill()
        else:
            stop_gracefully(worker)
            # A graceful stop checkpoints what it learned since the last checkpoint before exiting:
            # a newer version with more events (the worker writes no checkpoint when nothing is new).
            final = checkpoints.meta()
            assert final["version"] > at_stop["version"], (at_stop, final)
            assert final["events_learned"] > at_stop["events_learned"], (at_stop, final)
        assert mid_stream, "the stream ended before the stop: the test did not stop the worker mid-stream"
        restarted = local_services.start_worker(env)
        processes.append(restarted)
        publisher.join(60)
        assert published.is_set()
        wait_for(
            lambda: checkpoints.learned() >= TOTAL,
            120,
            f"the restarted worker to reach {TOTAL} (log: {restarted.log_path})",
        )
        # Stop gracefully and read the final count: it must be exact, not just "at least".
        stop_gracefully(restarted)
        assert checkpoints.learned() == TOTAL
        assert checkpoints.meta()["events_rejected"] == 0
        # The checkpoint's offsets cover every message published.
        offsets = checkpoints.meta()["offsets"]
        assert sum(offsets.values()) == TOTAL, offsets
        assert read_topic(broker, topic, TOTAL, timeout=10).__len__() == TOTAL
    finally:
        first_checkpoint.set()  # (a publisher still waiting goes on and ends)
        checkpoints.close()

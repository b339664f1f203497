"""A burst's last events are checkpointed once the stream goes quiet (``RECSTREAM_CHECKPOINT_IDLE_SECONDS``), not
after the rest of the checkpoint interval: a lone event, or the end of a burst, is served at once. Real broker, real
Redis, the real worker process."""

from __future__ import annotations

import json

import pytest

from recstream import local_services
from tests.clock import iso
from tests.conftest import COUNTABLE_GATE_ENV, create_topics, wait_for
from tests.kafka_io import CheckpointReader, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL_SECONDS = 120  # longer than any wait below: only the quiet rule can checkpoint


def _burst(start: int, n: int) -> list[tuple[bytes | None, bytes]]:
    batch = [
        {"event_id": f"q{k}", "user_id": f"u{k % 7}", "item_id": f"v{k % 11}", "type": "like", "ts": iso(k)}
        for k in range(start, start + n)
    ]
    return [(None, json.dumps(batch).encode())]


def test_the_end_of_a_burst_is_checkpointed_once_the_stream_is_quiet(
    service_env: dict[str, str], processes: list[local_services.LocalService], checkpoints: CheckpointReader
) -> None:
    env = {
        **service_env,
        **COUNTABLE_GATE_ENV,
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": str(INTERVAL_SECONDS),
        "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "1000000",
        "RECSTREAM_CHECKPOINT_IDLE_SECONDS": "0.1",
    }
    create_topics(env)
    worker = local_services.start_worker(env)
    processes.append(worker)
    broker, topic = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"]
    learned = 0
    for burst in range(3):
        before = checkpoints.version() or 0
        produce(broker, topic, _burst(learned, 40))
        learned += 40
        wait_for(
            lambda n=learned: checkpoints.learned() == n,
            INTERVAL_SECONDS / 4,
            f"burst {burst} checkpointed before the interval (log: {worker.log_path})",
        )
        # one version for the burst: the stream stayed quiet afterwards, and a quiet spell is saved once
        assert checkpoints.version() == before + 1

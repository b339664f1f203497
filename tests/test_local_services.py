"""Tests for recstream.local_services: real processes, no mocks."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstream import local_services as ls
from tests.conftest import skip_unless_ci

pytestmark = pytest.mark.timeout(180)

KAFKA_SKIP_REASON = (
    f"Kafka jars not fetched (run scripts/fetch-kafka.sh) or java missing; looked in {ls.kafka_libs_dir()}"
)


def _assert_gone(service: ls.LocalService) -> None:
    """Assert the process was reaped and nothing is left in its process group."""
    assert service.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(service.pid, 0)


@pytest.fixture
def cleanup() -> Iterator[list[ls.LocalService]]:
    """Collect started services; stop them all whatever the test outcome."""
    services: list[ls.LocalService] = []
    yield services
    for service in services:
        service.stop()


def test_free_port_is_bindable() -> None:
    port = ls.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """A port the kernel may hand out on its own (the ephemeral range: the local end of an outgoing connection, a
    bind to port 0) could be taken between free_port and its user's bind; free_port picks below that range, and
    never the same port twice in a process."""
    ports = [ls.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low = ls._ephemeral_low()
    if low is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here: free_port binds to port 0")
    assert all(ls._PORTS_FROM <= port < low for port in ports)


def test_redis_starts_answers_ping_and_stops(cleanup: list[ls.LocalService]) -> None:
    redis = ls.start_redis()
    cleanup.append(redis)
    assert redis.name == "redis"
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert ls.redis_ping(redis.host, redis.port)
    workdir = redis.workdir
    assert workdir.is_dir()

    redis.stop()
    _assert_gone(redis)
    assert not workdir.exists(), "temporary workdir should be removed"
    with pytest.raises(OSError):
        socket.create_connection((redis.host, redis.port), timeout=1).close()
    redis.stop()  # idempotent
    redis.kill()  # idempotent, harmless after stop


def test_redis_password_and_aof_survive_crash(tmp_path: Path, cleanup: list[ls.LocalService]) -> None:
    redis_py = pytest.importorskip("redis")
    first = ls.start_redis(tmp_path, appendonly=True, password='s3 "cret\\')  # (quoted in its config file)
    cleanup.append(first)
    assert not ls.redis_ping(first.host, first.port)  # AUTH required
    assert ls.redis_ping(first.host, first.port, password='s3 "cret\\')
    # the password is in an owner-only config file, not on the command line (any local user can read that)
    assert "cret" not in Path(f"/proc/{first.pid}/cmdline").read_bytes().decode()
    assert (tmp_path / "redis.conf").stat().st_mode & 0o777 == 0o600
    first.kill()
    _assert_gone(first)
    first = ls.start_redis(tmp_path, appendonly=True, password="s3cret")
    cleanup.append(first)
    client = redis_py.Redis.from_url(first.url, password="s3cret")
    client.set("k", "v")
    client.close()

    first.kill()
    _assert_gone(first)
    assert tmp_path.is_dir(), "kill() keeps the workdir for a restart"

    second = ls.start_redis(tmp_path, appendonly=True, password="s3cret")
    cleanup.append(second)
    client = redis_py.Redis.from_url(second.url, password="s3cret")
    assert client.get("k") == b"v"
    client.close()
    second.stop()
    _assert_gone(second)
    assert tmp_path.is_dir(), "a caller-supplied workdir is never removed"


def test_kill_then_stop_removes_temp_workdir(cleanup: list[ls.LocalService]) -> None:
    redis = ls.start_redis()
    cleanup.append(redis)
    assert redis.exit_status() == "running"
    redis.kill()
    _assert_gone(redis)
    assert redis.exit_status() == "killed by SIGKILL"  # what `recstream up` says when a service ends
    assert redis.workdir.is_dir()
    redis.stop()
    assert not redis.workdir.exists()


def test_start_failure_raises_with_log_tail() -> None:
    with socket.socket() as busy:  # bound, not listening: redis-server cannot bind
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"exited \(exit code [1-9]\d*\) before it was ready; log tail"):
            ls.start_redis(port=port, timeout=10)


def test_kafka_without_jars_names_the_fetch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_KAFKA_HOME", str(tmp_path / "nowhere"))
    assert ls.kafka_libs_dir() == tmp_path / "nowhere" / "libs"
    assert not ls.java_kafka_available()
    with pytest.raises(RuntimeError, match=r"scripts/fetch-kafka\.sh"):
        ls.start_kafka()


def test_start_broker_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown broker"):
        ls.start_broker("zookeeper")


async def _roundtrip(bootstrap: str) -> tuple[bytes, bytes]:
    """Produce one message with aiokafka and read it back through a consumer group."""
    aiokafka = pytest.importorskip("aiokafka")
    topic = f"t-{uuid.uuid4().hex[:8]}"
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    return msg.key, msg.value


@pytest.mark.parametrize(
    "kind",
    [
        "kafka",
        "tansu",
    ],
)
def test_broker_roundtrip(kind: str, cleanup: list[ls.LocalService]) -> None:
    if kind == "kafka" and not ls.java_kafka_available():
        skip_unless_ci(KAFKA_SKIP_REASON)
    started = time.monotonic()
    broker = ls.start_broker(kind)
    cleanup.append(broker)
    ready_s = time.monotonic() - started
    assert broker.name == kind
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    assert ls.kafka_ready(broker.host, broker.port)

    assert asyncio.run(_roundtrip(broker.address)) == (b"k", b"hello")

    broker.stop()
    _assert_gone(broker)
    assert not broker.workdir.exists()
    broker.stop()  # idempotent
    print(f"{kind}: ready in {ready_s:.2f}s")


def test_kafka_restart_keeps_data(tmp_path: Path, cleanup: list[ls.LocalService]) -> None:
    """A broker restarted on the same workdir (new ports) still has its messages."""
    if not ls.java_kafka_available():
        skip_unless_ci(KAFKA_SKIP_REASON)
    aiokafka = pytest.importorskip("aiokafka")

    async def produce(bootstrap: str) -> None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("durable", b"kept", partition=0)
        finally:
            await producer.stop()

    async def read_first(bootstrap: str) -> bytes:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition("durable", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            msg = await asyncio.wait_for(consumer.getone(), timeout=60)
        finally:
            await consumer.stop()
        return msg.value

    first = ls.start_kafka(tmp_path)
    cleanup.append(first)
    asyncio.run(produce(first.address))
    first.stop()
    _assert_gone(first)

    second = ls.start_kafka(tmp_path)
    cleanup.append(second)
    assert asyncio.run(read_first(second.address)) == b"kept"

"""One fixture layer that gives integration tests a real broker and a real Redis.

Order (TESTING.md): ``RECSTREAM_TEST_KAFKA`` / ``RECSTREAM_TEST_REDIS`` when set; else
testcontainers when a Docker engine answers; else local processes (genuine Apache Kafka
from the jars fetched by ``scripts/fetch-kafka.sh`` when Java is there, Tansu otherwise;
``redis-server``). Every process a test starts is stopped by its PID at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest
import redis.asyncio as aioredis

from api.auth import hash_key, new_key
from learner import cooccurrence_delta, kernels
from recstream import local_services
from store.keys import Keys
from store.model_store import ModelStore, bulk_client
from store.signing import SnapshotSigner

if TYPE_CHECKING:
    from fastapi import FastAPI

    from learner.gate.records import Records

#: One API key with every scope for the whole test session; ``make_env`` configures its hash. Kept in the
#: environment because pytest imports this file twice (as ``conftest`` and as ``tests.conftest``).
TEST_API_KEY = os.environ.setdefault("RECSTREAM_TEST_API_KEY", new_key())
TEST_API_KEYS = [{"name": "test-admin", "scopes": ["ingest", "read", "admin"], "hash": hash_key(TEST_API_KEY)}]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``recstream ARGS`` in a fresh process (``env``: the whole environment; default this one's), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "recstream.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test whose prerequisite is missing here; in CI (``CI`` set) fail instead: CI provides everything,
    and a test skipped there would pass for coverage it does not give."""
    if os.environ.get("CI"):
        pytest.fail(f"missing in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def loops(compiled: bool) -> Iterator[None]:
    """Within the block, objects are made to run the compiled loops (``compiled``; skipped where they are not built,
    a failure in CI) or Python's (:func:`learner.kernels.numpy_only`)."""
    if not compiled:
        with kernels.numpy_only():
            yield
        return
    if kernels.compiled() is None:
        skip_unless_ci("learner/_kernels.c is not built (no C compiler at install time)")
    yield


def held_keys(table: Records, candidates: Iterable[str]) -> list[str]:
    """The keys of ``candidates`` that ``table`` holds, least recently touched first (its keys are not read back,
    only their record numbers). ``candidates`` must include every key it holds."""
    held = [key for key in dict.fromkeys(candidates) if key in table]
    assert len(held) == len(table), "held_keys: the table holds keys not among the candidates"
    position = {number: at for at, number in enumerate(table.index.order())}
    return sorted(held, key=lambda key: position[table.index[key]])


def require_tool(command: str, package: str) -> str:
    """Path of a system tool a test needs: skipped locally when missing, a failure in CI (``.ci/run`` installs it)."""
    path = shutil.which(command)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{command} is missing in CI: .ci/run installs Debian's {package} package")
        pytest.skip(f"{command} not installed (apt-get install {package}); CI installs it")
    return path


@pytest.fixture
def built() -> object:
    """The compiled kernels (learner/_kernels.c); skipped where they are not built, except in CI."""
    kernel = kernels.compiled()
    if kernel is None:
        skip_unless_ci("learner/_kernels.c is not built: `pip install -e .` builds it when a C compiler is found")
    return kernel


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine is the normal case here
        return False


def _loopback_only(container: Any) -> Any:
    """Publish a testcontainer's ports on 127.0.0.1 only (Docker's default is every interface).

    docker-py takes ``(host_ip, host_port)`` for a port binding; ``None`` keeps the random host port.
    """
    container.ports = {port: ("127.0.0.1", host) for port, host in container.ports.items()}
    return container


@dataclass
class Endpoint:
    url: str
    how: str


@pytest.fixture(scope="session")
def redis_endpoint() -> Iterator[Endpoint]:
    if os.environ.get("RECSTREAM_TEST_REDIS"):
        yield Endpoint(os.environ["RECSTREAM_TEST_REDIS"], "env")
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with _loopback_only(RedisContainer()) as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield Endpoint(f"redis://{host}:{port}/0", "testcontainers")
        return
    service = local_services.start_redis()
    try:
        yield Endpoint(service.url, "local redis-server")
    finally:
        service.stop()


@pytest.fixture(scope="session")
def broker_endpoint() -> Iterator[Endpoint]:
    if os.environ.get("RECSTREAM_TEST_KAFKA"):
        yield Endpoint(os.environ["RECSTREAM_TEST_KAFKA"], "env")
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with _loopback_only(KafkaContainer()) as container:
            yield Endpoint("kafka://" + container.get_bootstrap_server(), "testcontainers")
        return
    service = local_services.start_broker(os.environ.get("RECSTREAM_TEST_BROKER", "auto"))
    try:
        yield Endpoint(service.url, f"local {service.name}")
    finally:
        service.stop()


def make_env(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> dict[str, str]:
    """``RECSTREAM_*`` variables for one run: its own consumer group, topics and Redis prefix."""
    run = uuid.uuid4().hex[:8]
    return {
        "RECSTREAM_BROKER_URL": broker_endpoint.url,
        "RECSTREAM_REDIS_URL": redis_endpoint.url,
        "RECSTREAM_APP_ID": f"recstream-test-{run}",
        "RECSTREAM_REDIS_PREFIX": f"test-{run}",
        "RECSTREAM_TOPIC_EVENTS": f"events-{run}",
        "RECSTREAM_TOPIC_REJECTED": f"events-{run}.rejected",
        "RECSTREAM_TOPIC_QUARANTINED": f"events-{run}.quarantined",
        "RECSTREAM_TOPIC_PARTITIONS": "2",
        "RECSTREAM_CHECKPOINT_INTERVAL_SECONDS": "0.3",
        "RECSTREAM_CHECKPOINT_EVERY_EVENTS": "200",
        "RECSTREAM_BROKER_SESSION_TIMEOUT": "6",
        "RECSTREAM_WORKER_LEASE_SECONDS": "5",  # a worker restarted after a kill waits this long for the lease
        "RECSTREAM_MODEL_POLL_SECONDS": "0.2",
        "RECSTREAM_HMAC_KEY": f"test-key-{run}",
        "RECSTREAM_API_KEYS": json.dumps(TEST_API_KEYS),
    }


def in_process_app(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> FastAPI:
    """The API app for a run of its own (:func:`make_env`), made in this process: serve it with a ``TestClient``
    (whose lifespan connects it to the real Redis and broker)."""
    from api.app import create_app
    from recstream.settings import Settings

    with pytest.MonkeyPatch.context() as patch:
        for name, value in make_env(redis_endpoint, broker_endpoint).items():
            patch.setenv(name, value)
        return create_app(Settings())


def stop_gracefully(service: local_services.LocalService, timeout: float = 30) -> None:
    """SIGTERM ``service`` and wait for it to exit; past ``timeout`` the test fails with the end of its log (what it
    was doing when it did not stop)."""
    service.process.terminate()
    try:
        service.process.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{service.name} did not exit within {timeout} s of SIGTERM; its log ends:\n{service.log_tail(80)}")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of the sample ``name{labels}`` (``name`` alone without labels) in a Prometheus text page (0 when it is
    not there yet)."""
    sample = re.escape(name) + (rf"\{{{re.escape(labels)}\}}" if labels else "")
    match = re.search(rf"^{sample} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def api_client(api: local_services.LocalService, key: str = TEST_API_KEY, **kwargs: Any) -> httpx.Client:
    """An HTTP client for a started API that sends ``key`` (by default the session's all-scopes test key)."""
    kwargs.setdefault("timeout", 10)
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, **kwargs)


@contextlib.asynccontextmanager
async def open_model_store(url: str, key: bytes, prefix: str, **kwargs: Any) -> AsyncIterator[ModelStore]:
    """A model store under a fresh ``prefix-xxxxxxxx`` key prefix, with a bulk client as the worker's has (so a
    processor over it writes whole snapshots in the background as in production); both clients closed after."""
    client, bulk = aioredis.Redis.from_url(url), bulk_client(url)
    try:
        yield ModelStore(client, SnapshotSigner(key), Keys(f"{prefix}-{uuid.uuid4().hex[:8]}"), bulk=bulk, **kwargs)
    finally:
        await client.aclose()
        bulk.close()


@pytest.fixture
def service_env(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> dict[str, str]:
    return make_env(redis_endpoint, broker_endpoint)


@pytest.fixture
def processes() -> Iterator[list[local_services.LocalService]]:
    """Register worker/API processes here; all are stopped by PID at teardown."""
    started: list[local_services.LocalService] = []
    yield started
    for service in started:
        service.stop(timeout=20)


@dataclass
class Stack:
    """A running worker and API on the test's broker and Redis, with a keyed client and a checkpoint reader."""

    env: dict[str, str]
    worker: local_services.LocalService
    api: local_services.LocalService
    client: httpx.Client
    checkpoints: Any  # tests.kafka_io.CheckpointReader

    @property
    def broker(self) -> str:
        return self.env["RECSTREAM_BROKER_URL"]

    @property
    def topic(self) -> str:
        return self.env["RECSTREAM_TOPIC_EVENTS"]

    def close(self) -> None:
        self.client.close()
        self.checkpoints.close()


def start_stack(env: dict[str, str], processes: list[local_services.LocalService], client_timeout: float = 10) -> Stack:
    """Start a worker and an API with ``env`` (registered in ``processes``); ``Stack.close`` closes the clients."""
    from tests.kafka_io import CheckpointReader

    worker = local_services.start_worker(env)
    processes.append(worker)
    api = local_services.start_api(env)
    processes.append(api)
    client = api_client(api, timeout=client_timeout)
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    return Stack(env, worker, api, client, checkpoints)


@pytest.fixture
def checkpoints(service_env: dict[str, str]) -> Iterator[Any]:
    """A :class:`tests.kafka_io.CheckpointReader` on the run's Redis prefix, closed after the test."""
    from tests.kafka_io import CheckpointReader

    reader = CheckpointReader(service_env["RECSTREAM_REDIS_URL"], service_env["RECSTREAM_REDIS_PREFIX"])
    yield reader
    reader.close()


@pytest.fixture
def stack(service_env: dict[str, str], processes: list[local_services.LocalService]) -> Iterator[Stack]:
    started = start_stack(service_env, processes)
    try:
        yield started
    finally:
        started.close()


#: Gate settings for tests that count exactly what is learned: the statistical rules (per-user rates, item
#: surges, anomaly score, model guard) are switched off or out of reach, so only the deterministic rules
#: (contract, duplicates, timestamps) decide. Each such test says what it expects to be held.
COUNTABLE_GATE_ENV = {
    "RECSTREAM_GATE_ANOMALY_ENABLED": "false",
    "RECSTREAM_GATE_USER_RATE_MAX_POSITIVES": "1000000",
    "RECSTREAM_GATE_USER_RATE_MAX_EVENTS": "1000000",
    "RECSTREAM_GATE_ITEM_SURGE_MIN_NEW_POSITIVES": "1000000000",
    "RECSTREAM_GATE_GUARD_MIN_REFERENCE": "1000000000",
}


def _stored_learner(env: dict[str, str], load_blob: Callable[[Any], Any]) -> Any:
    """Decode the snapshot ``load_blob(store)`` returns (HMAC-verified with the run's key), or None."""
    import asyncio

    from recstream import components
    from recstream.settings import Settings

    settings = Settings(
        redis_url=env["RECSTREAM_REDIS_URL"],
        redis_prefix=env["RECSTREAM_REDIS_PREFIX"],
        hmac_key=env["RECSTREAM_HMAC_KEY"],
    )

    async def load() -> Any:
        redis = components.redis_client(settings)
        try:
            blob = await load_blob(components.model_store(settings, redis))
        finally:
            await redis.aclose()
        return None if blob is None else components.learner_from_bytes(settings, blob)

    return asyncio.run(load())


def current_learner(env: dict[str, str]) -> Any:
    """The learner in the current snapshot in Redis, or None."""

    async def blob(store: Any) -> bytes | None:
        snapshot = await store.load_current()
        if snapshot is None:
            return None
        root, deltas = snapshot.chain()  # a delta version: its chain applied to the whole version it starts from
        return cooccurrence_delta.whole_blob(root.blob, deltas)

    return _stored_learner(env, blob)


def challenger_learner(env: dict[str, str], name: str) -> Any:
    """The contestant ``name`` as the worker last checkpointed it, or None."""
    return _stored_learner(env, lambda store: store.load_challenger(name))


def popularity_counts(learner: Any) -> dict[str, int]:
    """Item -> positive events the learner counted (each learned like/share once)."""
    popularity = learner.popularity
    return {item: int(count) for item, count in zip(popularity.items.ids, popularity.counts, strict=True) if count}


def create_topics(env: dict[str, str]) -> None:
    """Create the run's topics with its partition count before anything produces (no auto-created topics)."""
    import asyncio

    from recstream.settings import Settings
    from stream.topics import ensure_topics

    settings = Settings(
        broker_url=env["RECSTREAM_BROKER_URL"],
        topic_events=env["RECSTREAM_TOPIC_EVENTS"],
        topic_rejected=env["RECSTREAM_TOPIC_REJECTED"],
        topic_quarantined=env["RECSTREAM_TOPIC_QUARANTINED"],
        topic_partitions=int(env["RECSTREAM_TOPIC_PARTITIONS"]),
    )
    asyncio.run(ensure_topics(settings))

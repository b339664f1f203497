"""Credentials for the infrastructure: Redis AUTH end to end, and the Kafka SASL/SSL options mapping.

Redis: a real ``redis-server`` with ``requirepass``; the worker and the API get the password in
``RECSTREAM_REDIS_URL`` and work; an API without it reports Redis unreachable instead of crashing;
the password appears in no log. Kafka SASL/SSL cannot be exercised here (no SASL broker), so only
the mapping of the settings to client options is tested (docs/security.md).
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Iterator

import faust
import pytest
from pydantic import SecretStr

from recstream import components, local_services
from recstream.settings import Settings
from tests.conftest import Endpoint, api_client, make_env, run_cli, wait_for
from tests.kafka_io import CheckpointReader, produce_events
from tests.taste_stream import taste_events

PASSWORD = "redis-pw-" + uuid.uuid4().hex


@pytest.fixture
def redis_with_password() -> Iterator[local_services.LocalService]:
    service = local_services.start_redis(password=PASSWORD)
    try:
        yield service
    finally:
        service.stop()  # by its PID (process group)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_worker_and_api_use_redis_auth_and_never_log_the_password(
    redis_with_password: local_services.LocalService,
    broker_endpoint: Endpoint,
    processes: list[local_services.LocalService],
) -> None:
    host, port = redis_with_password.host, redis_with_password.port
    authed = Endpoint(f"redis://:{PASSWORD}@{host}:{port}/0", "local redis-server with requirepass")
    env = make_env(authed, broker_endpoint)
    worker = local_services.start_worker(env)
    processes.append(worker)
    api = local_services.start_api(env)
    processes.append(api)
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    # Same URL, no password: Redis refuses every command with NOAUTH.
    no_password_env = {**env, "RECSTREAM_REDIS_URL": f"redis://{host}:{port}/0"}
    denied_api = local_services.start_api(no_password_env)
    processes.append(denied_api)
    try:
        crowd = taste_events(seed=5, users_per_group=20)
        produce_events(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], crowd)
        wait_for(lambda: checkpoints.learned() == len(crowd), 90, f"the worker to learn (log: {worker.log_path})")

        with api_client(api) as client:

            def served() -> dict | None:
                r = client.get("/v1/users/A000/recommendations", params={"k": 5})
                body = r.json() if r.status_code == 200 else None
                return body if body and body["source"] == "model" else None

            body = wait_for(served, 30, "recommendations from the learned model")
            assert isinstance(body, dict) and len(body["items"]) == 5
            ready = wait_for(lambda: client.get("/readyz").status_code == 200 and client.get("/readyz"), 30, "ready")
            assert ready.json()["checks"]["redis"] == "ok"  # type: ignore[union-attr]

        with api_client(denied_api) as client:
            r = client.get("/readyz")
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["redis"] == "unreachable"
            assert client.get("/healthz").status_code == 200
            client.get("/v1/users/A000/recommendations")  # whatever it answers, it must not crash the API
            assert client.get("/readyz").status_code == 503
        assert denied_api.is_running(), denied_api.log_tail()
    finally:
        checkpoints.close()

    assert worker.is_running() and api.is_running()
    for service in (worker, api, denied_api):
        assert service.log_path is not None and service.log_path.exists()
        log = service.log_path.read_text(errors="replace")
        assert PASSWORD not in log, f"the Redis password leaked into {service.name}'s log"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_worker_with_the_wrong_redis_password_stops_at_start_saying_so(
    redis_with_password: local_services.LocalService, broker_endpoint: Endpoint
) -> None:
    host, port = redis_with_password.host, redis_with_password.port
    wrong = Endpoint(f"redis://:not-{PASSWORD}@{host}:{port}/0", "local redis-server, wrong password")
    result = run_cli("worker", env={**os.environ, **make_env(wrong, broker_endpoint)}, timeout=90)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recstream worker: Redis refused the credentials in RECSTREAM_REDIS_URL"), last
    assert PASSWORD not in result.stderr + result.stdout


# -- Kafka SASL/SSL: settings -> client options (no SASL broker here) ------------------------------


def test_plaintext_adds_no_kafka_options() -> None:
    settings = Settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert components.kafka_client_kwargs(settings) == {}
    assert components.faust_broker_credentials(settings) is None


def test_sasl_ssl_maps_mechanism_user_password_and_tls_context() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-recstream",
        kafka_sasl_password=SecretStr("sasl-secret-pw"),
    )
    kwargs = components.kafka_client_kwargs(settings)
    ssl_context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-recstream",
        "sasl_plain_password": "sasl-secret-pw",
    }
    assert isinstance(ssl_context, ssl.SSLContext) and ssl_context.verify_mode == ssl.CERT_REQUIRED
    creds = components.faust_broker_credentials(settings)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "svc-recstream" and creds.password == "sasl-secret-pw"
    assert "sasl-secret-pw" not in repr(creds)


def test_sasl_plaintext_and_ssl_only() -> None:
    plain = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password=SecretStr("p")
    )
    kwargs = components.kafka_client_kwargs(plain)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in kwargs
    ssl_only = Settings(kafka_security_protocol="SSL")
    kwargs = components.kafka_client_kwargs(ssl_only)
    assert set(kwargs) == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    creds = components.faust_broker_credentials(ssl_only)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"
    assert isinstance(creds.context, ssl.SSLContext)


def test_sasl_without_credentials_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="RECSTREAM_KAFKA_SASL_USERNAME"):
        components.kafka_client_kwargs(Settings(kafka_security_protocol="SASL_SSL"))


def test_sasl_password_is_a_secret_never_shown_by_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_PASSWORD", "env-sasl-secret")
    settings = Settings()
    assert isinstance(settings.kafka_sasl_password, SecretStr)
    assert settings.kafka_sasl_password.get_secret_value() == "env-sasl-secret"
    assert "env-sasl-secret" not in repr(settings) and "env-sasl-secret" not in str(settings)
    assert "env-sasl-secret" not in repr(Settings())

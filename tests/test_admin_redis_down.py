"""The admin and operations routes while Redis is unreachable: a 503 with ``Retry-After`` and a ``Problem`` body the
OpenAPI page documents for that route, never a bare 500 (a real Redis, started here and killed under the running
app)."""

from __future__ import annotations

import uuid
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from recstream import local_services
from tests.conftest import TEST_API_KEY, Endpoint, in_process_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REASON = {"reason": "test"}

# (method, path as documented, path as requested, request keywords)
NEEDS_REDIS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("get", "/v1/models", "/v1/models", {}),
    ("get", "/v1/models/challengers", "/v1/models/challengers", {}),
    ("get", "/v1/models/{version}", "/v1/models/3", {}),
    ("post", "/v1/models/{version}/promote", "/v1/models/3/promote", {"json": REASON}),
    ("post", "/v1/models/rollback", "/v1/models/rollback", {"json": REASON}),
    ("post", "/v1/models/{version}/pin", "/v1/models/3/pin", {}),
    ("post", "/v1/models/challengers/{name}/promote", "/v1/models/challengers/x/promote", {"json": REASON}),
    ("get", "/v1/gate", "/v1/gate", {}),
    ("post", "/v1/gate/resume", "/v1/gate/resume", {}),
    ("get", "/v1/stats", "/v1/stats", {}),
    ("get", "/v1/items/hidden", "/v1/items/hidden", {}),
    ("post", "/v1/items/{item_id}/hide", "/v1/items/v3/hide", {"json": REASON}),
    ("post", "/v1/items/{item_id}/unhide", "/v1/items/v3/unhide", {"json": REASON}),
    ("post", "/v1/users/{user_id}/erase", "/v1/users/u3/erase", {"json": REASON}),
    ("get", "/v1/users/{user_id}/erase", "/v1/users/u3/erase", {}),
]


def _schema(page: dict[str, Any], method: str, path: str, status: int) -> Any:
    response = page["paths"][path][method]["responses"][str(status)]
    return jsonschema_rs.validator_for(
        {**response["content"]["application/json"]["schema"], "components": page["components"]}
    )


def _refused_to_fix(answer: Any, error: str, password: str) -> None:
    """A 503 that retrying does not help (no Retry-After): Redis refused the API's credentials or their rights,
    named by ``error``, without the password."""
    assert answer.status_code == 503, answer.text
    assert "Retry-After" not in answer.headers
    detail = answer.json()["detail"]
    assert detail.startswith(f"Redis refused this API process's credentials or their rights ({error}"), detail
    assert password not in detail


def test_admin_routes_answer_503_to_retry_while_redis_is_down(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    redis = local_services.start_redis()
    processes.append(redis)
    app = in_process_app(Endpoint(redis.url, "own redis"), broker_endpoint)
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
        assert client.get("/v1/gate").status_code == 200  # Redis up: answered
        page = client.get("/openapi.json").json()
        redis.kill()
        for method, documented, requested, kwargs in NEEDS_REDIS:
            answer = client.request(method.upper(), requested, **kwargs)
            assert answer.status_code == 503, (requested, answer.status_code, answer.text)
            assert answer.headers["Retry-After"] == "5", requested
            body = answer.json()
            assert body["detail"].startswith("Redis is unavailable ("), body
            _schema(page, method, documented, 503).validate(body)


def test_a_read_only_redis_is_a_503_to_retry_and_refused_credentials_a_503_to_fix(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    import redis as redis_lib

    password = "pw-" + uuid.uuid4().hex
    redis = local_services.start_redis(password=password)
    processes.append(redis)
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    authed = Endpoint(f"redis://:{password}@{redis.host}:{redis.port}/0", "own redis")
    app = in_process_app(authed, broker_endpoint)
    admin = redis_lib.Redis.from_url(authed.url)
    try:
        with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
            assert client.post("/v1/models/3/pin", params={"pinned": "false"}).status_code == 200
            # A failover under way: this Redis became a replica (of a primary that is not there) and refuses writes.
            admin.replicaof("127.0.0.1", str(local_services.free_port()))
            answer = client.post("/v1/models/3/pin", params={"pinned": "false"})
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["detail"].startswith("Redis is read-only (ReadOnlyError"), answer.json()
            admin.replicaof("NO", "ONE")
            assert client.post("/v1/models/3/pin", params={"pinned": "false"}).status_code == 200
        wrong = Endpoint(f"redis://:not-{password}@{redis.host}:{redis.port}/0", "own redis, wrong password")
        app = in_process_app(wrong, broker_endpoint)
        with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
            _refused_to_fix(client.get("/v1/models"), "AuthenticationError", password)
    finally:
        admin.close()


def test_a_redis_out_of_memory_is_a_503_to_retry_and_one_without_the_rights_a_503_to_fix(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    """Redis answering with an error (not an outage): out of memory (its maxmemory reached), and an ACL user without
    the right to write. Both were a bare 500 in plain text."""
    import redis as redis_lib

    redis = local_services.start_redis()
    processes.append(redis)
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    admin = redis_lib.Redis.from_url(redis.url)
    try:
        app = in_process_app(Endpoint(redis.url, "own redis"), broker_endpoint)
        with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
            page = client.get("/openapi.json").json()
            assert client.post("/v1/items/v3/hide", json=REASON).status_code == 200
            admin.config_set("maxmemory", "1")  # every write refused from now on
            answer = client.post("/v1/items/v4/hide", json=REASON)
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["detail"].startswith("Redis is out of memory (OutOfMemoryError"), answer.json()
            _schema(page, "post", "/v1/items/{item_id}/hide", 503).validate(answer.json())
            admin.config_set("maxmemory", "0")
            assert client.post("/v1/items/v4/hide", json=REASON).status_code == 200
        password = "pw-" + uuid.uuid4().hex
        admin.acl_setuser("reader", enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@read", "+ping"])
        reader = Endpoint(f"redis://reader:{password}@{redis.host}:{redis.port}/0", "own redis, a read-only user")
        app = in_process_app(reader, broker_endpoint)
        with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
            _refused_to_fix(client.post("/v1/items/v5/hide", json=REASON), "NoPermissionError", password)
    finally:
        admin.close()


def test_a_redis_error_that_is_a_defect_is_a_500_not_a_503_to_retry(
    broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    """WRONGTYPE (a key of another type where the code expects a hash): retrying does not help, so not a 503 with
    Retry-After, and the command's arguments (key names, values) are not shown to the client."""
    import redis as redis_lib

    redis = local_services.start_redis()
    processes.append(redis)
    admin = redis_lib.Redis.from_url(redis.url)
    try:
        app = in_process_app(Endpoint(redis.url, "own redis"), broker_endpoint)
        headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
        with TestClient(app, base_url="http://127.0.0.1", headers=headers, raise_server_exceptions=False) as client:
            prefix = app.state.recstream.settings.redis_prefix
            admin.set(f"{prefix}:items:hidden", "not a hash")
            answer = client.post("/v1/items/v4/hide", json={"reason": "secret-reason"})
            assert answer.status_code == 500, answer.text
            assert answer.json() == {"detail": "internal error (ResponseError); the API process logged it"}
            assert "Retry-After" not in answer.headers and "secret-reason" not in answer.text
    finally:
        admin.close()


def test_a_defect_is_a_500_with_a_json_detail(broker_endpoint: Endpoint, redis_endpoint: Endpoint) -> None:
    app = in_process_app(redis_endpoint, broker_endpoint)

    async def broken() -> None:
        raise RuntimeError("a defect, with a secret=s3cr3t in its message")

    app.add_api_route("/broken", broken)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        answer = client.get("/broken")
        assert answer.status_code == 500
        assert answer.json() == {"detail": "internal error (RuntimeError); the API process logged it"}

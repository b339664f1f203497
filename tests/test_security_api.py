"""Against a real API process (real Redis, real broker): who may call what, headers, limits, logs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from api.auth import hash_key, new_key
from api.hygiene import SWAGGER_FILES, SWAGGER_VERSION
from recstream import local_services
from recstream.settings import Settings
from tests.clock import iso
from tests.conftest import Endpoint, api_client, make_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = {scope: new_key() for scope in ("ingest", "read", "admin")}
EVENT = {"event_id": "s1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}
# (method, path, JSON body, scope the endpoint needs)
ENDPOINTS = [
    ("POST", "/v1/events", [EVENT], "ingest"),
    ("GET", "/v1/users/u1/recommendations", None, "read"),
    ("POST", "/v1/scores", {"user_id": "u1", "item_ids": ["v1"]}, "read"),
    ("GET", "/v1/gate", None, "admin"),
    ("POST", "/v1/gate/resume", None, "admin"),
    ("GET", "/v1/stats", None, "admin"),
    ("GET", "/v1/models", None, "admin"),
    ("GET", "/v1/models/1", None, "admin"),
    ("POST", "/v1/models/1/promote", {"reason": "security test"}, "admin"),
    ("POST", "/v1/models/rollback", {"reason": "security test"}, "admin"),
    ("POST", "/v1/models/1/pin", None, "admin"),
    ("GET", "/v1/items/hidden", None, "admin"),
    ("POST", "/v1/items/v1/hide", {"reason": "security test"}, "admin"),
    ("POST", "/v1/items/v1/unhide", {"reason": "security test"}, "admin"),
    ("POST", "/v1/users/u1/erase", {"reason": "security test"}, "admin"),
    ("GET", "/v1/users/u1/erase", None, "admin"),
]
GRANTS = {"ingest": {"ingest"}, "read": {"read"}, "admin": {"admin", "read"}}  # admin implies read
HMAC_KEY = "hmac-" + new_key()


@dataclass
class Api:
    service: local_services.LocalService
    env: dict[str, str]


@pytest.fixture(scope="module")
def api(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> Iterator[Api]:
    entries = [{"name": f"{scope}-key", "scopes": [scope], "hash": hash_key(key)} for scope, key in KEYS.items()]
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_API_KEYS": json.dumps(entries),
        "RECSTREAM_HMAC_KEY": HMAC_KEY,
        "RECSTREAM_MAX_BODY_BYTES": "200000",
    }
    service = local_services.start_api(env)
    try:
        yield Api(service, env)
    finally:
        service.stop()


def _call(client: httpx.Client, method: str, path: str, body: object, **headers: str) -> httpx.Response:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("key_scope", sorted(KEYS))
@pytest.mark.parametrize(("method", "path", "body", "needs"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_each_key_reaches_exactly_the_endpoints_of_its_scopes(
    api: Api, key_scope: str, method: str, path: str, body: object, needs: str
) -> None:
    with api_client(api.service, KEYS[key_scope]) as client:
        response = _call(client, method, path, body)
    if needs in GRANTS[key_scope]:
        # The route itself answered: 2xx, or 503 "no model loaded yet" / 404-409 "no such version"
        # (this API runs without a worker, so there are no model versions).
        no_versions = response.status_code in (404, 409) and "version" in response.json()["detail"]
        not_paused = response.status_code == 409 and "learning is not paused" in response.json()["detail"]
        assert (
            response.status_code in (200, 202) or "no model is loaded" in response.text or no_versions or not_paused
        ), response.text
    else:
        assert response.status_code == 403, response.text
        detail = response.json()["detail"]
        assert (
            f"'{key_scope}-key'" in detail and f"needs scope '{needs}'" in detail and "recstream keys create" in detail
        )


@pytest.mark.parametrize(("method", "path", "body", "needs"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_without_a_key_every_v1_endpoint_answers_401_with_a_challenge(
    api: Api, method: str, path: str, body: object, needs: str
) -> None:
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        response = _call(client, method, path, body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="recstream"')
    detail = response.json()["detail"]
    assert f"scope '{needs}'" in detail and "Authorization: Bearer <key>" in detail and "X-API-Key" in detail


@pytest.mark.parametrize(
    ("path", "scope"),
    [("/v1/gate", "admin"), ("/v1/users/u1/recommendations", "read")],  # the second checks its key itself (authorise)
)
def test_an_unknown_key_or_another_scheme_is_401_and_x_api_key_works(api: Api, path: str, scope: str) -> None:
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        unknown = client.get(path, headers={"Authorization": f"Bearer {new_key()}"})
        assert unknown.status_code == 401 and 'error="invalid_token"' in unknown.headers["www-authenticate"]
        assert "not recognised" in unknown.json()["detail"]
        for scheme in ("Basic " + base64.b64encode(b"a:b").decode(), "Bearer", "Token abc"):
            refused = client.get(path, headers={"Authorization": scheme})
            assert refused.status_code == 401 and "must be `Bearer <key>`" in refused.json()["detail"], scheme
        by_header = client.get(path, headers={"X-API-Key": KEYS[scope]})
        assert by_header.status_code == 200 or "no model is loaded" in by_header.text, by_header.text
        both = client.get(path, headers={"X-API-Key": KEYS[scope], "Authorization": f"bearer {new_key()}"})
        assert both.status_code == 401  # a bearer key, when there is one, is the key presented


def test_health_and_metrics_stay_open(api: Api) -> None:
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code in (200, 503)  # no model without a worker; never 401
        assert client.get("/metrics").status_code == 200


def test_responses_carry_security_headers(api: Api) -> None:
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        for response in (client.get("/healthz"), client.get("/v1/gate"), client.get("/nowhere")):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
            assert "access-control-allow-origin" not in response.headers  # CORS is off unless configured
        preflight = client.options(
            "/v1/gate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_the_docs_page_loads_under_a_csp_that_names_exactly_its_scripts(api: Api) -> None:
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        page = client.get("/docs")
        schema = client.get("/openapi.json").json()
    assert page.status_code == 200
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert "'unsafe-inline'" not in csp["script-src"]
    for inline in re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp["script-src"]
    # Swagger UI's two files: of one version, each named whole by the CSP (not the CDN's every file) and checked by
    # the browser against its hash (a new release or a compromised CDN cannot run code where an admin key is pasted)
    files = re.findall(r'<script src="([^"]+)" integrity="([^"]+)"', page.text) + re.findall(
        r'stylesheet" href="([^"]+)" integrity="([^"]+)"', page.text
    )
    assert len(files) == 2 == len(re.findall(r"<script src=|stylesheet\" href=", page.text)), page.text
    for src, integrity in files:
        assert f"swagger-ui-dist@{SWAGGER_VERSION}/" in src and integrity == SWAGGER_FILES[src.rsplit("/", 1)[1]]
        assert src in csp["script-src"].split() or src in csp["style-src"].split(), src
    assert "'self'" in csp["connect-src"]  # "Try it out" calls this API
    # The OpenAPI document declares both ways to send a key, on the /v1 operations only.
    assert {"BearerKey", "HeaderKey"} <= set(schema["components"]["securitySchemes"])
    assert schema["paths"]["/v1/events"]["post"]["security"]
    assert "401" in schema["paths"]["/v1/events"]["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    # the recommendations route checks its key itself (authorise), documented through KEY_SCHEMES
    recommendations = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    assert recommendations["security"] == schema["paths"]["/v1/scores"]["post"]["security"]


def test_bodies_over_the_limit_are_refused_before_authentication(api: Api) -> None:
    big = b'{"user_id": "u1", "item_ids": ["' + b"v" * 250_000 + b'"]}'
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        declared = client.post("/v1/scores", content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "RECSTREAM_MAX_BODY_BYTES" in declared.json()["detail"]
        chunked = client.post(
            "/v1/scores",
            content=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413 and "RECSTREAM_MAX_BODY_BYTES" in chunked.json()["detail"]


def test_a_route_that_takes_only_a_reason_refuses_a_larger_body_before_reading_its_key(api: Api) -> None:
    # FastAPI parses a body before a route's key check: past 8 KiB (far more than a reason of 500 characters) the
    # admin routes' bodies are refused unread, with or without a key
    body = {"reason": "x" * 20_000}
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        for path in ("/v1/models/rollback", "/v1/models/1/promote", "/v1/items/v1/hide", "/v1/users/u1/erase"):
            refused = client.post(path, json=body)
            assert refused.status_code == 413, (path, refused.text)
            assert refused.json()["detail"].endswith("bytes; the limit is 8192 (this route's limit)"), refused.text
        # /v1/scores/ (FastAPI redirects it to /v1/scores) has the limit of /v1/scores
        assert client.post("/v1/scores/", content=b" " * 20_000).status_code != 413
        # a reason's body is taken (and refused by its length, with the admin key: a 422 naming the field)
        taken = client.post("/v1/models/rollback", json={"reason": "x" * 501}, headers={"X-API-Key": KEYS["admin"]})
        assert taken.status_code == 422 and "reason" in taken.text, taken.text


def test_no_secret_reaches_the_log(api: Api) -> None:
    wrong = new_key()
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        assert client.get("/v1/gate", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        assert client.get("/v1/gate", headers={"X-API-Key": KEYS["ingest"]}).status_code == 403
        assert client.post("/v1/events", json=[EVENT], headers={"X-API-Key": KEYS["ingest"]}).status_code == 202
        client.get(f"/v1/users/u1/recommendations?k=3&api_key={wrong}", headers={"X-API-Key": KEYS["read"]})
    log_path = api.service.log_path
    assert log_path is not None
    # Refusals of both kinds are logged (the first of each in the process at least: this reads the right log) …
    wait_for(lambda: "unknown API key" in log_path.read_text() and "' missing" in log_path.read_text(), 10, "log")
    text = log_path.read_text()
    # … and no key, presented or configured, nor the snapshot HMAC key, is in it; nor any other key (the refusals of
    # this module's other tests: a refusal line a minute is logged, maybe theirs)
    for secret in (*KEYS.values(), wrong, HMAC_KEY):
        assert secret not in text
    assert not re.search(r"rsk_[A-Za-z0-9_-]{20}", text)


def test_without_keys_the_api_refuses_to_start_and_says_how_to_fix_it(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint
) -> None:
    env = {**make_env(redis_endpoint, broker_endpoint), "RECSTREAM_API_KEYS": "[]"}
    with pytest.raises(RuntimeError, match=r"exited \(exit code 2\)") as refused:
        local_services.start_api(env, timeout=20)
    assert "RECSTREAM_API_KEYS" in str(refused.value) and "recstream keys create" in str(refused.value)


def test_with_auth_off_the_api_warns_and_cors_answers_only_configured_origins(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_AUTH_ENABLED": "false",
        "RECSTREAM_API_KEYS": "[]",
        "RECSTREAM_CORS_ORIGINS": '["https://app.example"]',
    }
    service = local_services.start_api(env)
    processes.append(service)
    assert service.log_path is not None and "AUTHENTICATION IS OFF" in service.log_path.read_text()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        assert client.get("/v1/gate").status_code == 200
        allowed = client.options(
            "/v1/gate",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.get("/v1/gate", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # a browser's script may read when to retry a 429 or 503, and the scheme of a 401
        answered = client.get("/v1/gate", headers={"Origin": "https://app.example"})
        exposed = {h.strip().lower() for h in answered.headers["access-control-expose-headers"].split(",")}
        assert exposed == {"retry-after", "www-authenticate"}


def test_refusals_are_counted_each_and_logged_a_line_a_minute(api: Api) -> None:
    def refused(reason: str) -> float:
        text = httpx.get(f"{api.service.url}/metrics", timeout=10).text
        found = re.search(rf'^recstream_api_auth_refusals_total\{{reason="{reason}"\}} ([0-9.e+]+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    log_path = api.service.log_path
    assert log_path is not None
    before = {reason: refused(reason) for reason in ("missing", "unknown", "scope")}
    lines_before = log_path.read_text().count("unknown API key")
    with httpx.Client(base_url=api.service.url, timeout=10) as client:
        for _ in range(40):  # anyone can send these: none may cost a log line each
            assert client.get("/v1/gate", headers={"X-API-Key": new_key()}).status_code == 401
        assert client.get("/v1/gate").status_code == 401
        assert client.get("/v1/gate", headers={"X-API-Key": KEYS["ingest"]}).status_code == 403
    assert refused("unknown") - before["unknown"] == 40
    assert refused("missing") - before["missing"] == 1
    assert refused("scope") - before["scope"] == 1
    # at most the first of the 40 is logged (none if a line was logged within the minute before)
    assert log_path.read_text().count("unknown API key") - lines_before <= 1


def test_a_request_head_over_the_limit_is_refused_before_the_app_reads_it(api: Api) -> None:
    def refused_heads() -> float:
        text = httpx.get(f"{api.service.url}/metrics", timeout=10).text
        found = re.search(r"^recstream_api_heads_refused_total ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    before = refused_heads()
    limit = Settings().max_header_bytes  # (the fixture's API runs with the default)
    with httpx.Client(base_url=api.service.url, timeout=30) as client:
        # (larger than one read of the server's, 256 KiB: a head that ends within a read is read whole)
        big_header = client.get("/healthz", headers={"X-Big": "x" * (8 * limit)})
        assert big_header.status_code == 431, big_header.text
        assert f"exceed {limit} bytes (RECSTREAM_MAX_HEADER_BYTES)" in big_header.text
    # a URL as well (on a socket: httpx itself refuses URLs this long)
    with socket.create_connection(("127.0.0.1", api.service.port), timeout=30) as raw:
        with contextlib.suppress(OSError):  # (the server may close before it has read all of it)
            raw.sendall(b"GET /healthz?" + b"q" * (8 * limit) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 431 ")
    # the count is per request: two heads of 60% of the limit on one kept-alive connection are both served
    with httpx.Client(base_url=api.service.url, timeout=30) as client:
        for _ in range(2):
            assert client.get("/healthz", headers={"X-Some": "x" * (limit * 6 // 10)}).status_code == 200
        # and a body is no part of the head: one larger than the head limit, within the body limit, is read
        body = json.dumps({"user_id": "u1", "item_ids": ["v1"], "pad": "x" * (2 * limit)})
        scored = client.post(
            "/v1/scores", content=body, headers={"X-API-Key": KEYS["read"], "content-type": "application/json"}
        )
        assert scored.status_code == 422 and "pad" in scored.text  # the app's own refusal of the unknown field
    assert refused_heads() - before == 2

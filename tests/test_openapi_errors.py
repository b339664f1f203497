"""The refusals the API answers are the ones its OpenAPI page documents: each 4xx body below, got from the running
app (in process, real Redis and broker behind its lifespan), validates against the schema ``/openapi.json`` gives
for that route and status, as a client generated from the page would read it. FastAPI's own 422 shape
(``HTTPValidationError``) is documented nowhere, since the app never answers it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_API_KEY, Endpoint, in_process_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECOMMENDATIONS = "/v1/users/{user_id}/recommendations"
JSON = {"content-type": "application/json"}
REASON = {"reason": "test"}
FORM = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends unless told otherwise
SCORES = b'{"user_id": "u1", "item_ids": ["v1"]}'
DEEP = b'{"user_id": "u1", "item_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # too deep for Python's parser

# (method, path as documented, path as requested, request keywords, expected status)
REFUSALS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("get", RECOMMENDATIONS, "/v1/users/u1/recommendations", {"params": {"k": "0"}}, 422),
    ("get", RECOMMENDATIONS, "/v1/users/u1/recommendations", {"params": {"k": "abc"}}, 422),
    ("get", RECOMMENDATIONS, "/v1/users/bad%20id/recommendations", {}, 422),
    ("get", RECOMMENDATIONS, "/v1/users/u1/recommendations", {"params": {"k": "500"}}, 422),  # above RECSTREAM_K_MAX
    ("post", "/v1/scores", "/v1/scores", {"json": {"user_id": "u1"}}, 422),
    ("post", "/v1/scores", "/v1/scores", {"content": b"not json", "headers": JSON}, 422),
    ("post", "/v1/scores", "/v1/scores", {"json": {"user_id": "u1", "item_ids": ["v1"], "k": 3}}, 422),  # unknown
    ("get", "/v1/models/{version}", "/v1/models/abc", {}, 422),
    ("post", "/v1/models/{version}/promote", "/v1/models/-1/promote", {}, 422),
    ("post", "/v1/scores", "/v1/scores", {"content": SCORES, "headers": {"content-type": "text/plain"}}, 415),
    ("post", "/v1/scores", "/v1/scores", {"content": SCORES}, 415),  # no content type at all
    ("post", "/v1/scores", "/v1/scores", {"content": DEEP, "headers": JSON}, 400),
    ("post", "/v1/scores", "/v1/scores", {"content": b" " * 2_100_000, "headers": JSON}, 413),
    (
        "post",
        "/v1/models/{version}/promote",
        "/v1/models/7/promote",
        {"content": b'{"reason": "x"}', "headers": FORM},
        415,
    ),
    ("post", "/v1/events", "/v1/events", {"json": {"user_id": "u1"}}, 422),  # not a list
    ("post", "/v1/events", "/v1/events", {"json": []}, 422),
    ("post", "/v1/events", "/v1/events", {"json": [{"user_id": "u1", "type": "like"}]}, 422),  # none valid
    ("post", "/v1/events", "/v1/events", {"content": b"[{", "headers": JSON}, 400),
    ("get", RECOMMENDATIONS, "/v1/users/u1/recommendations", {"headers": {"Authorization": "Bearer nope"}}, 401),
    ("get", RECOMMENDATIONS, "/v1/users/u1/recommendations", {}, 503),  # no worker here: no model yet
    ("post", "/v1/scores", "/v1/scores", {"json": {"user_id": "u1", "item_ids": ["v1"]}}, 503),
    ("get", "/v1/models/{version}", "/v1/models/7", {}, 404),
    ("post", "/v1/models/{version}/promote", "/v1/models/7/promote", {"json": REASON}, 404),
    ("post", "/v1/models/{version}/pin", "/v1/models/7/pin", {}, 404),
    ("post", "/v1/models/rollback", "/v1/models/rollback", {"json": REASON}, 409),
    ("post", "/v1/models/challengers/{name}/promote", "/v1/models/challengers/x/promote", {"json": REASON}, 404),
    ("post", "/v1/gate/resume", "/v1/gate/resume", {}, 409),
]


@pytest.fixture(scope="module")
def client(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> Iterator[TestClient]:
    app = in_process_app(redis_endpoint, broker_endpoint)
    with TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as test:
        yield test


@pytest.fixture(scope="module")
def page(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _validator(page: dict[str, Any], method: str, path: str, status: int) -> Any:
    """The documented body of ``status`` for that operation, as a validator (its references resolved in the page)."""
    response = page["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return jsonschema_rs.validator_for({**schema, "components": page["components"]})


@pytest.mark.parametrize(("method", "documented", "path", "kwargs", "status"), REFUSALS)
def test_each_refusal_is_the_body_the_page_documents(
    client: TestClient, page: dict[str, Any], method: str, documented: str, path: str, kwargs: dict, status: int
) -> None:
    response = client.request(method.upper(), path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    errors = [e.message for e in _validator(page, method, documented, status).iter_errors(body)]
    assert not errors, f"{method.upper()} {path}: {body} is not the documented {status}: {errors}"
    assert body["detail"]  # a sentence a person can act on


def test_refusals_in_the_frameworks_words_say_what_to_change(client: TestClient) -> None:
    body = client.post("/v1/scores", content=SCORES, headers=FORM).json()
    assert body["detail"] == (
        "the body must be JSON sent with Content-Type: application/json "
        "(this request had Content-Type 'application/x-www-form-urlencoded')"
    )
    assert "nested too deeply" in client.post("/v1/scores", content=DEEP, headers=JSON).json()["detail"]
    not_utf8 = client.post("/v1/scores", content=b'{"user_id": "\xff"}', headers=JSON)
    assert not_utf8.status_code == 400
    assert not_utf8.json()["detail"] == (
        "the body could not be read as JSON: it is not UTF-8 text (invalid start byte at byte 13); "
        "send JSON encoded as UTF-8"
    )
    unknown = client.get("/v1/nope")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no such route: GET /v1/nope (GET /openapi.json, or /docs, lists every route)"}
    wrong_method = client.get("/v1/scores")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"detail": "/v1/scores does not take GET: it takes POST"}
    unknown_field = client.post("/v1/scores", json={"user_id": "u1", "items": ["v1"]}).json()
    assert {"field": "body.items", "message": "Extra inputs are not permitted"} in unknown_field["errors"]
    # the app's own refusals keep their words
    assert client.get("/v1/models/7").json() == {"detail": "model version 7 is not retained (see GET /v1/models)"}


def test_a_refused_field_is_named(client: TestClient) -> None:
    body = client.get("/v1/users/u1/recommendations", params={"k": "500"}).json()
    assert body["errors"] == [{"field": "query.k", "message": "k=500 is above the limit of 100 (RECSTREAM_K_MAX)"}]
    assert body["detail"] == "invalid request: query.k: k=500 is above the limit of 100 (RECSTREAM_K_MAX)"


def test_fastapis_own_422_is_documented_nowhere(page: dict[str, Any]) -> None:
    wrong = {"loc": ["query", "k"], "msg": "Input should be a valid integer", "type": "int_parsing"}
    fastapi_body = {"detail": [wrong]}
    documented_422 = [
        (path, method)
        for path, operations in page["paths"].items()
        for method, operation in operations.items()
        if "422" in operation["responses"]
    ]
    assert len(documented_422) >= 8, documented_422  # every route with parameters or a body
    for path, method in documented_422:
        assert not _validator(page, method, path, 422).is_valid(fastapi_body), (path, method)
    assert "HTTPValidationError" not in page["components"]["schemas"]
    assert "ValidationError" not in page["components"]["schemas"]


def test_a_refusal_with_a_structured_detail_passes_through() -> None:
    from fastapi import HTTPException
    from starlette.requests import Request

    from api.problems import explain_http_error

    request = Request({"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""})
    response = explain_http_error(request, HTTPException(409, detail={"reason": "x"}))
    assert response.status_code == 409 and response.body == b'{"detail":{"reason":"x"}}'

"""The recommendations route reads its path and query parameters itself (api/params.py): it must refuse, accept and
document them exactly as a FastAPI route declaring them does. The app runs in process (real Redis and broker behind
its lifespan), with such a route added for reference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.routes.recommendations import MAX_EXCLUDE, Count, ItemIds, UserId
from recstream.settings import Settings
from tests.conftest import TEST_API_KEY, Endpoint, in_process_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROUTE = "/v1/users/{user_id}/recommendations"
REFERENCE = "/reference/users/{user_id}"

# (user id as it appears in the path, query string)
REFUSED = [
    ("u1", "k=0"),
    ("u1", "k=abc"),
    ("u1", "k="),
    ("u1", "k=1.5"),
    ("u1", "k=-3"),
    ("bad%20id", ""),
    ("x" * 129, ""),
    ("a%23b", ""),
    ("bad%20id", "k=0"),  # both wrong: both errors, in order
    ("u1", "k=5&k=0"),  # the last one counts
    ("u1", "exclude="),
    ("u1", "exclude=v1,,v2"),
    ("u1", "exclude=,v1"),
    ("u1", "exclude=v1,"),
    ("u1", "exclude=v%201"),
    ("u1", "k=0&exclude=v%231"),  # both wrong: both errors
]
ACCEPTED = [
    ("u1", ""),
    ("u1", "k=5"),
    ("u1", "k=%205"),
    ("u1", "k=0&k=5"),
    ("u.-_:@9", "k=100"),
    ("x" * 128, ""),
    ("u1", "exclude=v1"),
    ("u1", "k=3&exclude=v1,v.2,a:b@c-d_e"),
]


@pytest.fixture(scope="module")
def client(redis_endpoint: Endpoint, broker_endpoint: Endpoint) -> Iterator[TestClient]:
    app = in_process_app(redis_endpoint, broker_endpoint)
    _add_reference_route(app)
    with TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as test:
        yield test


def _add_reference_route(app: FastAPI) -> None:
    """The same parameters declared to FastAPI, which validates and documents them itself."""

    @app.get(REFERENCE)
    async def reference(user_id: UserId, k: Count = None, exclude: ItemIds = None) -> dict[str, Any]:
        return {"user_id": user_id, "k": k, "exclude": exclude}


def _both(client: TestClient, user: str, query: str) -> tuple[Any, Any]:
    suffix = f"?{query}" if query else ""
    return (
        client.get(ROUTE.format(user_id=user) + suffix),
        client.get(REFERENCE.format(user_id=user) + suffix),
    )


@pytest.mark.parametrize(("user", "query"), REFUSED)
def test_bad_parameters_get_the_422_a_declaring_route_gives(client: TestClient, user: str, query: str) -> None:
    ours, reference = _both(client, user, query)
    assert reference.status_code == 422, reference.text
    assert ours.status_code == 422, ours.text
    assert ours.json() == reference.json()
    assert ours.json()["errors"][0]["field"] in ("path.user_id", "query.k", "query.exclude")


@pytest.mark.parametrize("k", ["101", "1001", "99999999999999999999"])
def test_a_k_over_the_limit_is_refused_naming_the_setting(client: TestClient, k: str) -> None:
    # (RECSTREAM_K_MAX is 100 here: whatever the k, the refusal names that limit, not another)
    response = client.get(ROUTE.format(user_id="u1") + f"?k={k}")
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "query.k", "message": f"k={k} is above the limit of 100 (RECSTREAM_K_MAX)"}
    ]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (
            [f"v{n}" for n in range(MAX_EXCLUDE + 1)],
            f"exclude has {MAX_EXCLUDE + 1} item ids; at most {MAX_EXCLUDE} are taken",
        ),
        (["v1", "x" * 129], "item id xxxxxxxxxxxxxxxxxxxx… in exclude is 129 characters; at most 128"),
    ],
)
def test_an_exclude_over_the_limits_is_refused_saying_which(client: TestClient, ids: list[str], message: str) -> None:
    response = client.get(ROUTE.format(user_id="u1"), params={"exclude": ",".join(ids)})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": "query.exclude", "message": message}]
    at_limit = [*(f"v{n}" for n in range(MAX_EXCLUDE - 1)), "x" * 128]
    response = client.get(ROUTE.format(user_id="u1"), params={"exclude": ",".join(at_limit)})
    assert response.status_code == 503, response.text  # past the parameters: no model is loaded here


def test_the_longest_exclude_fits_under_the_request_head_bound() -> None:
    """MAX_EXCLUDE ids of 128 characters, every character percent-encoded (the worst a client may send), with the
    request line's other parts: under RECSTREAM_MAX_HEADER_BYTES, so a request at the limits gets its answer (a 422
    naming them past them), never a 431 for its head."""
    value = ",".join(["@" * 128] * MAX_EXCLUDE)
    line = f"GET {ROUTE.format(user_id='x' * 128)}?k=100&exclude={quote(value, safe='')} HTTP/1.1\r\n"
    assert len(line) + 4096 < Settings().max_header_bytes  # (4 KiB for the headers a client sends)


def test_exclude_given_twice_is_refused(client: TestClient) -> None:
    response = client.get(ROUTE.format(user_id="u1") + "?exclude=v1&exclude=v2")
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "field": "query.exclude",
            "message": "exclude is given more than once: give it once, its item ids comma-separated",
        }
    ]


@pytest.mark.parametrize(("user", "query"), ACCEPTED)
def test_good_parameters_pass_as_they_pass_a_declaring_route(client: TestClient, user: str, query: str) -> None:
    ours, reference = _both(client, user, query)
    assert reference.status_code == 200, reference.text
    # no worker runs here, so the route answers that no model is loaded: it got past the parameters
    assert ours.status_code == 503 and "no model is loaded" in ours.json()["detail"], ours.text


def test_the_key_is_checked_before_the_parameters(client: TestClient) -> None:
    response = client.get(ROUTE.format(user_id="bad%20id") + "?k=0", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


def test_the_openapi_page_documents_the_parameters_as_a_declaring_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ours, reference = paths[ROUTE]["get"], paths[REFERENCE]["get"]
    assert ours["parameters"] == reference["parameters"]
    assert ours["responses"]["422"] == reference["responses"]["422"]
    assert [p["name"] for p in ours["parameters"]] == ["user_id", "k", "exclude"]

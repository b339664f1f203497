"""What a refused request's body says, and how the OpenAPI page documents it.

Every refusal the app words itself says what went wrong in ``detail`` (:class:`Problem`). A request whose path,
query or body fails validation gets a 422 with ``detail`` (one sentence a person can act on) and ``errors``, one per
wrong field, each naming it (``query.k``, ``path.user_id``, ``body.item_ids``) and saying what is wrong:
:class:`InvalidRequest`, made by :func:`invalid_request` from FastAPI's ``RequestValidationError`` (the app's
handler) and by a route's own check of a parameter (:func:`refuse`). FastAPI documents every such 422 with its own
shape instead (``HTTPValidationError``: ``detail`` a list of ``loc``, ``msg`` and ``type``), which is not what the
app answers; :func:`document_invalid_requests` makes the page say what the app does, for every route, so a client
generated from it reads the 422 it gets.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recstream.events import describe_errors, summarize_errors

_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


class Problem(BaseModel):
    model_config = ConfigDict(extra="forbid")  # the page says no other field comes: a client may rely on it

    detail: str = Field(description="What went wrong, and what to do about it.")


class FieldProblem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Where the problem is: `query.k`, `path.user_id`, `body.item_ids`, `ts`, ...")
    message: str = Field(description="What is wrong with it.")


class InvalidRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="Every problem in one sentence: `invalid request: <field>: <message>; ...`.")
    errors: list[FieldProblem]


#: The page's entry for a 422: what :func:`document_invalid_requests` puts in place of FastAPI's, and what a route that
#: validates its own parameters documents (``api.params.documented``).
INVALID_REQUEST_RESPONSE: dict[str, Any] = {
    "description": "Invalid request: each error names its field (`query.k`, `path.user_id`, `body.…`) and what is "
    "wrong with it.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidRequest"}}},
}


def invalid_request(errors: Iterable[Mapping[str, Any]]) -> JSONResponse:
    """The 422 for pydantic-style ``errors`` (each with ``loc`` and ``msg``), as :class:`InvalidRequest`."""
    problems = describe_errors(errors)
    body = {"detail": f"invalid request: {summarize_errors(problems)}", "errors": problems}
    return JSONResponse(body, status_code=422)


def refuse(where: str, name: str, message: str) -> RequestValidationError:
    """The error to raise for a parameter a route refuses itself (``where``: ``"query"``, ``"path"`` or ``"body"``):
    the app answers it as it answers FastAPI's own validation."""
    return RequestValidationError([{"loc": (where, name), "msg": message, "type": "value_error"}])


def document_invalid_requests(app: FastAPI) -> None:
    """Have ``app``'s OpenAPI page document each route's 422 as :class:`InvalidRequest`, where FastAPI wrote its own
    (routes added later included: the page is made on its first request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document(build())
        return app.openapi_schema  # type: ignore[return-value]  # set by build()

    app.openapi = openapi  # type: ignore[method-assign]


def _document(page: dict[str, Any]) -> None:
    for operations in page.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            schema = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == _FASTAPI_422:
                responses["422"] = copy.deepcopy(INVALID_REQUEST_RESPONSE)
    schemas = page.setdefault("components", {}).setdefault("schemas", {})
    model = InvalidRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(model.pop("$defs", {}))
    schemas["InvalidRequest"] = model
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's (in this order), unless still named
        if f'"#/components/schemas/{name}"' not in json.dumps(page):
            schemas.pop(name, None)

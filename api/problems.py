"""What a refused request's body says, and how the OpenAPI page documents it.

Every refusal the app words itself says what went wrong in ``detail`` (:class:`Problem`). A request whose path,
query or body fails validation gets a 422 with ``detail`` (one sentence a person can act on) and ``errors``, one per
wrong field, each naming it (``query.k``, ``path.user_id``, ``body.item_ids``) and saying what is wrong:
:class:`InvalidRequest`, made by :func:`invalid_request` from FastAPI's ``RequestValidationError`` (the app's
handler) and by a route's own check of a parameter (:func:`refuse`). FastAPI documents every such 422 with its own
shape instead (``HTTPValidationError``: ``detail`` a list of ``loc``, ``msg`` and ``type``), which is not what the
app answers; :func:`document_invalid_requests` makes the page say what the app does, for every route, so a client
generated from it reads the 422 it gets.

Where the framework would answer in its own bare words, the app says what to change instead: a JSON body sent
without saying it is JSON (a 415 naming ``Content-Type: application/json``, where FastAPI's 422 said "Input should
be a valid dictionary" of a body that was one), a body it could not parse (a 400 saying why: nested too deeply), an
unknown route (404) and a method a route does not take (405, naming those it takes). The page documents the 400, 413
and 415 of every route with such a body.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def explain_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The app's answer to a request that failed validation: the 422 of :func:`invalid_request`, or a 415 when the
    route takes a JSON body and the request did not say it sent one (FastAPI then hands the route's model the raw
    bytes, and the 422 would say "Input should be a valid dictionary", about a body that may well be a JSON object).

    (``POST /v1/events`` reads its body as JSON whatever its content type: it never gets here for that.)"""
    errors = exc.errors()
    if [(tuple(e["loc"]), e.get("type")) for e in errors] == [(("body",), "model_attributes_type")]:
        content_type = request.headers.get("content-type")
        if content_type is None or not _json_media_type(content_type):
            sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            detail = f"the body must be JSON sent with Content-Type: application/json (this request had {sent})"
            return JSONResponse({"detail": detail}, status_code=415)
    return invalid_request(errors)


#: FastAPI's and Starlette's own wording of some refusals, and what the app says instead (:func:`explain_http_error`).
_UNHELPFUL = {
    (400, "There was an error parsing the body"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
}


def _unreadable(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a JSON body (``cause``: what its parser raised), and what to do."""
    if isinstance(cause, RecursionError):
        return "it is nested too deeply; send one JSON value nested at most a few hundred levels"
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 text ({cause.reason} at byte {cause.start}); send JSON encoded as UTF-8"
    what = f" ({type(cause).__name__})" if cause is not None else ""
    return f"its parser failed{what}; send one JSON value, encoded as UTF-8"


def explain_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """The answer to an ``HTTPException``: as FastAPI gives it (``{"detail": ...}`` and its headers), but a sentence a
    person can act on in place of the framework's bare words for an unknown route, a method a route does not take, and
    a JSON body it could not parse (nested too deeply for Python's parser, say); the app's own refusals as they are."""
    detail: Any = exc.detail
    if isinstance(detail, str) and (exc.status_code, detail) in _UNHELPFUL:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            detail = f"no such route: {where} (GET /openapi.json, or /docs, lists every route)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow") or "another method"
            detail = f"{request.url.path} does not take {request.method}: it takes {allowed}"
        else:
            detail = f"the body could not be read as JSON: {_unreadable(exc.__cause__)}"
    if exc.status_code in (204, 304):  # (no body allowed)
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


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


#: The refusals of a route whose JSON body FastAPI reads (``POST /v1/events`` reads its own, and documents its own).
_BODY_REFUSALS = {
    "400": "The body could not be read as JSON (nested too deeply, or not UTF-8).",
    "413": "The body is larger than RECSTREAM_MAX_BODY_BYTES.",
    "415": "The body was not sent as JSON: send it with Content-Type: application/json.",
}


def _document(page: dict[str, Any]) -> None:
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in page.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            schema = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == _FASTAPI_422:
                responses["422"] = copy.deepcopy(INVALID_REQUEST_RESPONSE)
            if "requestBody" in operation and "400" not in responses:
                for status, description in _BODY_REFUSALS.items():
                    responses.setdefault(status, {"description": description, "content": copy.deepcopy(problem)})
    schemas = page.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema())
    model = InvalidRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(model.pop("$defs", {}))
    schemas["InvalidRequest"] = model
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's (in this order), unless still named
        if f'"#/components/schemas/{name}"' not in json.dumps(page):
            schemas.pop(name, None)

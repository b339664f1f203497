"""Path and query parameters a hot route reads itself, validated and documented as FastAPI would.

FastAPI validates a route's declared parameters through its dependency solver, which costs a recommendation ~9% of its
CPU at one connection (py-spy). A :class:`Parameter` does the same with the same annotation: the value taken from the
request as FastAPI takes it (absent: the default, unvalidated), validated by a pydantic ``TypeAdapter`` of that
annotation, its errors located as FastAPI locates them (``("query", "k")``), all of a request's errors raised together
as FastAPI's :class:`~fastapi.exceptions.RequestValidationError` (so the app's handler words them). :func:`documented`
gives the route's OpenAPI ``parameters`` (and its 422) to pass as ``openapi_extra``, since FastAPI documents only the
parameters of the handler's signature. ``tests/test_request_params.py`` checks both against a route declaring them.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from api.problems import INVALID_REQUEST_RESPONSE


class Parameter:
    """One path or query parameter named ``name`` of type ``annotation`` (``Annotated[..., Path(...)]`` or
    ``Annotated[..., Query(...)]``). A path parameter is always there; a query parameter is optional, ``default``
    when the query leaves it out (a required one would need FastAPI's "missing" error: not made here)."""

    def __init__(self, name: str, where: Literal["path", "query"], annotation: Any, default: Any = None) -> None:
        self.name = name
        self.where = where
        self.default = default
        self._adapter = TypeAdapter(annotation)
        infos = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, FieldInfo)]
        self._description = infos[0].description if infos else None

    def read(self, request: Request, errors: list[dict[str, Any]]) -> Any:
        """The parameter's value in ``request``; None with its errors appended to ``errors`` when invalid."""
        raw = request.path_params.get(self.name) if self.where == "path" else request.query_params.get(self.name)
        if raw is None:
            return self.default
        try:
            return self._adapter.validate_python(raw)
        except ValidationError as exc:
            loc = (self.where, self.name)
            errors.extend({**e, "loc": loc + tuple(e["loc"])} for e in exc.errors(include_url=False))
            return None

    def openapi(self) -> dict[str, Any]:
        """The parameter's entry in an operation's ``parameters``, as FastAPI writes it."""
        schema = {**self._adapter.json_schema(), "title": self.name.replace("_", " ").title()}
        entry: dict[str, Any] = {"name": self.name, "in": self.where, "required": self.where == "path"}
        entry["schema"] = schema
        if self._description is not None:
            entry["description"] = self._description
        return entry


def read_all(request: Request, *parameters: Parameter) -> list[Any]:
    """Each parameter's value, in order; raises :class:`RequestValidationError` with every error when any is bad."""
    errors: list[dict[str, Any]] = []
    values = [p.read(request, errors) for p in parameters]
    if errors:
        raise RequestValidationError(errors)
    return values


def documented(*parameters: Parameter) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads ``parameters`` itself: their entries and the 422 they may give."""
    return {"parameters": [p.openapi() for p in parameters], "responses": {"422": INVALID_REQUEST_RESPONSE}}

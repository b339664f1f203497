"""HTTP hygiene around every route: security headers, a body size limit, and the docs page with its own CSP.

* Every response says ``nosniff``, no referrer, never framed; JSON answers get a CSP that allows
  nothing (``default-src 'none'``), since no browser should run anything from them.
* ``/docs`` (Swagger UI) is served here rather than by FastAPI so that its CSP can be exact:
  scripts only from jsDelivr (where FastAPI takes Swagger UI from) plus the page's one inline
  script, allowed by its SHA-256 hash rather than ``'unsafe-inline'``.
* Bodies larger than ``RECSTREAM_MAX_BODY_BYTES`` are refused on every route before a route
  (or an unauthenticated caller) makes the API buffer them.
"""

from __future__ import annotations

import base64
import hashlib
import re

import orjson
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SWAGGER_ASSETS = "https://cdn.jsdelivr.net"
#: Swagger UI's files, of one version, each with the hash a browser checks before running or applying it (Subresource
#: Integrity): a new release of ``swagger-ui-dist`` or a compromised CDN cannot run code on the API's origin, where an
#: operator pastes an admin key. The hashes are of the files in the npm package ``swagger-ui-dist-5.36.0.tgz``; to
#: move to another version, take both files' ``sha384`` from its package (``openssl dgst -sha384 -binary | base64``).
SWAGGER_VERSION = "5.36.0"
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
    "swagger-ui.css": "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
}
FAVICON_HOST = "https://fastapi.tiangolo.com"
API_CSP = "default-src 'none'; frame-ancestors 'none'"
ALWAYS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def docs_page(title: str, openapi_url: str) -> tuple[bytes, str]:
    """The Swagger UI page and the CSP that lets exactly it load: its two files (of :data:`SWAGGER_VERSION`, checked
    against their hashes) and its inline script."""
    url = {name: f"{SWAGGER_ASSETS}/npm/swagger-ui-dist@{SWAGGER_VERSION}/{name}" for name in SWAGGER_FILES}
    js, css = url["swagger-ui-bundle.js"], url["swagger-ui.css"]
    html = get_swagger_ui_html(openapi_url=openapi_url, title=title, swagger_js_url=js, swagger_css_url=css).body
    for name, integrity in SWAGGER_FILES.items():
        tag = f'"{url[name]}"'.encode()
        if html.count(tag) != 1:
            raise RuntimeError(f"FastAPI's Swagger UI page no longer names {url[name]} once: check api/hygiene.py")
        html = html.replace(tag, tag + f' integrity="{integrity}" crossorigin="anonymous"'.encode())
    inline = re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    csp = (
        f"default-src 'none'; script-src {js} {hashes}; style-src {css} 'unsafe-inline'; "
        f"img-src 'self' data: {FAVICON_HOST}; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    )
    return bytes(html), csp


def add_docs_route(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at ``path`` with its exact CSP (create the app with ``docs_url=None``)."""
    html, csp = docs_page(f"{app.title} - Swagger UI", app.openapi_url or "/openapi.json")

    @app.get(path, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})


class SecurityHeadersMiddleware:
    """Adds the headers above to every HTTP response (a route may set its own CSP)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in ALWAYS if name not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", API_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    pass


#: The largest body of the routes that take at most a reason (the admin changes: ``{"reason": ...}``, at most 500
#: characters): FastAPI reads and parses a body before a route's dependencies check its key, so a request without a
#: valid key costs a parse of at most this much there.
SMALL_BODY_BYTES = 8_192
#: The routes whose bodies may be larger, and their bound (None: RECSTREAM_MAX_BODY_BYTES alone). ``/v1/events``
#: checks the key before it reads the body; ``/v1/scores`` takes up to 1,000 ids of at most 128 characters (~135 KB).
LARGE_BODY_ROUTES: dict[str, int | None] = {"/v1/events": None, "/v1/scores": 262_144}


class BodyLimitMiddleware:
    """413 for any request body above ``limit`` bytes, declared (Content-Length) or streamed (chunked); on the routes
    not in :data:`LARGE_BODY_ROUTES`, above :data:`SMALL_BODY_BYTES` (or ``limit`` if smaller)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._limits = {
            path: limit if bound is None else min(bound, limit) for path, bound in LARGE_BODY_ROUTES.items()
        }
        self._small = min(SMALL_BODY_BYTES, limit)

    def _limit_of(self, path: str) -> tuple[int, str]:
        """The body limit of the route at ``path``, and what sets it (for the 413's message)."""
        limit = self._limits.get(path.rstrip("/") or "/", self._small)  # (/v1/scores/: FastAPI redirects it there)
        return limit, "RECSTREAM_MAX_BODY_BYTES" if limit == self.limit else "this route's limit"

    async def _refuse(self, send: Send, detail: str) -> None:
        body = orjson.dumps({"detail": detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, named = self._limit_of(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            detail = f"request body is {int(declared)} bytes; the limit is {limit} ({named})"
            await self._refuse(send, detail)
            return
        received = 0
        overflowed = False
        started = False
        streamed = f"request body is larger than {limit} bytes ({named})"

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            # A route that caught the overflow while parsing answers something else (FastAPI: 400): say 413.
            nonlocal started
            if overflowed:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, streamed)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, streamed)

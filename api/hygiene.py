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
FAVICON_HOST = "https://fastapi.tiangolo.com"
API_CSP = "default-src 'none'; frame-ancestors 'none'"
ALWAYS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def docs_page(title: str, openapi_url: str) -> tuple[bytes, str]:
    """The Swagger UI page and the CSP that lets exactly it load."""
    html = get_swagger_ui_html(openapi_url=openapi_url, title=title).body
    inline = re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    csp = (
        f"default-src 'none'; script-src {SWAGGER_ASSETS} {hashes}; style-src {SWAGGER_ASSETS} 'unsafe-inline'; "
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


class BodyLimitMiddleware:
    """413 for any request body above ``limit`` bytes, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send, detail: str) -> None:
        body = orjson.dumps({"detail": detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            detail = f"request body is {int(declared)} bytes; the limit is {self.limit} (RECSTREAM_MAX_BODY_BYTES)"
            await self._refuse(send, detail)
            return
        received = 0
        overflowed = False
        started = False
        streamed = f"request body is larger than {self.limit} bytes (RECSTREAM_MAX_BODY_BYTES)"

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
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

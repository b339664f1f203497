"""``/dashboard``: the built-in live page (static HTML, CSS and JS; no build step, no extra server).

The page itself holds no data: it asks for an admin API key, keeps it in the browser tab, and
polls ``GET /v1/stats`` (admin scope) with it. Its CSP allows only this origin's script, style
and fetches.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
FILES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
CONTENT = {name: (STATIC / name).read_bytes() for name in FILES}

router = APIRouter(include_in_schema=False)


def _serve(name: str) -> Response:
    return Response(CONTENT[name], media_type=FILES[name], headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/dashboard")
async def dashboard() -> Response:
    return _serve("dashboard.html")


@router.get("/dashboard/dashboard.css")
async def dashboard_css() -> Response:
    return _serve("dashboard.css")


@router.get("/dashboard/dashboard.js")
async def dashboard_js() -> Response:
    return _serve("dashboard.js")

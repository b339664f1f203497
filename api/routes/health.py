"""``/healthz`` (the process is alive), ``/readyz`` (it can do its job) and ``/metrics``.

``/readyz`` answers:

* ``200 {"status": "ready"}``: Redis and the broker answer and a model is loaded;
* ``200 {"status": "degraded"}``: a model is loaded but Redis or the broker does not answer:
  recommendations are served from the model in memory. Without Redis they say ``"degraded": true``
  (seen items not excluded) and new versions are picked up once it is back; without the broker,
  ingest answers 503 with Retry-After;
* ``503 {"status": "not ready"}``: no model loaded.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ApiState, get_state
from recstream import metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


REDIS_PROBE_SECONDS = 1.0


@router.get(
    "/readyz",
    responses={
        200: {
            "description": '"ready", or "degraded": Redis or the broker unreachable; recommendations are served '
            "from the model in memory (ingest answers 503 while the broker is away)."
        },
        503: {"description": "No model is loaded."},
    },
)
async def readyz(state: Annotated[ApiState, Depends(get_state)]) -> Any:
    try:
        redis_ok = bool(await asyncio.wait_for(state.redis.ping(), timeout=REDIS_PROBE_SECONDS))
    except Exception:  # noqa: BLE001 - readiness probe
        redis_ok = False
    broker_ok = await state.producer.ping()
    model = state.models.model
    checks = {
        "redis": "ok" if redis_ok else "unreachable",
        "broker": "ok" if broker_ok else "unreachable",
        "model": f"v{model.version}" if model else "none loaded",
    }
    # Recommendations need only the model in memory: a load balancer keeps a process that has one.
    # Without Redis, seen items are not excluded; without the broker, ingest answers 503 + Retry-After.
    if model is None:
        status, code = "not ready", 503
    elif not (redis_ok and broker_ok):
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return JSONResponse({"status": status, "checks": checks}, status_code=code)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(metrics.exposition_registry()), media_type=CONTENT_TYPE_LATEST)

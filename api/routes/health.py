"""``/healthz`` (the process is alive), ``/readyz`` (it can do its job) and ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ApiState, get_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis or the broker is unreachable, or no model is loaded."}})
async def readyz(state: Annotated[ApiState, Depends(get_state)]) -> Any:
    try:
        redis_ok = bool(await asyncio.wait_for(state.redis.ping(), timeout=2))
    except Exception:  # noqa: BLE001 - readiness probe
        redis_ok = False
    broker_ok = await state.producer.ping()
    model = state.models.model
    checks = {
        "redis": "ok" if redis_ok else "unreachable",
        "broker": "ok" if broker_ok else "unreachable",
        "model": f"v{model.version}" if model else "none loaded",
    }
    ready = redis_ok and broker_ok and model is not None
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

"""``GET /v1/stats``: one JSON summary of the live system for operators and the built-in dashboard."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.deps import ADMIN, AUTH_RESPONSES, REDIS_RESPONSES, ApiState, get_state
from recstream import metrics
from store.model_store import guard_report

router = APIRouter(tags=["operations"], dependencies=[Depends(ADMIN)], responses={**AUTH_RESPONSES, **REDIS_RESPONSES})


def latency_by_route() -> dict[str, dict[str, Any]]:
    """Requests and estimated p50/p99 (upper bucket bounds) per route, since the API started, from its histogram (of
    every API process when several serve one port). A quantile past the largest bucket (slower than
    ``metrics.REQUEST_SECONDS``' last bound: requests waiting out a broker's timeout, say) is that bound, with
    ``p50_beyond_buckets`` / ``p99_beyond_buckets`` true: JSON has no infinity."""
    buckets: dict[str, dict[float, float]] = {}
    counts: dict[str, float] = {}
    for family in metrics.exposition_registry().collect():
        if family.name != "recstream_http_request_duration_seconds":
            continue
        for sample in family.samples:
            route = sample.labels.get("route", "?")
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                per_route = buckets.setdefault(route, {})
                per_route[bound] = per_route.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[route] = counts.get(route, 0.0) + sample.value
    out = {}
    for route, cumulative in buckets.items():
        total = counts.get(route, 0.0)
        if not total:
            continue
        ordered = sorted(cumulative.items())
        top = max((bound for bound, _ in ordered if math.isfinite(bound)), default=0.0)

        def quantile(q: float, ordered: list[tuple[float, float]] = ordered, total: float = total) -> float:
            return next((bound for bound, c in ordered if c >= q * total), math.inf)

        p50, p99 = quantile(0.5), quantile(0.99)
        out[route] = {
            "requests": total,
            "p50_seconds": min(p50, top),
            "p99_seconds": min(p99, top),
            "p50_beyond_buckets": math.isinf(p50),
            "p99_beyond_buckets": math.isinf(p99),
        }
    return out


@router.get("/v1/stats")
async def stats(state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    store = state.store
    versions = await store.versions()
    current = await store.current_version()
    meta = next((v for v in versions if v["version"] == current), {})
    created = meta.get("created")
    age = time.time() - datetime.fromisoformat(created).timestamp() if created else None
    serving = state.models.model
    return {
        "time": time.time(),
        "model": {
            "current": current,
            "serving": serving.version if serving else None,
            "kind": meta.get("model", {}).get("kind"),
            "events_learned": meta.get("events_learned", 0),
            "events_labelled": meta.get("events_labelled", 0),
            "events_rejected": meta.get("events_rejected", 0),
            "progressive_auc": meta.get("progressive_auc"),
            "progressive_logloss": meta.get("progressive_logloss"),
            "checkpoint_age_seconds": age,
            "offsets": meta.get("offsets", {}),
        },
        "versions": [
            {
                key: v.get(key)
                for key in ("version", "created", "events_learned", "progressive_auc", "parent", "current", "pinned")
            }
            for v in versions
        ],
        "hidden_items": len(state.models.hidden.items) if state.models.hidden else 0,  # (as this process holds them)
        "gate": await store.gate_counts(),
        "guard": guard_report(await store.guard_status()),
        "api": latency_by_route(),
    }

"""``recstream status``: a readable terminal summary of the live system, read from Redis.

Shows the model version being served and what it has learned, how old the last checkpoint is,
which worker writes it (the writer lease), its progressive quality, the model guard, what the
quality gate held by reason, and the retained versions an operator could roll back to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from recstream import components
from recstream.settings import Settings, get_settings
from store.model_store import guard_report


async def collect(settings: Settings) -> dict[str, Any]:
    redis = components.redis_client(settings)
    store = components.model_store(settings, redis)
    try:
        current = await store.current_version()
        versions = [int(v) for v in await redis.zrange(store.keys.versions, 0, -1)]
        metas = {}
        for version in versions:
            raw = await redis.hget(store.keys.version(version), "meta")
            metas[version] = json.loads(raw) if raw else {}
        holder = await redis.get(store.keys.writer_lease)
        expires_ms = await redis.pttl(store.keys.writer_lease)
        return {
            "current": current,
            "writer": {
                "holder": holder.decode() if holder is not None else None,
                "expires_in": expires_ms / 1000 if holder is not None and expires_ms >= 0 else None,
                "lease_seconds": settings.worker_lease_seconds,  # as this command reads it (the worker's, normally)
            },
            "versions": metas,
            "gate": await store.gate_counts(),
            "guard": guard_report(await store.guard_status()),
            "offsets": {f"{t}/{p}": o for (t, p), o in (await store.offsets()).items()},
        }
    finally:
        await redis.aclose()


def render(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = []
    current = status["current"]
    meta = status["versions"].get(current, {}) if current is not None else {}
    if current is None:
        lines.append("model      none yet: the worker has not written a checkpoint")
    else:
        age = ""
        if meta.get("created"):
            age = f", checkpoint {now - datetime.fromisoformat(meta['created']).timestamp():.0f} s ago"
        model = meta.get("model", {}).get("kind", "?")
        lines.append(f"model      v{current} ({model}){age}")
        lines.append(
            f"learned    {meta.get('events_learned', 0):,} events ({meta.get('events_labelled', 0):,} labelled), "
            f"{meta.get('events_rejected', 0):,} rejected by the contract"
        )
        auc, logloss = meta.get("progressive_auc"), meta.get("progressive_logloss")
        if auc is not None:
            lines.append(f"quality    progressive AUC {auc:.3f}, log loss {logloss:.3f} (predicted before learned)")
    writer = status.get("writer") or {}
    if writer.get("holder"):
        left, seconds = writer.get("expires_in"), writer.get("lease_seconds")
        renewed = f" (its lease runs {left:.0f} s more unless renewed)" if left is not None else ""
        if left is not None and seconds and seconds - left > seconds / 2:  # a running worker renews every third
            renewed = (
                f" (not renewed for {seconds - left:.0f} s, where a running worker renews it every {seconds / 3:.0f} s"
                f" with RECSTREAM_WORKER_LEASE_SECONDS={seconds:g}: it may have stopped; the lease runs out in"
                f" {left:.0f} s and a standby then takes over)"
            )
        lines.append(f"writer     {writer['holder']}{renewed}")
    else:
        lines.append("writer     none: no worker holds the writer lease (none runs, or the last one stopped)")
    guard = status["guard"]
    since = guard.get("since")
    paused = ""
    if since is not None:
        try:
            when = datetime.fromtimestamp(since, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            paused = f" since {when} ({now - since:,.0f} s ago)"
        except (OverflowError, OSError, ValueError):  # not a time a clock gives: shown as it is
            paused = f" since {since:g} (Unix seconds)"
    lines.append(f"guard      {guard.get('state') or 'learning'}{paused}")
    gate = status["gate"]
    total = sum(gate.values())
    if gate:
        width = max(len(reason) for reason in gate)
        lines.append(f"gate       {total:,} held or dropped:")
        top = max(gate.values())
        for reason, count in sorted(gate.items(), key=lambda kv: -kv[1]):
            bar = "█" * max(1, round(30 * count / top))
            lines.append(f"             {reason:<{width}} {count:>9,} {bar}")
    else:
        lines.append("gate       nothing held")
    if status["offsets"]:
        lines.append("offsets    " + ", ".join(f"{k}={v:,}" for k, v in sorted(status["offsets"].items())))
    if status["versions"]:
        lines.append(
            "versions   "
            + ", ".join(
                f"v{v}{'*' if v == current else ''} ({m.get('events_learned', 0):,})"
                for v, m in sorted(status["versions"].items())
            )
        )
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="summary of the live system (model, checkpoint, gate, guard) from Redis")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    status = asyncio.run(collect(get_settings()))
    print(json.dumps(status, indent=2, default=str) if args.json else render(status))
    return 0

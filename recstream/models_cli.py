"""``recstream models``: list, show, promote, roll back and pin model versions (reads and writes Redis)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from recstream import components
from recstream.cli_args import printable, when
from recstream.settings import get_settings
from store.model_store import BeforeErasure, CheckpointConflict, ModelStore, SnapshotRefused


class Refused(Exception):
    """A change the store refused (no such version, a snapshot that does not verify, a race lost): one line."""


def _change(action: Callable[[ModelStore], Awaitable[Any]]) -> Any:
    """:func:`_run` for a change: the store's refusals become :class:`Refused` with what it said."""
    try:
        return _run(action)
    except KeyError as exc:
        raise Refused(exc.args[0] if exc.args else "not found") from exc
    except (SnapshotRefused, CheckpointConflict, BeforeErasure) as exc:
        raise Refused(str(exc)) from exc


def _run(action: Callable[[ModelStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        settings = get_settings()
        redis = components.redis_client(settings)
        try:
            return await action(components.model_store(settings, redis))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def _created(value: Any) -> str:
    """A version's creation time in UTC to the second (``-`` if it has none, as written if it is not a time).

    >>> _created("2026-12-06T03:41:16.617301+00:00"), _created("2026-12-06T04:41:16+01:00"), _created(None)
    ('2026-12-06 03:41:16Z', '2026-12-06 03:41:16Z', '-')
    """
    if not value:
        return "-"
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if at.tzinfo is None:
        return str(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(versions: list[dict[str, Any]]) -> str:
    """The versions, one a line, newest last.

    >>> print(table([{"version": 7, "current": True, "pinned": True, "created": "2026-12-06T03:41:16.6+00:00",
    ...               "events_learned": 1200, "progressive_auc": 0.71, "model": {"kind": "item_cooccurrence"}}]))
     version     created                  events     AUC  model                parent
           7  *P 2026-12-06 03:41:16Z      1,200   0.710  item_cooccurrence         -
    * current   P pinned (kept beyond retention)
    """
    header = f"{'version':>8}  {'':3}{'created':<21}{'events':>10}{'AUC':>8}  {'model':<20}{'parent':>7}"
    lines = [header]
    for v in versions:
        flags = ("*" if v["current"] else " ") + ("P" if v["pinned"] else " ") + " "
        auc = v.get("progressive_auc")
        model = v.get("contestant") or v.get("model", {}).get("kind", "?")
        lines.append(
            f"{v['version']:>8}  {flags}{_created(v.get('created')):<21}{v.get('events_learned', 0):>10,}"
            f"{(f'{auc:.3f}' if auc is not None else '-'):>8}  {model:<20}"
            f"{v.get('parent') or '-'!s:>7}"
        )
    lines.append("* current   P pinned (kept beyond retention)")
    return "\n".join(lines)


def contest_table(contest: dict[str, Any] | None) -> str:
    """The champion and each challenger's standing over its window of paired samples."""
    if not contest:
        return "no contest yet: the worker writes it with its first checkpoint"
    rule = contest.get("rule", {})
    lines = [
        f"champion: {contest['champion']} ({contest.get('champion_model')})",
        f"rule: promote when hit rate@{rule.get('k')} leads by >= {rule.get('margin')} over {rule.get('window')} "
        f"paired samples with McNemar z >= {rule.get('min_z')} (automatic: {'on' if rule.get('auto') else 'off'})",
    ]
    if not contest.get("challengers"):
        lines.append("no challengers (RECSTREAM_CHALLENGERS)")
        return "\n".join(lines)

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines.append(
        f"{'challenger':<22}{'model':<20}{'events':>12}{'samples':>9}{'champ':>7}{'chall':>7}{'z':>7}  verdict"
    )
    for name, c in contest["challengers"].items():
        lines.append(
            f"{name:<22}{c['model']:<20}{c['events_learned']:>12,}{c['samples']:>9}"
            f"{rate(c['champion_hit_rate']):>7}{rate(c['challenger_hit_rate']):>7}{c['z']:>7.2f}  "
            f"{'promote' if c.get('verdict') else 'keep champion'}"
        )
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list, show, promote, roll back and pin model versions")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="retained versions").set_defaults(func=_list)
    p = sub.add_parser("show", help="one version's metadata")
    p.add_argument("version", type=int)
    p.set_defaults(func=_show)
    p = sub.add_parser("promote", help="make a version current (API swaps now, the worker continues from it)")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True, help="why (recorded with the promotion)")
    p.set_defaults(func=_promote)
    p = sub.add_parser("rollback", help="promote the current version's parent (the version it grew from)")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_rollback)
    for name, pinned in (("pin", True), ("unpin", False)):
        p = sub.add_parser(name, help=f"{name} a version ({'kept beyond' if pinned else 'subject to'} retention)")
        p.add_argument("version", type=int)
        p.set_defaults(func=_pin, pinned=pinned)
    p = sub.add_parser("history", help="promotions and rollbacks, oldest first (the last 1,000 are kept)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, every field (for scripts)")
    p.add_argument("--last", type=int, metavar="N", help="only the last N records")
    p.set_defaults(func=_history)
    sub.add_parser("challengers", help="the champion and each shadow challenger's standing").set_defaults(
        func=_challengers
    )
    p = sub.add_parser("promote-challenger", help="make a challenger the champion at the worker's next checkpoint")
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why (recorded with the promotion)")
    p.set_defaults(func=_promote_challenger)


def _list(_args: argparse.Namespace) -> int:
    print(table(_run(lambda store: store.versions())))
    return 0


def _show(args: argparse.Namespace) -> int:
    versions = {v["version"]: v for v in _run(lambda store: store.versions())}
    if args.version not in versions:
        print(f"version {args.version} is not retained; `recstream models list` shows those that are")
        return 1
    print(json.dumps(versions[args.version], indent=2))
    return 0


def _promote(args: argparse.Namespace) -> int:
    _change(lambda store: store.promote(args.version, reason=args.reason))
    print(
        f"v{args.version} is current; API processes swap to it now, the worker continues from it at its next checkpoint"
    )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    version = _change(lambda store: store.rollback(reason=args.reason))
    print(f"rolled back to v{version}; events learned after it are skipped (docs/operations.md)")
    return 0


def _pin(args: argparse.Namespace) -> int:
    _change(lambda store: store.pin(args.version, pinned=args.pinned))
    print(f"v{args.version} {'pinned' if args.pinned else 'unpinned'}")
    return 0


def _history(args: argparse.Namespace) -> int:
    if args.last is not None and args.last < 0:
        print("--last takes a count of 0 or more")
        return 2
    records = _run(lambda store: store.promotions(args.last))
    if args.json:
        for record in records:
            print(json.dumps(record))
    else:
        print(history_table(records))
    return 0


def history_table(records: list[dict[str, Any]]) -> str:
    """Promotions and rollbacks, oldest first: when (UTC), versions, who, the models swapped, why."""
    if not records:
        return "no promotion or rollback yet"
    # (the actor and the reason came through the API: shown as text, never as terminal commands; the actor's column
    # as wide as the longest, api:<key name> say, and a space)
    actors = [printable(r.get("actor", "?")) for r in records]
    by = max(9, *(len(actor) + 1 for actor in actors))
    lines = [f"{'when (UTC)':<20}{'from':>6}{'to':>6}  {'by':<{by}}{'model':<32}reason"]
    for r, actor in zip(records, actors, strict=True):
        swap = f"{r.get('from_model')} -> {r.get('to_model')}" if r.get("from_model") or r.get("to_model") else "-"
        lines.append(
            f"{when(r.get('at')):<20}{r.get('from') or '-'!s:>6}{r.get('to') or '-'!s:>6}  "
            f"{actor:<{by}}{swap:<32}{'(rollback) ' if r.get('rollback') else ''}{printable(r.get('reason', ''))}"
        )
    return "\n".join(lines)


def _challengers(_args: argparse.Namespace) -> int:
    contest, requested = _run(lambda store: asyncio.gather(store.contest(), store.challenger_request()))
    print(contest_table(contest))
    if requested is not None:
        print(
            f"pending: promote {printable(requested.get('name'))} at the worker's next checkpoint (by "
            f"{printable(requested.get('actor'))}: {printable(requested.get('reason'))}); a promotion or rollback "
            "before it drops it"
        )
    return 0


def _promote_challenger(args: argparse.Namespace) -> int:
    contest = _run(lambda store: store.contest()) or {}
    known = sorted(contest.get("challengers", {}))
    if args.name not in known:
        print(f"no challenger named {args.name!r} runs now (challengers: {', '.join(known) or 'none'})")
        return 1
    _change(lambda store: store.request_challenger_promotion(args.name, reason=args.reason))
    print(f"{args.name} becomes champion at the worker's next checkpoint; `recstream models history` records it")
    return 0

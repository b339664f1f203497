"""``recstream items``: hide an item (take it down), unhide it, list the hidden ones (reads and writes Redis;
store/hidden_items.py says what hiding does)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from recstream import components
from recstream.events import Identifier
from recstream.settings import get_settings
from store.hidden_items import HiddenItems
from store.keys import Keys

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def _item_id(value: str) -> str:
    """An item id as the event contract takes one (``recstream.events.Identifier``)."""
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an item id (1-128 of A-Z a-z 0-9 . _ : @ -)") from None


def _reason(value: str) -> str:
    """As the API takes a reason: 1-500 characters (recorded, and printed by ``list``)."""
    if not 1 <= len(value) <= 500:
        raise argparse.ArgumentTypeError(f"a reason is 1 to 500 characters, this one {len(value)}")
    return value


def _printable(text: object) -> str:
    """``text`` with control characters shown as ``\\xNN``: a reason or an id recorded through the API reaches the
    terminal as text, never as terminal commands.

    >>> _printable("ok: a\\x1b[2Jb")
    'ok: a\\\\x1b[2Jb'
    """
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def _run(action: Callable[[HiddenItems], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        settings = get_settings()
        redis = components.redis_client(settings)
        try:
            return await action(HiddenItems(redis, Keys(settings.redis_prefix)))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("items", help="hide (take down) and unhide items, list the hidden ones")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, what in (("hide", "never recommend it, to anyone, until unhidden"), ("unhide", "recommend it again")):
        p = sub.add_parser(name, help=what)
        p.add_argument("item_id", type=_item_id)
        p.add_argument("--reason", required=True, type=_reason, help="why (recorded in the history)")
        p.set_defaults(func=_change, hide=name == "hide")
    p = sub.add_parser("list", help="the hidden items, and the last hides and unhides")
    p.set_defaults(func=_list)


def _change(args: argparse.Namespace) -> int:
    changed = _run(
        lambda store: (store.hide if args.hide else store.unhide)(args.item_id, reason=args.reason, actor="cli")
    )
    if args.hide:
        again = "" if changed else " (it already was: the new reason is recorded)"
        print(f"{args.item_id} is hidden{again}; API processes leave it out when it is announced (typically within a "
              "second), or at their next poll")  # fmt: skip
    else:
        print(f"{args.item_id} is recommended again" if changed else f"{args.item_id} was not hidden")
    return 0


def _when(at: Any) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(at, int | float) else "?"


def _list(_args: argparse.Namespace) -> int:
    async def read(store: HiddenItems) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await store.listing(), await store.history(20)

    hidden, history = _run(read)
    print(f"{len(hidden)} hidden" + (":" if hidden else ""))
    for entry in hidden:
        item, actor, reason = (_printable(entry.get(key, "?")) for key in ("item_id", "actor", "reason"))
        print(f"  {item:<32}{_when(entry.get('at'))}  {actor:<16}{reason}")
    if history:
        print("last changes (UTC):")
        for h in history:
            change, item, actor, reason = (
                _printable(h.get(key, "?")) for key in ("change", "item_id", "actor", "reason")
            )
            print(f"  {_when(h.get('at'))}  {change:<7}{item:<32}{actor:<16}{reason}")
    return 0

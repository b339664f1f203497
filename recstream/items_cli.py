"""``recstream items``: hide an item (take it down), unhide it, list the hidden ones (reads and writes Redis;
store/hidden_items.py says what hiding does)."""

from __future__ import annotations

import argparse
from typing import Any

from recstream.cli_args import identifier, printable, reason, run_on_redis, when
from store.hidden_items import HiddenItems


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("items", help="hide (take down) and unhide items, list the hidden ones")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, what in (("hide", "never recommend it, to anyone, until unhidden"), ("unhide", "recommend it again")):
        p = sub.add_parser(name, help=what)
        p.add_argument("item_id", type=identifier("an item id"))
        p.add_argument("--reason", required=True, type=reason, help="why (recorded in the history)")
        p.set_defaults(func=_change, hide=name == "hide")
    p = sub.add_parser("list", help="the hidden items, and the last hides and unhides")
    p.set_defaults(func=_list)


def _change(args: argparse.Namespace) -> int:
    changed = run_on_redis(
        HiddenItems,
        lambda store: (store.hide if args.hide else store.unhide)(args.item_id, reason=args.reason, actor="cli"),
    )
    if args.hide:
        again = "" if changed else " (it already was: the new reason is recorded)"
        print(f"{args.item_id} is hidden{again}; API processes leave it out when it is announced (typically within a "
              "second), or at their next poll")  # fmt: skip
    else:
        print(f"{args.item_id} is recommended again" if changed else f"{args.item_id} was not hidden")
    return 0


def _list(_args: argparse.Namespace) -> int:
    async def read(store: HiddenItems) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await store.listing(), await store.history(20)

    hidden, history = run_on_redis(HiddenItems, read)
    print(f"{len(hidden)} hidden" + (":" if hidden else ""))
    for entry in hidden:
        item, actor, reason = (printable(entry.get(key, "?")) for key in ("item_id", "actor", "reason"))
        print(f"  {item:<32}{when(entry.get('at'))}  {actor:<16}{reason}")
    if history:
        print("last changes (UTC):")
        for h in history:
            change, item, actor, reason = (
                printable(h.get(key, "?")) for key in ("change", "item_id", "actor", "reason")
            )
            print(f"  {when(h.get('at'))}  {change:<7}{item:<32}{actor:<16}{reason}")
    return 0

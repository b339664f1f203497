"""``recstream users``: erase a user (the right to be forgotten), and see where an erasure is (reads and writes
Redis; learner/erasure.py says what is erased, docs/operations.md what is not)."""

from __future__ import annotations

import argparse
from typing import Any

from recstream.cli_args import identifier, printable, reason, run_on_redis, when
from store.erasures import UserErasures


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("users", help="erase a user (right to be forgotten), see an erasure's state")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser(
        "erase", help="have the worker forget the user at its next checkpoint (usually within a second or two)"
    )
    p.add_argument("user_id", type=identifier("a user id"))
    p.add_argument("--reason", required=True, type=reason, help="why (kept with the request until it is applied)")
    p.set_defaults(func=_erase)
    p = sub.add_parser("erasure", help="where the user's erasure is: waiting, erased (and by which version), none")
    p.add_argument("user_id", type=identifier("a user id"))
    p.set_defaults(func=_status)


def _erase(args: argparse.Namespace) -> int:
    run_on_redis(UserErasures, lambda store: store.request(args.user_id, reason=args.reason, actor="cli"))
    print(f"{args.user_id}: erasure requested; the worker applies it at its next checkpoint (usually within a "
          f"second or two). `recstream users erasure {args.user_id}` says when it is done")  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    status = run_on_redis(UserErasures, lambda store: store.status(args.user_id))
    state = status["state"]
    if state == "waiting":
        print(f"{args.user_id}: waiting for the worker (asked {when(status['requested'])} UTC: "
              f"{printable(status['reason'])})")  # fmt: skip
    elif state == "erased":
        version = status["version"]
        print(f"{args.user_id}: erased by v{version} at {when(status['applied'])} UTC (asked "
              f"{when(status['requested'])} UTC); versions before v{version} are not promoted again")  # fmt: skip
    else:
        print(f"{args.user_id}: no erasure waiting or recorded")
    return 0 if state != "none" else 1

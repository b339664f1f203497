"""What the operator commands that change Redis share: their arguments checked as the API checks them, and what
they print made safe for a terminal."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError

from recstream import components
from recstream.events import Identifier
from recstream.settings import get_settings
from store.keys import Keys

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
Store = TypeVar("Store")


def run_on_redis(store: Callable[[aioredis.Redis, Keys], Store], action: Callable[[Store], Awaitable[Any]]) -> Any:
    """``action(store(redis, keys))`` on the configured Redis and key prefix (RECSTREAM_* settings), the client closed
    after; what it returns."""

    async def main() -> Any:
        settings = get_settings()
        redis = components.redis_client(settings)
        try:
            return await action(store(redis, Keys(settings.redis_prefix)))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def identifier(what: str) -> Callable[[str], str]:
    """An argparse type: an id as the event contract takes one (``recstream.events.Identifier``), ``what`` naming
    it in the error ("an item id", "a user id")."""

    def check(value: str) -> str:
        try:
            return _IDENTIFIER.validate_python(value)
        except ValidationError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what} (1-128 of A-Z a-z 0-9 . _ : @ -)") from None

    return check


def reason(value: str) -> str:
    """As the API takes a reason: 1-500 characters (recorded, and printed back)."""
    if not 1 <= len(value) <= 500:
        raise argparse.ArgumentTypeError(f"a reason is 1 to 500 characters, this one {len(value)}")
    return value


def printable(text: object) -> str:
    """``text`` with control characters shown as ``\\xNN``: a reason or an id recorded through the API reaches the
    terminal as text, never as terminal commands.

    >>> printable("ok: a\\x1b[2Jb")
    'ok: a\\\\x1b[2Jb'
    """
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def when(at: Any) -> str:
    """A time recorded in Redis (seconds since the epoch), in UTC; ``?`` if it is not a number."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(at, int | float) else "?"

"""What the worker's processor needs from Kafka, recorded instead of sent, for tests that hand the
processor records directly (Kafka plays no part in what they test; Redis is real)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from learner.online_learner import OnlineLearner
from store.model_store import ModelStore
from stream.processor import DeadLetters, EventProcessor, Letter, Record


class NoErasures:
    """What the processor asks of the erasure records, where no user was ever erased."""

    async def erased(self) -> dict[str, float]:
        return {}

    async def waiting(self) -> int:
        return 0


class NothingLearnedStore:
    """What the processor asks of Redis, where nothing was learned before but ``learned`` (event ids)."""

    def __init__(self, learned: frozenset[str] = frozenset()) -> None:
        self.learned = learned
        self.erasures = NoErasures()

    async def load_current(self) -> None:
        return None

    async def contest(self) -> None:
        return None

    async def load_challenger(self, name: str) -> None:  # noqa: ARG002
        return None

    async def learned_event_ids(self, ids: list[str], now: float | None = None) -> set[str]:  # noqa: ARG002
        return self.learned.intersection(ids)

    async def current_version(self) -> None:
        return None


class Transport:
    """Records dead letters and acknowledgements; numbers the records it makes on one partition."""

    def __init__(self) -> None:
        self.dead_letters: list[tuple[str, dict]] = []
        self.acked: list[int] = []
        self.offset = 0

    async def dead_letter(self, kind: str, _key: bytes | None, value: bytes) -> None:
        self.dead_letters.append((kind, json.loads(value)))

    async def send_letters(self, letters: Sequence[Letter]) -> list[Any]:
        """The processor's ``dead_letters``: each letter through :meth:`dead_letter`, in order."""
        return await letters_one_by_one(self.dead_letter)(letters)

    async def flush(self) -> None:
        return None

    def ack(self, handle: int) -> None:
        self.acked.append(handle)

    def records(self, events: list[dict]) -> list[Record]:
        """One message per event on ``events/0``, key = user id, handle = offset."""
        out = []
        for e in events:
            out.append(
                Record("events", 0, self.offset, e["user_id"].encode(), json.dumps(e).encode(), handle=self.offset)
            )
            self.offset += 1
        return out

    def processor(self, store: ModelStore, **options: Any) -> EventProcessor:
        """An :class:`EventProcessor` on ``store`` that sends through this transport (default model unless
        ``new_learner`` is given; ``options`` are the processor's other keyword arguments)."""
        options.setdefault("new_learner", OnlineLearner)
        return EventProcessor(
            store=store,
            learner_from_bytes=OnlineLearner.from_bytes,
            dead_letters=self.send_letters,
            flush=self.flush,
            ack=self.ack,
            **options,
        )


def letters_one_by_one(send: Callable[[str, bytes | None, bytes], Awaitable[Any]]) -> DeadLetters:
    """A processor's ``dead_letters`` that hands each letter to ``send(kind, key, value)`` in turn (its result is the
    letter's delivery)."""

    async def send_all(letters: Sequence[Letter]) -> list[Any]:
        return [await send(*letter) for letter in letters]

    return send_all

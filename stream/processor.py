"""The worker's core, independent of Faust: decode, learn, track offsets, checkpoint.

Exactly-once learning rests on two rules:

1. A message is acknowledged to Kafka only after a checkpoint that includes it has been
   committed to Redis, so Kafka's committed offset never runs ahead of the checkpoint.
2. The checkpoint stores, per partition, the next offset to learn. After a restart Kafka
   re-delivers from its (older or equal) committed offset and every message below the
   checkpoint's offset is skipped, not learned again.

So a crash at any point loses nothing (unacknowledged messages are re-delivered) and learns
nothing twice (re-delivered messages already in the checkpoint are skipped).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from learner.online_learner import OnlineLearner
from recstream import metrics
from recstream.events import parse_event
from store.model_store import ModelStore, SnapshotRefused

log = logging.getLogger(__name__)

SendRejected = Callable[[bytes | None, bytes], Awaitable[Any]]
Flush = Callable[[], Awaitable[Any]]


@dataclass
class Record:
    """One message as the processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    handle: Any = None  # the transport's message, acknowledged after the checkpoint


@dataclass
class Pending:
    records: list[Record] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    learned_since: int = 0


def rejection_payload(record: Record, reason: str) -> bytes:
    """The JSON written to the dead-letter topic: the reason and the original bytes."""
    value = record.value or b""
    try:
        payload: dict[str, str] = {"payload": value.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload_base64": base64.b64encode(value).decode()}
    return json.dumps(
        {
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "rejected_at": datetime.now(UTC).isoformat(),
            **payload,
        }
    ).encode()


class EventProcessor:
    """Owns the learner between checkpoints; the Faust agent feeds it batches."""

    def __init__(
        self,
        store: ModelStore,
        new_learner: Callable[[], OnlineLearner],
        learner_from_bytes: Callable[[bytes], OnlineLearner],
        send_rejected: SendRejected,
        flush: Flush,
        ack: Callable[[Any], Any],
        checkpoint_every_events: int = 5000,
        checkpoint_interval_seconds: float = 1.0,
        refused_retry_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self._new_learner = new_learner
        self._learner_from_bytes = learner_from_bytes
        self._send_rejected = send_rejected
        self._flush = flush
        self._ack = ack
        self.checkpoint_every_events = checkpoint_every_events
        self.checkpoint_interval_seconds = checkpoint_interval_seconds
        self.refused_retry_seconds = refused_retry_seconds
        self.learner: OnlineLearner | None = None
        self.version: int | None = None
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.rejected_total = 0
        self._pending = Pending()
        self._last_checkpoint = time.monotonic()
        self._lock = asyncio.Lock()
        self.status = "starting"

    # -- start -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the current snapshot (waiting while it is refused) and the offsets it covers."""
        while True:
            try:
                snapshot = await self.store.load_current()
            except SnapshotRefused as exc:
                metrics.SNAPSHOTS_REFUSED.labels("worker").inc()
                self.status = "snapshot_refused"
                log.error(
                    "%s. The worker will not consume until the current version verifies: roll back to a "
                    "good version or fix RECSTREAM_HMAC_KEY. Retrying in %.0fs.",
                    exc,
                    self.refused_retry_seconds,
                )
                await asyncio.sleep(self.refused_retry_seconds)
                continue
            break
        if snapshot is None:
            self.learner = self._new_learner()
            self.version = None
            self.next_offsets = {}
            log.info("no model in Redis yet: starting a new one")
        else:
            self.learner = self._learner_from_bytes(snapshot.blob)
            self.version = snapshot.version
            self.next_offsets = {
                (field.rpartition("/")[0], int(field.rpartition("/")[2])): int(offset)
                for field, offset in snapshot.meta.get("offsets", {}).items()
            }
            log.info(
                "loaded model v%s (%d events learned), resuming at offsets %s",
                snapshot.version,
                self.learner.events_learned,
                snapshot.meta.get("offsets", {}),
            )
        metrics.MODEL_VERSION.labels("worker").set(self.version or 0)
        self.status = "running"

    @property
    def ready(self) -> bool:
        return self.learner is not None

    # -- processing ----------------------------------------------------------------------

    async def process(self, records: Iterable[Record]) -> None:
        """Decode and learn a batch; invalid payloads are dead-lettered with their reason."""
        learner = self.learner
        if learner is None:
            raise RuntimeError("EventProcessor.start() must run before process()")
        pending = self._pending
        next_offsets = self.next_offsets
        for record in records:
            metrics.EVENTS_CONSUMED.inc()
            pending.records.append(record)
            tp = (record.topic, record.partition)
            if record.offset < next_offsets.get(tp, 0):
                metrics.EVENTS_SKIPPED_REPLAY.inc()
                continue
            next_offsets[tp] = record.offset + 1
            event, reason = parse_event(record.value or b"")
            if event is None:
                self.rejected_total += 1
                metrics.EVENTS_REJECTED.labels("worker").inc()
                log.warning("rejected %s/%d@%d: %s", record.topic, record.partition, record.offset, reason)
                await self._send_rejected(record.key, rejection_payload(record, reason or "invalid"))
                continue
            learner.learn(event.user_id, event.item_id, event.type, event.watch_seconds, event.item_duration_seconds)
            pending.seen[event.user_id].add(event.item_id)
            pending.learned_since += 1
            metrics.EVENTS_LEARNED.inc()

    def checkpoint_due(self) -> bool:
        pending = self._pending
        if not pending.records:
            return False
        return (
            pending.learned_since >= self.checkpoint_every_events
            or time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_seconds
        )

    async def checkpoint(self) -> int | None:
        """Write learner + offsets + seen sets to Redis in one transaction, then ack the messages."""
        async with self._lock:
            learner = self.learner
            pending = self._pending
            if learner is None or not pending.records:
                return None
            started = time.perf_counter()
            # Snapshot everything synchronously so events processed during the awaits below
            # belong to the next checkpoint, not half to this one.
            self._pending = Pending()
            offsets = dict(self.next_offsets)
            blob = learner.to_bytes()
            meta = {
                "created": datetime.now(UTC).isoformat(),
                "events_learned": learner.events_learned,
                "events_labelled": learner.events_labelled,
                "events_rejected": self.rejected_total,
                "progressive_auc": _finite_or_none(learner.metrics.auc),
                "progressive_logloss": _finite_or_none(learner.metrics.logloss),
                "model": learner.describe_model(),
            }
            try:
                await self._flush()  # dead letters must be in Kafka before their offsets are acked
                version = await self.store.checkpoint(self.version, blob, meta, offsets, pending.seen)
            except Exception:
                metrics.CHECKPOINTS.labels("failed").inc()
                # Keep the records: they stay unacknowledged and are covered by the next try.
                merged = Pending(
                    records=pending.records + self._pending.records,
                    learned_since=pending.learned_since + self._pending.learned_since,
                )
                for source in (pending.seen, self._pending.seen):
                    for user, items in source.items():
                        merged.seen[user] |= items
                self._pending = merged
                log.exception("checkpoint failed; its events stay unacknowledged and will be retried")
                raise
            self.version = version
            self._last_checkpoint = time.monotonic()
            for record in pending.records:
                if record.handle is not None:
                    self._ack(record.handle)
            elapsed = time.perf_counter() - started
            metrics.CHECKPOINTS.labels("ok").inc()
            metrics.CHECKPOINT_SECONDS.observe(elapsed)
            metrics.CHECKPOINT_BYTES.set(len(blob))
            metrics.LAST_CHECKPOINT.set(time.time())
            metrics.MODEL_VERSION.labels("worker").set(version)
            metrics.PROGRESSIVE_AUC.set(learner.metrics.auc)
            metrics.PROGRESSIVE_LOGLOSS.set(learner.metrics.logloss)
            log.debug(
                "checkpoint v%d: %d events learned, %d bytes, %.1f ms",
                version,
                learner.events_learned,
                len(blob),
                elapsed * 1e3,
            )
            return version


def _finite_or_none(value: float) -> float | None:
    return value if value == value and value not in (float("inf"), float("-inf")) else None

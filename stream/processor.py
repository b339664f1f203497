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
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson
from redis import exceptions as redis_errors

from learner import codec, cooccurrence_delta, kernels
from learner.challenger import Contest, PromotionRule, hit_at_k
from learner.codec import CodecError
from learner.erasure import Erasures, fingerprint
from learner.gate.base import GateEvent, Hold
from learner.online_learner import OnlineLearner
from recstream import metrics
from recstream.events import Decoded, Event, decoded_messages
from recstream.share_budget import ShareBudget
from store.erasures import requested_at
from store.model_store import CheckpointConflict, ModelStore, Snapshot, SnapshotRefused
from store.writer_lease import WriterLease

if TYPE_CHECKING:
    from learner.gate.gate import QualityGate
    from learner.gate.model_guard import ModelGuard

log = logging.getLogger(__name__)

Letter = tuple[str, bytes | None, bytes]  # (topic kind, key, value)
#: Sends letters, in order; returns each one's delivery (the producer's future, checked at the checkpoint: it fails
#: if the letter was not delivered; letters sent in one record batch share it), or None when there is nothing to
#: wait for (stream.dead_letters.DeadLetterSender).
DeadLetters = Callable[[Sequence[Letter]], Awaitable[Sequence["asyncio.Future[Any] | None"]]]
Flush = Callable[[], Awaitable[Any]]

REJECTED = "rejected"
QUARANTINED = "quarantined"
DUPLICATE = "duplicate"
MODEL_PAUSED = "model_paused"
USER_ERASED = "user_erased"  # an erased user's event stamped before the request (learner.erasure): dropped
#: How often (seconds) the worker looks in Redis for requests to erase users (store.erasures).
ERASE_POLL_SECONDS = 1.0
#: How often (seconds) erasure records older than their keeping time are forgotten.
ERASED_PRUNE_SECONDS = 3600.0
OVERRIDE_HEADER = "recstream-override"
NO_OVERRIDES: frozenset[str] = frozenset()  # a record's overrides when it names none
HIT_SAMPLE_EVERY = 20  # positives between two live hit-rate samples
HIT_WINDOW = 500  # samples the live hit rate is averaged over
HIT_TIME_SHARE = 0.02  # the live hit rate's samples may take at most this share of the worker's time
#: The checkpoint share never holds the next checkpoint back longer than this after one ends: a checkpoint slowed
#: by a stall (a broker or Redis hiccup) must not hold back the next one, and the freshness of recommendations, for
#: minutes.
MAX_CHECKPOINT_SPACING_SECONDS = 30.0
#: Checkpoint time the share's budget may bank: a long checkpoint among short ones (the one that copies the model
#: for the background write of its whole snapshot, a backlog's large delta) is paid from what the short ones left
#: unused, instead of holding the next checkpoint back by its own length.
CHECKPOINT_BANK_SECONDS = 2.0
#: Most deltas in a row before a whole snapshot: a reader starting cold reads and composes the whole chain.
MAX_DELTA_CHAIN = 200
# Events between two yields to the event loop while a batch is decoded and learned: both are
# CPU-bound, and without a yield the consumer's fetches, heartbeats and Redis replies wait for the
# whole batch (``take_events`` counts messages, and a batch message holds up to 5,000 events).
YIELD_EVERY_EVENTS = 500
#: Records with fewer events than this (one event per message, small batches) are judged by the gate together with
#: the small records after them, up to YIELD_EVERY_EVENTS events, and handled with them as one chunk
#: (EventProcessor._small_run).
SMALL_RECORD_EVENTS = 50


@dataclass
class Record:
    """One message as the processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None  # (key and value: None once the record is handled, kept until the checkpoint for its place)
    value: bytes | None
    handle: Any = None  # the transport's message, acknowledged after the checkpoint
    overrides: frozenset[str] = NO_OVERRIDES  # gate reasons an operator overrides (replay)
    #: (topic, partition, offset): which message this is. Made with the record (several lookups a message): a
    #: ``functools.cached_property`` cost ~0.45 us more a record, ~1% of the worker's CPU with one event a message.
    position: tuple[str, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.position = (self.topic, self.partition, self.offset)


#: Dead letters kept for confirmation before the delivered ones among them are forgotten (see Pending.prune_delivered).
LETTERS_PRUNE_AT = 1024


@dataclass
class Pending:
    """Everything since the last checkpoint: written together, then acknowledged together."""

    records: list[Record] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    event_ids: set[str] = field(default_factory=set)
    gate_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    learned_since: int = 0
    #: Dead letters sent since the last checkpoint, with their delivery, until the checkpoint confirms them…
    letters: list[tuple[asyncio.Future[Any], Letter]] = field(default_factory=list)
    #: …and those that were not delivered and are still to be sent again.
    unsent: list[Letter] = field(default_factory=list)
    prune_at: int = LETTERS_PRUNE_AT

    def prune_delivered(self) -> None:
        """Forget the letters already delivered (their bytes are freed): between checkpoints spaced out by their
        time budget (up to 30 s) a stream the gate mostly holds would otherwise keep every letter in memory."""
        self.letters = [(d, letter) for d, letter in self.letters if not (d.done() and _succeeded(d))]
        self.prune_at = max(LETTERS_PRUNE_AT, 2 * len(self.letters))  # amortised: pruned again after as many more


@dataclass
class _Write:
    """A checkpoint set aside under the lock (:meth:`EventProcessor._capture`) and being written to Redis."""

    started: float  # time.monotonic() when the checkpoint began
    pending: Pending  # the events it covers
    blob: bytes | None  # the snapshot (None: the model did not change)
    base: int | None  # set: blob is a delta against this version
    whole: Callable[[], bytes] | None  # makes the whole snapshot to write over the delta once it is stored
    meta: dict[str, Any]
    offsets: dict[tuple[str, int], int]
    guard: dict[str, Any]
    challengers: dict[str, bytes] | None
    contest: dict[str, Any] | None
    promotion: dict[str, Any] | None
    learner: OnlineLearner
    parent: int | None  # the version it is written after (the current one when it was set aside)
    erasures: dict[str, str]  # the requests to erase users it applies (user id -> the request as read)
    erased_expired: list[str]  # erasure records it forgets (fingerprints)
    resume_request: str | None  # an operator's resume request its guard state applies (deleted with it)
    task: asyncio.Task[int | None] | None = None

    def stored(self) -> bool | None:
        """None while it is being written; then whether it went through."""
        task = self.task
        return None if task is None or not task.done() else _succeeded(task)


@dataclass
class _LookAhead:
    """The next slice, decoded, and the lookup of its event ids in Redis, started while the slice before it is
    processed (:meth:`EventProcessor._start_look_ahead`)."""

    records: list[Record]
    parsed: dict[int, list[Decoded]]  # id(record) -> its events, for the records not learned before a restart
    ids: list[str]
    since: int  # checkpoints stored before the lookup was sent: the ids of those stored after it are added
    lookup: asyncio.Task[set[str]] | None  # None: no event ids to look up

    def takes(self, records: list[Record], candidates: list[Record]) -> bool:
        """These are the records it was made for (a retry of a slice takes only those not handled yet), and it
        decoded each of them still to learn (all, unless a record was below the offsets then and is not now)."""
        return (
            len(records) == len(self.records)
            and all(a is b for a, b in zip(records, self.records, strict=True))
            and all(id(r) in self.parsed for r in candidates)
        )

    def drop(self) -> None:
        if self.lookup is not None:
            self.lookup.cancel()


#: The event ids of at most this many checkpoints stored while a look-ahead's lookup is outstanding are kept for it
#: (:class:`_LookAhead`; one or two are stored while the agent processes a slice); past that its ids are looked up
#: again.
STORED_IDS_KEPT = 4


def _event_ids(parsed: dict[int, list[Decoded]]) -> list[str]:
    return [d.event.event_id for decoded in parsed.values() for d in decoded if d.event is not None]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A look-ahead's lookup may be dropped, or fail, with nobody awaiting it: its error is read (it is raised by
    the :meth:`EventProcessor.process` that awaits it, if any), so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _succeeded(delivery: asyncio.Future[Any]) -> bool:
    """A settled delivery went through (not failed, not cancelled)."""
    return not delivery.cancelled() and delivery.exception() is None


class PromotedMeanwhile(CheckpointConflict):
    """An operator promoted a version while a checkpoint was being written: the write is refused, its events stay
    pending, and the next checkpoint adopts that version (nothing failed: retried at once, no back-off)."""


class DeadLettersUndelivered(Exception):
    """Dead letters were not delivered: they are sent again, and the checkpoint (which would acknowledge the
    offsets of their events) is retried."""


def _source(record: Record, index: int | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if index is not None:
        source["index"] = index  # the event's position in a batch message
    return source


class _NowIso:
    """``datetime.now(UTC).isoformat()`` computed at most once a millisecond (so exact to the millisecond): ~4 us a
    call here, and a dead letter needs one; under an attack the gate holds a burst of events within each one."""

    def __init__(self) -> None:
        self._ms, self._text = -1, ""

    def __call__(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms, self._text = ms, datetime.now(UTC).isoformat()
        return self._text


_now_iso = _NowIso()

#: Most bytes of a refused message its dead letter carries; the rest stays at the source offset the letter names.
#: Escaped or base64, a payload grows (up to 6x for control characters), and the producer refuses a message over
#: 1 MiB: without a cut, one large refused message stopped the worker, its dead letter failing at every retry.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024


def rejection_payload(record: Record, reason: str, index: int | None = None, raw: bytes | None = None) -> bytes:
    """The JSON written to the dead-letter topic: the reason and the original bytes (of the refused
    element, for a batch message), as text or base64; beyond ``DEAD_LETTER_PAYLOAD_BYTES`` only their start,
    with ``payload_truncated`` and ``payload_bytes`` (the whole size)."""
    value = raw if raw is not None else (record.value or b"")
    letter: dict[str, Any] = {"reason": reason, **_source(record, index), "rejected_at": _now_iso()}
    kept = value[:DEAD_LETTER_PAYLOAD_BYTES]
    cut = len(kept) < len(value)
    if cut:
        letter["payload_truncated"] = True
        letter["payload_bytes"] = len(value)
    text = _utf8(kept, cut)
    if text is not None:
        letter["payload"] = text
    else:
        letter["payload_base64"] = base64.b64encode(kept).decode()
    return orjson.dumps(letter)


def _utf8(data: bytes, cut: bool) -> str | None:
    """``data`` as text (None: not UTF-8); a cut may end inside a character, whose bytes are then left out."""
    for drop in range(4 if cut else 1):  # a UTF-8 character is at most 4 bytes
        try:
            return data[: len(data) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def quarantine_payload(record: Record, event: Event, reason: str, detail: str, index: int | None = None) -> bytes:
    """The JSON written to the quarantine topic: reason code, detail, the rules overridden for it (if any) and the
    event as it arrived.

    The event's JSON goes in as pydantic wrote it (``orjson.Fragment``), not decoded and encoded again:
    a held event is written out whole, so under an attack this runs for a large share of the stream."""
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            **_source(record, index),
            "held_at": _now_iso(),
            **({"overrides": carried} if (carried := carried_overrides(record.overrides)) else {}),
            "event": orjson.Fragment(event.model_dump_json()),
        }
    )


def carried_overrides(overrides: Iterable[str]) -> list[str]:
    """The rules an operator's replay overrode for an event held again, which its next replay overrides too (written
    into its quarantine record here, read back by stream/quarantine.py): not ``model_paused``, which was the model's
    state then, not a verdict on the event."""
    return sorted(set(overrides) - {MODEL_PAUSED}) if overrides else []


def overrides_from_headers(headers: Any) -> frozenset[str]:
    """Gate reasons named in the ``recstream-override`` header (comma-separated), if any."""
    if not headers:
        return NO_OVERRIDES
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        name = name.decode() if isinstance(name, bytes) else name
        if name == OVERRIDE_HEADER and value:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return frozenset(part.strip() for part in text.split(",") if part.strip())
    return NO_OVERRIDES


def new_writer_id() -> str:
    """Names one worker process: in the versions it writes and in the writer lease (``host:pid:random``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class EventProcessor:
    """Owns the learner between checkpoints; the Faust agent feeds it batches."""

    def __init__(
        self,
        store: ModelStore,
        new_learner: Callable[[], OnlineLearner],
        learner_from_bytes: Callable[[bytes], OnlineLearner],
        dead_letters: DeadLetters,
        flush: Flush,
        ack: Callable[[Any], Any],
        gate: QualityGate | None = None,
        guard: ModelGuard | None = None,
        checkpoint_every_events: int = 5000,
        checkpoint_interval_seconds: float = 1.0,
        checkpoint_catch_up_factor: float = 1.0,
        checkpoint_share: float = 0.5,
        checkpoint_delta_share: float = 1.0,
        refused_retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        contestants: Mapping[str, Callable[[], OnlineLearner]] | None = None,
        champion_name: str = "champion",
        promotion_rule: PromotionRule | None = None,
        lease: WriterLease | None = None,
        erasure_kept_seconds: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        #: the writer lease each checkpoint must hold (store/writer_lease.py); None: not checked
        self.lease = lease
        self._new_learner = new_learner
        self._learner_from_bytes = learner_from_bytes
        self._dead_letters = dead_letters
        self.gate = gate
        self.guard = guard
        self.clock = clock
        self._flush = flush
        self._letters_stalled = False  # the last checkpoint failed because dead letters were not delivered
        self._consumed = 0  # events of the records handled by the running process(), for the metric at its end
        self._failed_event: Decoded | None = None  # the event _handle_events failed at, last time one failed
        self._ack = ack
        self.checkpoint_every_events = checkpoint_every_events
        self.checkpoint_interval_seconds = checkpoint_interval_seconds
        if checkpoint_catch_up_factor < 1:
            raise ValueError("checkpoint_catch_up_factor must be at least 1")
        self.checkpoint_catch_up_factor = checkpoint_catch_up_factor
        self._waiting = 0  # messages still to process after the agent's next slice (note_waiting)
        self._events_per_record = 1.0  # events a record held, in the last batch processed
        # ``time`` looked up per call: tests move the module's clocks
        self.checkpoint_budget = ShareBudget(
            1.0,
            cap_seconds=CHECKPOINT_BANK_SECONDS,
            clock=lambda: time.monotonic(),
            max_wait_seconds=MAX_CHECKPOINT_SPACING_SECONDS,
        )
        self.checkpoint_share = checkpoint_share  # checked by the setter; the budget holds it
        if not 0 <= checkpoint_delta_share <= 1:
            raise ValueError("checkpoint_delta_share must be in [0, 1]")
        self.checkpoint_delta_share = checkpoint_delta_share
        # The version this learner's recorded changes are relative to (the last one written), the size of the whole
        # version the chain starts from and (version, size) of each delta written since: a checkpoint may then write
        # a delta against that version (None: the next one is whole; after a start, a promotion, a failed write).
        self._delta_base: int | None = None
        self._whole_bytes = 0
        self._chain: list[tuple[int, int]] = []
        # the background write of a delta version's whole snapshot (see _consolidate), while it runs
        self._consolidation: asyncio.Task[None] | None = None
        # the memory the model grows into next, made in a thread while it learns (see _prepare_growth)
        self._growth: asyncio.Future[object] | None = None
        self.refused_retry_seconds = refused_retry_seconds
        self.learner: OnlineLearner | None = None
        self.version: int | None = None
        # Champion / challenger (learner.challenger): every model that may serve, by name; the
        # champion is ``self.learner``, the others learn the same events in shadow.
        self._contestants = dict(contestants or {})
        self._default_champion = champion_name
        self.champion_name = champion_name
        self.rule = promotion_rule or PromotionRule()
        self.challengers: dict[str, OnlineLearner] = {}
        self.contests: dict[str, Contest] = {}
        #: Paired samples to wait before the automatic rule may promote again (set by an operator's change).
        self.auto_hold_samples = 0
        self._unrecorded_promotion: dict[str, Any] | None = None
        self._resume_applied: str | None = None  # an operator's resume request applied, until a checkpoint stores it
        #: Names this worker process in the versions it writes (tells its own commits from others').
        self.writer_id = lease.holder if lease is not None else new_writer_id()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.rejected_total = 0
        self.paused_since: float | None = None
        self._positives_seen = 0
        self._hits: deque[bool] = deque(maxlen=HIT_WINDOW)
        self.hit_budget = ShareBudget(HIT_TIME_SHARE, cap_seconds=0.05)
        self._pending = Pending()
        self._look_ahead: _LookAhead | None = None
        self._stored_count = 0  # checkpoints stored since the start
        self._stored_ids: deque[tuple[int, set[str]]] = deque(maxlen=STORED_IDS_KEPT)  # (number, their event ids)
        # the gate's verdicts on the chunks of records not handled yet ((record position, chunk start) -> verdicts),
        # kept until their record is handled so that a retry of it does not judge its events again (see _verdicts);
        # a run of small records' are judged together and kept only for the records a failure left unhandled
        # (_handle_run)
        self._verdicts_ahead: dict[tuple[tuple[str, int, int], int], list[Hold | None]] = {}
        self._last_checkpoint = time.monotonic()
        self._lock = asyncio.Lock()
        self._write: _Write | None = None  # the checkpoint being written to Redis, until it is settled
        self._write_failed = False  # the last write failed: the next checkpoint waits for its own
        #: users erased (learner.erasure), loaded at the start: their events stamped before it are dropped
        self.erasures = Erasures(erasure_kept_seconds)
        self._erase_waiting = False  # a request to erase users waits in Redis (look_for_erasures)
        self._erase_looked = float("-inf")  # (time.monotonic()) when look_for_erasures last asked Redis
        self._erased_pruned = time.monotonic()
        self._erased_expired: list[str] = []  # erasure records forgotten here, to delete in Redis with a checkpoint

    # -- start -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the current snapshot (waiting while it is refused) and the offsets it covers."""
        metrics.SNAPSHOTS_REFUSED.labels("worker")  # exported at 0 from the start (see api.model_holder)
        metrics.CURRENT_VERSION_REFUSED.labels("worker").set(0)
        while True:  # (stalled while it waits: it consumes nothing, RecstreamWorkerStalled)
            try:
                snapshot = await self.store.load_current()
            except SnapshotRefused as exc:
                metrics.WORKER_STALLED.set(1)  # (the gauges first: a scrape between them sees the count with them)
                metrics.CURRENT_VERSION_REFUSED.labels("worker").set(1)
                metrics.SNAPSHOTS_REFUSED.labels("worker").inc()
                log.error(
                    "%s. The worker will not consume until the current version loads: roll back to a good "
                    "version, or fix RECSTREAM_HMAC_KEY if the key changed. Retrying in %.0fs.",
                    exc,
                    self.refused_retry_seconds,
                )
                await asyncio.sleep(self.refused_retry_seconds)
                continue
            if snapshot is None and (current := await self.store.current_version()) is not None:
                # (a new model here would fail every checkpoint: current is not None, as it expects)
                log.error(
                    "model v%s is current but is not in Redis (deleted, or evicted: Redis needs maxmemory-policy "
                    "noeviction). The worker will not consume until the current version loads: promote a retained "
                    "version (`recstream models list`, `recstream models promote`). Retrying in %.0fs.",
                    current,
                    self.refused_retry_seconds,
                )
                metrics.WORKER_STALLED.set(1)
                await asyncio.sleep(self.refused_retry_seconds)
                continue
            metrics.WORKER_STALLED.set(0)
            metrics.CURRENT_VERSION_REFUSED.labels("worker").set(0)
            break
        if snapshot is None:
            self.learner = self._new_learner()
            self.version = None
            self.next_offsets = {}
            log.info("no model in Redis yet: starting a new one")
        else:
            self.learner = self._learner_of(snapshot)
            self.version = snapshot.version
            self.champion_name = snapshot.meta.get("contestant") or self._default_champion
            # The offsets hash is written by every checkpoint, also by those that wrote no new
            # version (learning paused), so it is at or after the snapshot's own offsets.
            self.next_offsets = {
                (field.rpartition("/")[0], int(field.rpartition("/")[2])): int(offset)
                for field, offset in snapshot.meta.get("offsets", {}).items()
            }
            for tp, offset in (await self.store.offsets()).items():
                self.next_offsets[tp] = max(offset, self.next_offsets.get(tp, 0))
            guard_status = await self.store.guard_status()
            if guard_status.get("state") == "paused":
                try:  # the same pause as before the restart (a resume request names it by this time)
                    self.paused_since = float(guard_status.get("since", ""))
                except ValueError:
                    self.paused_since = self.clock()
                metrics.MODEL_GUARD_PAUSED.set(1)
                if self.guard is not None:  # judge recovery against the reference from before the restart
                    reference = guard_status.get("reference")
                    self.guard.restore_paused(
                        None if reference is None else float(reference), int(guard_status.get("reference_count", 0))
                    )
                log.warning("model guard: learning was paused before the restart and stays paused")
            wanted = self._contestants.get(self.champion_name, self._new_learner)().model.kind
            if self.learner.model.kind != wanted:
                log.warning(
                    "the current snapshot holds a %r model but the settings ask for %r: continuing with %r "
                    "(a model kind cannot change mid-stream; use a new RECSTREAM_REDIS_PREFIX to start a %r model)",
                    self.learner.model.kind,
                    wanted,
                    self.learner.model.kind,
                    wanted,
                )
            log.info(
                "loaded model v%s (%d events learned), resuming at offsets %s",
                snapshot.version,
                self.learner.events_learned,
                snapshot.meta.get("offsets", {}),
            )
        await self._load_challengers()
        self.erasures = Erasures(self.erasures.kept_seconds, await self.store.erasures.erased())
        self._erased_expired = self.erasures.prune(self.clock())
        self._erase_waiting = await self.store.erasures.waiting() > 0
        contest = await self.store.contest() or {}
        self.auto_hold_samples = int(contest.get("auto_hold_samples", 0))
        if contest and contest.get("version") != self.version:
            self._hold_auto_promotion()  # an operator changed the current version while this worker was down
        metrics.MODEL_VERSION.labels("worker").set(self.version or 0)

    async def _load_challengers(self) -> None:
        """Every configured model other than the champion, as of the last checkpoint (new if absent)."""
        self.challengers = {}
        for name, factory in self._contestants.items():
            if name == self.champion_name:
                continue
            fresh = factory()
            try:
                blob = await self.store.load_challenger(name)
                learner = None if blob is None else self._learner_from_bytes(blob)
            except (SnapshotRefused, CodecError) as exc:
                log.error("challenger %r: %s; it starts again from nothing", name, exc)
                learner = None
            if learner is not None and learner.model.kind != fresh.model.kind:
                log.warning(
                    "challenger %r is configured as a %r model but Redis holds a %r one: it starts again",
                    name,
                    fresh.model.kind,
                    learner.model.kind,
                )
                learner = None
            self.challengers[name] = learner or fresh
            log.info(
                "challenger %r (%s) in shadow: %d events learned",
                name,
                self.challengers[name].model.kind,
                self.challengers[name].events_learned,
            )
        self.contests = {name: Contest(self.rule) for name in self.challengers}

    @property
    def pending_records(self) -> list[Record]:
        """The records taken since the last checkpoint (acknowledged when the next one succeeds)."""
        return self._pending.records

    @property
    def ready(self) -> bool:
        return self.learner is not None

    # -- processing ----------------------------------------------------------------------

    async def process(self, records: Iterable[Record], upcoming: Sequence[Record] = ()) -> None:
        """Decode, gate and learn a batch. Nothing here is lost: every message ends up learned,
        dead-lettered (contract), quarantined (gate) or counted as a duplicate of a learned event.

        The batch runs under the checkpoint lock, so a checkpoint never splits a message from
        its effects.

        ``upcoming``: the records the next call will take (the agent's next slice of a batch), decoded and their
        event ids looked up in Redis while this batch is learned (:meth:`_start_look_ahead`).
        """
        if self.learner is None:
            raise RuntimeError("EventProcessor.start() must run before process()")
        records = list(records)
        async with self._lock:
            # An operator may have promoted or rolled back since the last batch: learn into that version (looked at
            # by the next checkpoint instead while one is being written: which version is current depends on it).
            if self._write is not None and self._write.stored():
                self._write = None  # written: nothing of it is needed any more
            if self._write is None:
                await self._adopt_promoted_version()
            # One Redis round trip for the whole batch: which event ids were already learned (started while the
            # batch before was processed, when the agent looked ahead).
            candidates = [r for r in records if r.offset >= self.next_offsets.get((r.topic, r.partition), 0)]
            looked, self._look_ahead = self._look_ahead, None
            if looked is not None and looked.takes(records, candidates):
                # (its records, each decoded: those of its records that are no longer to learn are left out)
                parsed = (
                    looked.parsed
                    if len(candidates) == len(records)
                    else {id(r): looked.parsed[id(r)] for r in candidates}
                )
                # its ids: these records' (all of them, or more when a retry takes fewer: ids serve only to find
                # those learned in the write in flight, below)
                ids = looked.ids
                known = await self._known_ahead(looked)
            else:
                if looked is not None:  # made for other records (a retry takes only those not handled yet)
                    looked.drop()
                parsed = await self._parse(candidates)
                ids = _event_ids(parsed)
                known = await self.store.learned_event_ids(ids, now=self.clock()) if ids else set()
            if upcoming:
                await self._start_look_ahead(upcoming)
            since_yield = 0
            if self._write is not None:  # learned, but maybe not in Redis yet
                written = self._write.pending.event_ids
                known.update(written.intersection(ids))
            ahead = self._verdicts_ahead
            if ahead:  # only those of this batch's records can still be used (a retry's batch is its remaining records)
                positions = {r.position for r in records}
                for key in [key for key in ahead if key[0] not in positions]:
                    del ahead[key]
            # The batch's counts and lags go to the metrics once, at its end (also when it fails half-way): with one
            # event per message, updating them for every message was ~5% of the worker's CPU.
            self._consumed = 0  # the events of the records handled (_handled)
            lags: list[float] = []
            try:
                at = 0
                while at < len(records):
                    record = records[at]
                    decoded = parsed.get(id(record))
                    if decoded is None:  # below the checkpoint's offset: learned before a restart
                        metrics.EVENTS_SKIPPED_REPLAY.inc()
                        self._pending.records.append(record)
                        at += 1
                        continue
                    if len(decoded) < SMALL_RECORD_EVENTS:
                        # A run of small records (one event per message) is judged and handled as one chunk.
                        run = self._small_run(records, at, parsed)
                        await self._send_letters(self._handle_run(run, known, lags), handled=True)
                        at += len(run)
                        events = sum(len(decoded) for _, decoded in run)
                    else:
                        stopping = False  # cancelled between two chunks: the record is handled whole first
                        try:
                            for start in range(0, len(decoded), YIELD_EVERY_EVENTS):
                                # Gate a chunk, then learn it, instead of alternating event by event: the gate's
                                # state and the model's then take turns in the CPU caches (in one process:
                                # ~12% less CPU per event with the gate on). If a chunk before its last fails, the
                                # record is not handled: its retry finds the events learned so far in
                                # pending.event_ids and does not learn them twice, and reuses the record's verdicts
                                # instead of gating its events again.
                                chunk = decoded[start : start + YIELD_EVERY_EVENTS]
                                verdicts = self._verdicts(record, start, chunk, known)
                                letters: list[Letter] = []
                                self._handle_events(record, chunk, verdicts, known, lags, letters)
                                if start + YIELD_EVERY_EVENTS >= len(decoded):  # its last chunk: the record is handled
                                    self._handled(record, len(decoded))
                                    await self._send_letters(letters, handled=True)
                                    continue
                                # A cancellation here (the worker stopping) finishes the record before it is
                                # raised: the final checkpoint then stores the record's offset with all its events
                                # learned. Cut short, the checkpoint would store some of its events but not its
                                # offset, and the record, delivered again after a restart, would have them learned
                                # again once the duplicate window (RECSTREAM_DEDUPE_RETENTION_SECONDS) has passed.
                                try:
                                    await self._send_letters(letters, handled=False)
                                except asyncio.CancelledError:
                                    stopping = True
                                    self._pending.unsent.extend(letters)  # (cut short: sent again by the checkpoint)
                                if not stopping:
                                    try:
                                        await asyncio.sleep(0)
                                    except asyncio.CancelledError:
                                        stopping = True
                        except BaseException as exc:
                            if stopping and not isinstance(exc, asyncio.CancelledError):
                                # a later chunk failed (a dead letter the broker did not take, say): the stop still
                                # stands (not the error's retry), and the record, not handled, is delivered again
                                raise asyncio.CancelledError from exc
                            raise
                        at += 1
                        events = len(decoded)
                        if stopping:
                            raise asyncio.CancelledError  # (the record is handled: a checkpoint may cover it)
                    since_yield += events
                    if since_yield >= YIELD_EVERY_EVENTS:
                        since_yield = 0
                        await asyncio.sleep(0)
                if records:
                    self._events_per_record = self._consumed / len(records)
            finally:
                if self._consumed:
                    metrics.EVENTS_CONSUMED.inc(self._consumed)
                if lags:
                    metrics.EVENTS_LEARNED.inc(len(lags))
                    metrics.observe_many(metrics.EVENT_TO_LEARNED_SECONDS, lags)

    async def _start_look_ahead(self, records: Sequence[Record]) -> None:
        """Decode ``records`` and start looking their event ids up in Redis, for the :meth:`process` that takes them
        next, so that the lookup (a few ms in Redis, tens behind a checkpoint's transaction) overlaps the batch
        before instead of idling the worker (measured: ~9% of its time with batch messages).

        The lookup sees what Redis held when it ran. An event learned before it and not in Redis then is found
        all the same: it is pending, or in the write in flight, or in a checkpoint stored since the lookup was
        sent, whose ids are kept (:data:`STORED_IDS_KEPT`) and added to what the lookup found.
        """
        if self._look_ahead is not None:
            self._look_ahead.drop()
            self._look_ahead = None
        records = list(records)
        candidates = [r for r in records if r.offset >= self.next_offsets.get((r.topic, r.partition), 0)]
        parsed = await self._parse(candidates)
        ids = _event_ids(parsed)
        since = self._stored_count  # a checkpoint stored from here on may have been stored after the lookup ran
        self._stored_ids.clear()  # (those stored before: the lookup sees them)
        lookup = asyncio.create_task(self.store.learned_event_ids(ids, now=self.clock())) if ids else None
        if lookup is not None:
            lookup.add_done_callback(_retrieve)
        self._look_ahead = _LookAhead(records, parsed, ids, since, lookup)

    async def _known_ahead(self, ahead: _LookAhead) -> set[str]:
        """The ids of ``ahead`` learned before it is processed: what its lookup found, and those of the checkpoints
        stored since it was sent (looked up again if more were stored than are kept)."""
        stored = [(number, ids) for number, ids in self._stored_ids if number >= ahead.since]
        self._stored_ids.clear()  # (only a look-ahead needs them; the next one starts afresh)
        if ahead.lookup is None:
            return set()
        if self._stored_count - ahead.since > len(stored):  # some of them are no longer kept
            ahead.drop()
            return await self.store.learned_event_ids(ahead.ids, now=self.clock())
        try:
            known = await ahead.lookup
        except Exception:  # noqa: BLE001 - e.g. Redis was away when it ran: asked again now (raises if it still is)
            return await self.store.learned_event_ids(ahead.ids, now=self.clock())
        for _, stored_ids in stored:
            known.update(i for i in ahead.ids if i in stored_ids)
        return known

    @staticmethod
    async def _parse(records: list[Record]) -> dict[int, list[Decoded]]:
        """Each record's events (by ``id(record)``), decoded as :func:`~recstream.events.decoded_messages` decodes them
        (one-event messages 500 at a time in one validator call), giving the event loop a turn every
        YIELD_EVERY_EVENTS events."""
        parsed: dict[int, list[Decoded]] = {}
        since_yield = 0
        for r, decoded in zip(records, decoded_messages([r.value or b"" for r in records]), strict=True):
            parsed[id(r)] = decoded
            since_yield += len(decoded)
            if since_yield >= YIELD_EVERY_EVENTS:
                since_yield = 0
                await asyncio.sleep(0)
        return parsed

    @property
    def _active_gate(self) -> QualityGate | None:
        """The gate, or None when there is none or it is switched off (everything passes: no view of the
        events is built)."""
        gate = self.gate
        return gate if gate is not None and gate.enabled else None

    def _verdicts(self, record: Record, start: int, chunk: list[Decoded], known: set[str]) -> list[Hold | None]:
        """The gate's verdict on each event of a chunk, in order (None: passed, or not an event to gate).

        An event already learned, or repeating one that passed earlier in the chunk, is not judged
        here (:data:`_UNJUDGED`): :meth:`_screen` counts it as a duplicate if that one was learned,
        else judges it then. The verdicts on a record's chunks are kept until it is handled, so
        that a retry of it (after a failure in :meth:`_handle_events`) does not count its events in the
        gate's windows twice.
        """
        if self._active_gate is None:  # nothing to judge: every event passes (a repeat is a duplicate in _screen)
            return [None] * len(chunk)
        key = (record.position, start)
        verdicts = self._verdicts_ahead.get(key)
        if verdicts is None:
            verdicts = self._verdicts_ahead[key] = self._judge(chunk, known, record.overrides)
        return verdicts

    def _small_run(
        self, records: list[Record], at: int, parsed: dict[int, list[Decoded]]
    ) -> list[tuple[Record, list[Decoded]]]:
        """``records[at]`` (a small record: fewer than :data:`SMALL_RECORD_EVENTS` events) and the small records
        right after it that are judged and handled with it as one chunk (:meth:`_handle_run`), with their events.

        A run has the same overrides throughout, at most :data:`YIELD_EVERY_EVENTS` events, and no event twice: a
        record repeating an event of the run (or a record holding one event twice) ends it, so that whether the
        first was learned decides whether the repeat is a duplicate, as when each record is handled alone.
        """
        first = records[at]
        overrides = first.overrides
        decoded = parsed[id(first)]
        run = [(first, decoded)]
        positions = {first.position}
        ids = {d.event.event_id for d in decoded if d.event is not None}
        if len(ids) < sum(1 for d in decoded if d.event is not None):
            return run  # it repeats an event of its own
        events = len(decoded)
        for record in islice(records, at + 1, None):
            decoded = parsed.get(id(record))
            if (
                decoded is None
                or len(decoded) >= SMALL_RECORD_EVENTS
                or events + len(decoded) > YIELD_EVERY_EVENTS
                or record.overrides != overrides
                or record.position in positions
            ):
                break
            if len(decoded) == 1:  # (the common case: one event per message)
                event = decoded[0].event
                if event is not None:
                    if event.event_id in ids:
                        break
                    ids.add(event.event_id)
            else:
                record_ids = [d.event.event_id for d in decoded if d.event is not None]
                if len(set(record_ids)) < len(record_ids) or not ids.isdisjoint(record_ids):
                    break
                ids.update(record_ids)
            run.append((record, decoded))
            positions.add(record.position)
            events += len(decoded)
        return run

    def _run_verdicts(
        self, run: list[tuple[Record, list[Decoded]]], chunk: list[Decoded], known: set[str]
    ) -> list[Hold | None]:
        """The verdicts on ``chunk``, the events of the records of ``run`` (:meth:`_small_run`), in order: those kept
        for a record's retry (:meth:`_handle_run`), the others judged now in one gate call.

        With one event per message, judging each message alone cost the gate's per-call work per event, and the
        anomaly rule scored each event through River's trees one by one instead of a chunk at once (measured:
        ~10% of the worker's time). A run holds no event twice, so each event is judged, or found a duplicate of a
        learned one, exactly as when its record is judged alone after the records before it are handled; only the
        gate's "now" (the wall clock) is read once for the run instead of once per record.

        They are kept for a retry only when a failure leaves records of the run unhandled (:meth:`_handle_run`):
        keeping each record's share of them until it was handled, and finding it again, cost ~1.3 us an event with one
        event per message (in process, /tmp/s54/proc.py; 22.7-24.2 against 21.1-22.4 us an event).
        """
        if self._active_gate is None:  # nothing to judge: every event passes (a repeat is a duplicate in _screen)
            return [None] * len(chunk)
        ahead = self._verdicts_ahead
        kept = [ahead.get((record.position, 0)) for record, _ in run] if ahead else None
        if kept is None or kept.count(None) == len(kept):  # (the usual case: no retry)
            return self._judge(chunk, known, run[0][0].overrides)
        fresh = [d for (_, decoded), verdicts in zip(run, kept, strict=True) if verdicts is None for d in decoded]
        judged = iter(self._judge(fresh, known, run[0][0].overrides) if fresh else [])
        out: list[Hold | None] = []
        for (_, decoded), verdicts in zip(run, kept, strict=True):
            out += [next(judged) for _ in decoded] if verdicts is None else verdicts
        return out

    def _judge(self, chunk: list[Decoded], known: set[str], overrides: frozenset[str]) -> list[Hold | None]:
        """The verdicts of :meth:`_verdicts` on ``chunk``, judged now."""
        gate = self._active_gate
        assert gate is not None  # (without one, every event passes: _verdicts)
        kernel = kernels.compiled()
        if kernel is not None:  # the same views in C, an Event's fields read from its __dict__: ~1 us an event less
            views, judged = kernel.gate_views(chunk, known, self._pending.event_ids, GateEvent, Event)
        else:
            views, judged = _views(chunk, known, self._pending.event_ids)
        if len({view.event_id for view in judged}) == len(judged):
            # no event repeats another of the chunk: every view is judged, in one call
            verdicts = gate.check_chunk(judged, self.clock(), overrides)
            if len(judged) < len(chunk):  # not every item is a view to judge
                verdicts = _spread(verdicts, chunk, views)
        else:
            gate.prepare(judged, self.clock(), overrides)
            verdicts = self._judge_one_by_one(gate, chunk, views, known, overrides)
        return verdicts

    def _judge_one_by_one(
        self,
        gate: QualityGate,
        chunk: list[Decoded],
        views: list[GateEvent | None],
        known: set[str],
        overrides: frozenset[str],
    ) -> list[Hold | None]:
        """The verdicts of :meth:`_verdicts` event by event: an event repeating one that passed earlier in
        the chunk is not judged (:data:`_UNJUDGED`), one repeating an event held earlier in it is."""
        pending_ids = self._pending.event_ids
        passing: set[str] = set()
        verdicts: list[Hold | None] = []
        for decoded, view in zip(chunk, views, strict=True):
            event = decoded.event
            verdict = None
            if event is not None:
                event_id = event.event_id
                if event_id in known or event_id in pending_ids or event_id in passing:
                    verdict = _UNJUDGED
                elif view is not None:
                    verdict = gate.check(view, self.clock(), overrides)
                if verdict is None:
                    passing.add(event_id)
            verdicts.append(verdict)
        return verdicts

    def _handle_run(self, run: list[tuple[Record, list[Decoded]]], known: set[str], lags: list[float]) -> list[Letter]:
        """Handle the events of a run of small records (:meth:`_small_run`) as one chunk; the records are then
        handled. Returns the chunk's dead letters, for :meth:`_send_letters` (the records are handled before their
        letters are sent: if that fails, the letters are kept for the checkpoint instead of handling the run again).

        With one event per message, handling each message as a chunk of its own cost a call, its set-up and an
        await per event: with the run (and :attr:`Record.position` made with the record), the worker's CPU per
        event went from 34-37 to 29-30 us on the ingest bench's one-event messages, gate on.

        If an event fails, the records before its own are handled, as they would have been one by one, and their
        letters kept for the checkpoint; its record and the rest are not (their retry handles them).
        """
        letters: list[Letter] = []
        if len(run) == 1:
            record, decoded = run[0]
            self._handle_events(record, decoded, self._verdicts(record, 0, decoded, known), known, lags, letters)
            self._handled(record, len(decoded))
            return letters
        chunk: list[Decoded] = []
        owners: list[Record] = []  # each event's record, by its place in the chunk, for the dead letters
        for record, decoded in run:
            chunk += decoded
            if len(decoded) == 1:
                owners.append(record)
            else:
                owners += [record] * len(decoded)
        verdicts = self._run_verdicts(run, chunk, known)
        owned: list[Record] = []  # the record of each letter
        try:
            self._handle_events(run[0][0], chunk, verdicts, known, lags, letters, owners, owned)
        except BaseException:
            failed_event = self._failed_event
            failed = next((r for r, decoded in run if any(d is failed_event for d in decoded)), None)
            start = 0
            for at, (record, decoded) in enumerate(run):
                if record is failed or failed is None:
                    # The records not handled keep their verdicts for their retry: their events were counted in
                    # the gate's windows already, and are not judged again.
                    if self._active_gate is not None:
                        for retried, events in run[at:]:
                            self._verdicts_ahead[(retried.position, 0)] = verdicts[start : start + len(events)]
                            start += len(events)
                    break
                self._handled(record, len(decoded))
                start += len(decoded)
            kept = [letter for letter, record in zip(letters, owned, strict=True) if record is not failed]
            self._pending.unsent.extend(kept)  # (sent by the next checkpoint, which waits for them)
            raise
        for record, decoded in run:
            self._handled(record, len(decoded))
        return letters

    def _handled(self, record: Record, events: int) -> None:
        """Every event of ``record`` (``events`` of them) was handled: the checkpoint covers it, and the verdicts
        kept for its retry are dropped. Its key and value are dropped too: until the checkpoint, it is kept only for
        its place and its handle."""
        record.key = record.value = None
        self.next_offsets[(record.topic, record.partition)] = record.offset + 1
        self._consumed += events
        ahead = self._verdicts_ahead
        if ahead:
            position = record.position
            for start in range(0, max(events, 1), YIELD_EVERY_EVENTS):
                ahead.pop((position, start), None)
        self._pending.records.append(record)

    def _handle_events(
        self,
        record: Record,
        chunk: list[Decoded],
        verdicts: list[Hold | None],
        known: set[str],
        lags: list[float],
        letters: list[Letter],
        owners: list[Record] | None = None,
        owned: list[Record] | None = None,
    ) -> None:
        """Handle a chunk's events in order (of ``record``, or of the records ``owners`` names for each event, by its
        place in the chunk, each letter's record then appended to ``owned``); appends the dead letters they need to
        ``letters``, in order.

        An event that passed the gate (its verdict None), is not a duplicate and finds the model not paused is
        learned here, in the loop (the common case: ~1 us an event less than a call per event; where the kernels
        are built, the loop's compiled twin ``kernel.learn_events`` learns runs of such events, ~0.85 us an event
        less again); any other is screened by :meth:`_screen`, which rejects, counts as a duplicate or quarantines
        it, or says to learn it.

        The held-event counters are updated once for the chunk, and each learned event's lag (from its time to
        now) is appended to ``lags``, which :meth:`process` reports once for the batch (the learned-event
        counter and the freshness histogram); both also when an event fails half-way: what was handled
        before it is counted. If an event fails half-way, it is left in ``_failed_event`` and the error raised:
        the caller decides which records are handled (:meth:`_handle_run`); a record not handled is retried, handles
        its events again (all but those learned) and makes their letters then.
        """
        pending = self._pending
        learner = self.learner
        assert learner is not None
        learn = learner.learn
        positive_types = learner.rule.positive_types
        challengers = tuple(self.challengers.values())
        sample_every = self.rule.sample_every if challengers else 0
        guard = self.guard
        clock = self.clock
        event_ids = pending.event_ids
        seen = pending.seen
        kernel = kernels.compiled()
        learned = 0
        held: dict[str, int] = {}
        decoded = None
        at, n = 0, len(chunk)
        if len(verdicts) != n:
            raise ValueError(f"{len(verdicts)} verdicts for a chunk of {n} events")
        if self.erasures:  # (none: the usual case, nothing to look at)
            verdicts = self._erased_dropped(chunk, verdicts)
        try:
            while at < n:
                if kernel is not None and self.paused_since is None:
                    # The events to learn plainly, in C (the loop below, compiled: 0.8-0.9 us an event less in
                    # process, /tmp/s53/handle.py). It stops at one to screen or a positive whose hit sample is due
                    # (both taken below, one at a time), and after the event at which the guard says to pause.
                    decoded = chunk[at]  # (the failed event if the call itself raises: out of memory for its result)
                    at, self._positives_seen, done, pause_at, error = kernel.learn_events(
                        chunk, verdicts, at, known, event_ids, seen, lags, learn, positive_types, challengers,
                        HIT_SAMPLE_EVERY, sample_every, self._positives_seen, None if guard is None else guard.update,
                        learner, clock, Event, _count_recommended,
                    )  # fmt: skip
                    learned += done
                    if error is not None:
                        decoded = chunk[at]
                        raise error
                    if pause_at is not None:
                        self._pause(pause_at)
                        continue
                    if at == n:
                        break
                decoded, verdict = chunk[at], verdicts[at]
                at += 1
                event = decoded.event
                if (
                    verdict is not None
                    or event is None
                    or self.paused_since is not None
                    or event.event_id in known
                    or event.event_id in event_ids
                ):
                    owner = record if owners is None else owners[at - 1]
                    outcome = self._screen(owner, decoded, verdict, known, held)
                    if outcome is not _LEARN:
                        if outcome is not None:
                            letters.append(outcome)
                            if owned is not None:
                                owned.append(owner)
                        continue
                    assert event is not None  # (_screen learns only events)
                now = clock()
                ts = event.ts_seconds
                user, item, kind = event.user_id, event.item_id, event.type
                if kind in positive_types:
                    self._positives_seen = positives = self._positives_seen + 1
                    if positives % HIT_SAMPLE_EVERY == 0 or (sample_every and positives % sample_every == 0):
                        self._sample_hit(user, item)
                learn(user, item, kind, event.watch_seconds, event.item_duration_seconds, ts=ts)
                # the champion learned it: recorded now, so that a challenger failing below does not have the record's
                # retry teach the champion the event again
                event_ids.add(event.event_id)
                seen[user].add(item)
                learned += 1
                for challenger in challengers:
                    challenger.learn(user, item, kind, event.watch_seconds, event.item_duration_seconds, ts=ts)
                context = event.context
                if context and isinstance(context.get("rec_id"), str):
                    _count_recommended(kind)
                lags.append(now - ts)  # an event stamped ahead of the clock counts as 0 (observe_many)
                loss = learner.last_loss  # of the prediction it made before learning (None: no label)
                if loss is not None and guard is not None and guard.update(loss) and self.paused_since is None:
                    self._pause(now)
        except BaseException:
            self._failed_event = decoded
            raise
        finally:
            pending.learned_since += learned
            for reason, count in held.items():
                metrics.EVENTS_QUARANTINED.labels(reason).inc(count)

    def _erased_dropped(self, chunk: list[Decoded], verdicts: list[Hold | None]) -> list[Hold | None]:
        """``verdicts``, or a copy with :data:`_ERASED` for each event of an erased user stamped at or before their
        erasure's request (learner.erasure): an event after the latest erasure is not looked up."""
        erasures = self.erasures
        latest, drops = erasures.latest, erasures.drops
        out = None
        for at, decoded in enumerate(chunk):
            event = decoded.event
            if event is not None and event.ts_seconds <= latest and drops(event.user_id, event.ts_seconds):
                if out is None:
                    out = list(verdicts)
                out[at] = _ERASED
        return verdicts if out is None else out

    async def _send_letters(self, letters: list[Letter], handled: bool) -> None:
        """Hand ``letters`` to the sender; the checkpoint confirms their delivery (:meth:`_confirm_dead_letters`).

        ``handled``: the records they are for are handled already (all their events). If the sender then raises
        (or this task is cancelled while it sends), the letters are kept to be sent again before the next
        checkpoint, which waits for them, and the error is raised: the records are not handled again (a retry
        would count their learned events as duplicates and their held ones twice). Otherwise (a record of several
        chunks, not all handled yet) the error is raised and the record's retry makes the letters again.
        """
        if not letters:
            return
        pending = self._pending
        try:
            deliveries = await self._dead_letters(letters)
        except BaseException:
            if handled:
                pending.unsent.extend(letters)  # the next checkpoint sends them before anything else (_capture)
                metrics.DEAD_LETTERS_UNDELIVERED.inc(len(letters))
            raise
        for delivery, letter in zip(deliveries, letters, strict=True):
            if delivery is not None:
                pending.letters.append((delivery, letter))
        if len(pending.letters) >= pending.prune_at:
            pending.prune_delivered()

    def _screen(
        self, record: Record, decoded: Decoded, verdict: Hold | None, known: set[str], held: dict[str, int]
    ) -> Letter | object | None:
        """What :meth:`_handle_events` does with an event that is not plainly to learn: reject it (an invalid
        event), count it as a duplicate, quarantine it (the gate's verdict, or a paused model), or :data:`_LEARN`.

        Returns the dead letter to send (topic kind, key, payload), None (nothing to send), or :data:`_LEARN`; a held
        event is counted in ``held`` by reason (for the metric, updated once per chunk).
        """
        pending = self._pending
        event, index = decoded.event, decoded.index
        if event is None:
            reason = decoded.reason or "invalid"
            self.rejected_total += 1
            metrics.EVENTS_REJECTED.labels("worker").inc()
            where = "" if index is None else f"[{index}]"
            log.warning("rejected %s/%d@%d%s: %s", record.topic, record.partition, record.offset, where, reason)
            return REJECTED, record.key, rejection_payload(record, reason, index, decoded.raw)
        if event.event_id in known or event.event_id in pending.event_ids:
            pending.gate_counts[DUPLICATE] += 1
            metrics.EVENTS_DUPLICATE.inc()
            return None
        if verdict is _ERASED:  # no letter, no seen item: nothing of theirs is kept
            pending.gate_counts[USER_ERASED] += 1
            metrics.EVENTS_ERASED.inc()
            return None
        if verdict is _UNJUDGED:
            # It repeats an event that was not learned after all (quarantined while the model guard
            # paused, or forgotten when an operator's version was adopted): judged now.
            gate = self._active_gate
            if gate is not None:
                verdict = gate.check(_gate_event(event, event.ts_seconds), self.clock(), record.overrides)
            else:
                verdict = None
        hold = verdict
        # (a replay never overrides a pause: what the guard paused for may be the replayed events themselves)
        if hold is None and self.paused_since is not None:
            hold = Hold(MODEL_PAUSED, "learning is paused by the model guard; replay after it resumes")
            self._watch_while_paused(event)
        if hold is None:
            return _LEARN
        pending.gate_counts[hold.reason] += 1
        held[hold.reason] = held.get(hold.reason, 0) + 1
        # Not learned, but the person did it (or a bot did, for its own user): never recommended to them again.
        pending.seen[event.user_id].add(event.item_id)
        return QUARANTINED, record.key, quarantine_payload(record, event, hold.reason, hold.detail, index)

    def _pause(self, now: float) -> None:
        """The model guard found the progressive loss degraded: pause learning (see :meth:`_screen`)."""
        self.paused_since = now
        metrics.MODEL_GUARD_PAUSED.set(1)
        metrics.MODEL_GUARD_PAUSES.inc()
        log.error(
            "model guard: the progressive loss degraded against its recent history; learning is "
            "paused and new events are quarantined as %r until an operator resumes it or the "
            "stream is healthy again",
            MODEL_PAUSED,
        )

    @property
    def checkpoint_share(self) -> float:
        """Most of the worker's time checkpoints may take, on average (RECSTREAM_CHECKPOINT_SHARE)."""
        return self.checkpoint_budget.share

    @checkpoint_share.setter
    def checkpoint_share(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError("checkpoint_share must be in (0, 1]")
        self.checkpoint_budget.share = share

    def checkpoint_due(self, idle: bool = False) -> bool:
        """Records are pending and either ``checkpoint_every_events`` were learned or ``checkpoint_interval_seconds``
        passed since the last checkpoint (or, with ``idle``, the stream went quiet: the worker has nothing else to
        do); in all cases only while checkpoints are within their time budget:
        ``checkpoint_share`` of the time, with up to ``CHECKPOINT_BANK_SECONDS`` banked, so a long checkpoint is
        paid from what short ones left unused, and else defers the next (by at most
        ``MAX_CHECKPOINT_SPACING_SECONDS`` after it ended). So as the model grows, checkpoints get longer and then
        rarer, instead of taking ever more of the worker's time; the events learned meanwhile wait, so
        ``checkpoint_every_events`` is then a minimum, not a bound."""
        pending = self._pending
        if self._write is not None and self._write.stored() is False:
            return not self._lock.locked()  # the checkpoint raises that write's error (its events go back) and retries
        if not pending.records and not self._erase_waiting:
            return False
        if self._lock.locked():  # a batch or a checkpoint is running: asked again after it (not judged mid-way)
            return False
        if not self.checkpoint_budget.affordable():
            return False
        now = time.monotonic()
        factor = self.checkpoint_catch_up_factor if self.behind else 1.0
        return (
            idle
            or self._erase_waiting
            or pending.learned_since >= self.checkpoint_every_events * factor
            or now - self._last_checkpoint >= self.checkpoint_interval_seconds * factor
        )

    def note_waiting(self, messages: int) -> None:
        """``messages`` wait to be processed after the slice the agent hands over next: in Kafka past those it took
        (by the broker's high watermarks from the consumer's last fetches), and in the rest of its take (a backlog of
        batch messages may be taken whole). Whether the worker is :attr:`behind` is judged by them."""
        self._waiting = messages
        metrics.WORKER_CATCHING_UP.set(1 if self.behind else 0)

    @property
    def behind(self) -> bool:
        """More than ``checkpoint_every_events`` events wait to be processed (counted as the messages
        :meth:`note_waiting` was told of, at the last batch's events per message): a restart or a burst left the
        worker behind. Checkpoints are then ``checkpoint_catch_up_factor`` times further apart, by time and by
        events (:meth:`checkpoint_due`; 1, off, by default): a version every 0.5 s serves nobody fresher while the
        events learned are seconds old. At 4, on the ingest bench's backlog, one-event messages took ~4% less CPU an
        event for ~60 MB more peak memory, batch messages no less CPU for ~100 MB more (docs/architecture.md)."""
        return self._waiting * self._events_per_record > self.checkpoint_every_events

    async def _deliver_dead_letters(self, pending: Pending) -> None:
        """Flush the producer and confirm every dead letter since the last checkpoint (:meth:`_confirm_dead_letters`);
        raises, counted as a failed checkpoint, if one is not in Kafka. (Done after the snapshot is encoded, which
        leaves the letters' requests time to be answered; before it while letters are being refused.)"""
        try:
            await self._flush()
            await self._confirm_dead_letters(pending)
        except Exception:
            self._letters_stalled = True
            metrics.CHECKPOINTS.labels("failed").inc()
            metrics.KAFKA_ERRORS.labels("worker").inc()
            log.exception(
                "cannot deliver dead letters to Kafka; the checkpoint waits and its events stay unacknowledged"
            )
            raise
        self._letters_stalled = False

    async def _confirm_dead_letters(self, pending: Pending) -> None:
        """Check that every dead letter since the last checkpoint was delivered (after the flush, their deliveries
        are settled); send again those that were not and raise :class:`DeadLettersUndelivered`.

        A producer flush waits for its requests but does not raise when one failed: the broker refused the
        letter (a topic's size limit, an ACL) or the producer's request timeout passed. Without this check, such
        a letter was dropped while the checkpoint acknowledged its event's offset.
        """
        error: BaseException | None = None
        letters, pending.letters = pending.letters, []
        for at, (delivery, letter) in enumerate(letters):
            try:
                if delivery.cancelled():  # (awaiting it would raise CancelledError, as if this task were cancelled)
                    raise DeadLettersUndelivered("its delivery was cancelled")
                await asyncio.shield(delivery)  # shared by a batch's letters: this task's cancellation leaves it be
            except Exception as exc:  # noqa: BLE001 - any error of the producer for this letter: send it again
                error = exc
                pending.unsent.append(letter)
                metrics.DEAD_LETTERS_UNDELIVERED.inc()
            except BaseException:  # this task cancelled while waiting: the letters not confirmed stay pending
                pending.letters = letters[at:]
                raise
        if not pending.unsent:
            return
        count, sent = len(pending.unsent), 0
        kinds = sorted({kind for kind, _, _ in pending.unsent})
        try:
            for letter in pending.unsent:  # one at a time: a letter a batch could not carry goes alone
                (delivery,) = await self._dead_letters([letter])
                sent += 1
                if delivery is not None:
                    pending.letters.append((delivery, letter))
        except Exception as exc:  # noqa: BLE001 - sending again failed: the rest is sent at the next attempt
            error = exc
        finally:
            del pending.unsent[:sent]
        raise DeadLettersUndelivered(
            f"{count} dead letter(s) to the {'/'.join(kinds)} topic not delivered"
            + (f" (last error: {error!r})" if error is not None else "")
            + f"; {sent} sent again, the checkpoint waits for them"
        )

    async def checkpoint(self, wait: bool = True) -> int | None:
        """Write learner + offsets + seen sets + learned ids + gate counts to Redis in one
        transaction, then acknowledge the messages. Returns the new version (None: nothing to do).

        The snapshot is encoded and what it covers set aside under the checkpoint lock; the Redis
        transaction (and the dead letters' delivery before it) then runs as a task of its own. With
        ``wait=False`` (the agent's) this returns once that task started (None) and the next batch is
        learned while Redis writes (measured: ~15 ms of every checkpoint the worker waited for Redis
        with nothing to do); the next checkpoint waits for it first. A write that failed is raised by
        the next checkpoint, after the events it covered are put back in front of the pending ones
        (still learned, not acknowledged: the next version covers them, whole), and that retry waits
        for its own write, so a Redis outage backs the agent off instead of piling up writes.

        While the model guard has paused learning the model does not change, so no new version
        is written (the last good one stays current); offsets and gate counts still are.
        """
        started = time.monotonic()  # a wait for the write before counts as the worker's time on checkpoints
        async with self._lock:
            await self._settle_write()  # (a failed write was counted where it failed: _written)
            try:
                write = await self._capture(started)
            except Exception as exc:  # e.g. Redis unreachable when it looks for an operator's promotion
                metrics.CHECKPOINTS.labels("failed").inc()
                if isinstance(exc, redis_errors.RedisError):
                    metrics.count_redis_error("worker", exc)
                raise
            if write is None:
                return None
            self._write = write
            write.task = asyncio.create_task(self._written(write), name="checkpoint-write")
            if not wait and not self._write_failed:
                self._spend(write)
                return None
            version = await self._settle_write()
            self._spend(write)
            return version

    def _spend(self, write: _Write) -> None:
        """The worker's time on a checkpoint (not its write, when the next batch is learned meanwhile) is paid from
        its budget."""
        self.checkpoint_budget.spend(time.monotonic() - write.started)
        metrics.CHECKPOINT_SPACING.set(self.checkpoint_budget.wait())

    async def _settle_write(self) -> int | None:
        """Wait for the checkpoint being written, if any (under the lock); its version, or raise its error once its
        events are put back in front of the pending ones (the next checkpoint covers them)."""
        write = self._write
        if write is None:
            return None
        task = write.task
        assert task is not None
        try:
            # shielded: a caller cancelled while it waits (the agent stopping) leaves the write running; it stays
            # in flight, and the next checkpoint waits for it
            return await asyncio.shield(task)
        except BaseException:
            if not task.done() or (not task.cancelled() and task.exception() is None):
                raise  # this caller was cancelled: the write goes on, or it went through (the finally settles it)
            self._write = None
            self._put_back(write.pending)  # (a write fails only before its transaction went through: _written)
            if task.cancelled():  # (the loop torn down): not this caller's cancellation
                raise RuntimeError("the checkpoint's write was cancelled; its events are written again") from None
            raise
        finally:
            if task.done() and self._write is write:  # written
                self._write = None

    def _put_back(self, pending: Pending) -> None:
        """A failed write's events go back in front of those learned since: still learned, not acknowledged."""
        self._write_failed = True
        now = self._pending
        now.records[:0] = pending.records
        for user, items in pending.seen.items():
            now.seen[user].update(items)
        now.event_ids.update(pending.event_ids)
        for reason, count in pending.gate_counts.items():
            now.gate_counts[reason] += count
        now.learned_since += pending.learned_since
        now.letters[:0] = pending.letters
        now.unsent[:0] = pending.unsent

    async def _capture(self, started: float) -> _Write | None:
        """Under the lock: what the next checkpoint writes (None: nothing to do); the events it covers leave
        ``_pending`` and the change log starts again for the next delta."""
        if self.learner is None:
            return None
        if self.lease is not None and self.lease.lost_to is not None:
            # nothing more from this worker: no operator request taken, no dead letter sent, nothing written
            raise CheckpointConflict(f"{self.lease.loss}: this worker writes nothing")
        await self._apply_operator_resume()
        adopted = await self._adopt_promoted_version()
        # A swap whose checkpoint failed is still to be recorded: keep its record until one succeeds.
        promotion = self._unrecorded_promotion or await self._promote_challenger()
        self._unrecorded_promotion = promotion
        erasures = await self.store.erasures.requests() if self._erase_waiting else {}
        self._erase_waiting = bool(erasures)
        learner = self.learner
        pending = self._pending
        if not pending.records and promotion is None and not erasures:
            return None
        if erasures:
            self._erase(erasures)
        if time.monotonic() - self._erased_pruned >= ERASED_PRUNE_SECONDS:
            self._erased_pruned = time.monotonic()
            self._erased_expired += self.erasures.prune(self.clock())
        paused = self.paused_since is not None
        unchanged = (
            (paused or adopted)
            and pending.learned_since == 0
            and self.version is not None
            and promotion is None
            and not erasures
        )
        if self._letters_stalled or pending.unsent:  # letters were refused, or not sent: no snapshot until they pass
            await self._deliver_dead_letters(pending)
        blob, base = (None, None) if unchanged else self._snapshot(learner)
        self._prepare_growth(learner)
        whole = None
        if blob is not None and base is not None:
            whole = self._whole_if_long(len(blob), learner)
        meta = {
            "contestant": self.champion_name,
            "writer": self.writer_id,
            "created": datetime.now(UTC).isoformat(),
            "events_learned": learner.events_learned,
            "events_labelled": learner.events_labelled,
            "events_rejected": self.rejected_total,
            "progressive_auc": _finite_or_none(learner.metrics.auc),
            "progressive_logloss": _finite_or_none(learner.metrics.logloss),
            "model": learner.describe_model(),
            "guard": "paused" if paused else "learning",
            "gate_held": dict(pending.gate_counts),  # reason -> events held or dropped since the parent
        }
        write = _Write(
            started=started,
            pending=pending,
            blob=blob,
            base=base,
            whole=whole,
            meta=meta,
            offsets=dict(self.next_offsets),
            guard={
                "state": "paused" if paused else "learning",
                "since": self.paused_since or "",
                **(self.guard.reference_state() if self.guard is not None else {}),
            },
            challengers=self._contestant_blobs(blob if base is None else None),
            contest=self.contest_status() if self._contestants else None,
            promotion=promotion,
            learner=learner,
            parent=self.version,
            erasures=erasures,
            erased_expired=list(self._erased_expired),
            resume_request=self._resume_applied,
        )
        if blob is not None:
            if self.checkpoint_delta_share > 0:  # the next delta records changes from here on
                cooccurrence_delta.mark(learner)
            self._delta_base = None  # until this write succeeds: it sets the version the next delta is made against
        self._pending = Pending()  # last: nothing above may fail once the events are set aside
        self._erase_waiting = False  # the write carries the requests (and asks again if it fails: _written)
        self._last_checkpoint = time.monotonic()
        return write

    async def _written(self, write: _Write) -> int | None:
        """Deliver the checkpoint's dead letters, write it to Redis, then acknowledge its messages."""
        pending = write.pending
        await self._deliver_dead_letters(pending)  # they must be in Kafka before their offsets are acked
        try:
            version = await self.store.checkpoint(
                write.parent,
                write.blob,
                write.meta,
                write.offsets,
                pending.seen,
                event_ids=pending.event_ids,
                gate_counts=pending.gate_counts,
                guard=write.guard,
                now=self.clock(),
                challengers=write.challengers,
                contest=write.contest,
                promotion=write.promotion,
                base=write.base,
                lease=self.lease,
                erasures=write.erasures,
                erased_expired=write.erased_expired,
                resume_request=write.resume_request,
            )
        except Exception as exc:
            if write.erasures:  # still waiting in Redis: the next checkpoint applies them again
                self._erase_waiting = True
            promoted = await self._promoted_meanwhile() if isinstance(exc, CheckpointConflict) else None
            if promoted is not None:
                log.warning(
                    "an operator promoted v%s while this checkpoint was being written: it is not written, its "
                    "events stay pending, and the next checkpoint continues from v%s",
                    promoted,
                    promoted,
                )
                raise PromotedMeanwhile(str(exc)) from exc
            metrics.CHECKPOINTS.labels("failed").inc()
            if isinstance(exc, redis_errors.RedisError):  # (not a refused write: CheckpointConflict)
                metrics.count_redis_error("worker", exc)
            # The records go back to the pending ones and stay unacknowledged; the next checkpoint covers them.
            if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):  # (and refused credentials)
                log.warning("checkpoint failed (%s: %s); its events stay unacknowledged", type(exc).__name__, exc)
            else:
                log.exception("checkpoint failed; its events stay unacknowledged and will be retried")
            raise
        self._write_failed = False
        if write.erased_expired:  # (those forgotten since are deleted by the next one)
            del self._erased_expired[: len(write.erased_expired)]
        if write.erasures:
            log.warning("v%s: %d user(s) erased, as asked", version, len(write.erasures))
            metrics.USERS_ERASED.inc(len(write.erasures))
        if self._look_ahead is not None:  # its lookup may have been sent before this was stored (_known_ahead)
            self._stored_ids.append((self._stored_count, pending.event_ids))
        self._stored_count += 1
        if self._unrecorded_promotion is write.promotion:
            self._unrecorded_promotion = None
        if self._resume_applied == write.resume_request:
            self._resume_applied = None  # (deleted in Redis with the guard's new state)
        self.version = version
        blob, base = write.blob, write.base
        if blob is not None:  # the next delta is made against this version
            if base is None:
                self._whole_bytes, self._chain = len(blob), []
            else:
                self._chain.append((version, len(blob)))
                if write.whole is not None and version is not None:  # (none can run: _whole_if_long saw none)
                    self._consolidation = asyncio.create_task(
                        self._consolidate(version, write.whole), name=f"consolidate-v{version}"
                    )
            if self.checkpoint_delta_share > 0 and self.learner is write.learner:
                self._delta_base = version
        try:
            self._written_bookkeeping(write, version)
        except Exception:  # the version is stored: its events must not be written again
            log.exception("v%s was stored, but what follows its checkpoint failed", version)
        return version

    def _written_bookkeeping(self, write: _Write, version: int | None) -> None:
        """After a checkpoint's transaction: acknowledge its messages, update the metrics, log a promotion."""
        for record in write.pending.records:
            if record.handle is not None:
                self._ack(record.handle)
        blob, base = write.blob, write.base
        elapsed = time.monotonic() - write.started
        learner = write.learner
        metrics.CHECKPOINTS.labels("ok").inc()
        metrics.CHECKPOINT_SECONDS.observe(elapsed)
        if blob is not None:
            metrics.CHECKPOINT_BYTES.labels("delta" if base is not None else "whole").set(len(blob))
        metrics.LAST_CHECKPOINT.set(time.time())
        metrics.MODEL_VERSION.labels("worker").set(version or 0)
        metrics.PROGRESSIVE_AUC.labels(learner.model.kind).set(learner.metrics.auc)
        metrics.PROGRESSIVE_LOGLOSS.labels(learner.model.kind).set(learner.metrics.logloss)
        log.debug("checkpoint v%s: %d events learned, %.1f ms", version, learner.events_learned, elapsed * 1e3)
        self._export_contest()
        promotion = write.promotion
        if promotion is not None:
            # by kind of actor (auto, operator, api): not the API key's name a promotion record keeps (api:<name>)
            metrics.CONTEST_PROMOTIONS.labels(str(promotion["actor"]).partition(":")[0]).inc()
            log.warning(
                "v%s: %r replaced %r as champion (%s): %s",
                version,
                promotion["to_model"],
                promotion["from_model"],
                promotion["actor"],
                promotion["reason"],
            )

    # -- champion / challenger ---------------------------------------------------------------

    def contest_status(self) -> dict[str, Any]:
        """The champion's name and each challenger's standing (written with every checkpoint)."""
        learner = self.learner
        return {
            "champion": self.champion_name,
            "champion_model": learner.model.kind if learner else None,
            "rule": dataclasses.asdict(self.rule),
            "auto_hold_samples": self.auto_hold_samples,
            "challengers": {
                name: {
                    "model": challenger.model.kind,
                    "events_learned": challenger.events_learned,
                    "progressive_auc": _finite_or_none(challenger.metrics.auc),
                    **self.contests[name].summary(),
                    "verdict": self.contests[name].verdict(),
                }
                for name, challenger in self.challengers.items()
            },
        }

    def _contestant_blobs(self, blob: bytes | None) -> dict[str, bytes] | None:
        """Every contestant's state at this checkpoint's offsets, the champion's included (its version may be
        rolled back later, and then this is where it continues from in shadow). Written with every
        checkpoint, so a contestant saved at other offsets was not configured meanwhile (and starts again)."""
        if not self.challengers:
            return None
        learner = self.learner
        assert learner is not None
        blobs = {name: challenger.to_bytes() for name, challenger in self.challengers.items()}
        blobs[self.champion_name] = blob if blob is not None else learner.to_bytes()
        return blobs

    def _export_contest(self) -> None:
        champion_rate = None
        for name, contest in self.contests.items():
            summary = contest.summary()
            if summary["challenger_hit_rate"] is not None:
                metrics.CONTEST_HIT_RATE.labels(name, "challenger").set(summary["challenger_hit_rate"])
                champion_rate = summary["champion_hit_rate"]
        if champion_rate is not None:
            metrics.CONTEST_HIT_RATE.labels(self.champion_name, "champion").set(champion_rate)

    async def _promote_challenger(self) -> dict[str, Any] | None:
        """Swap in a challenger an operator asked for, or (``rule.auto``) one the rule promotes.

        Returns the promotion record for the checkpoint (None: the champion stays).
        """
        # Only a worker with challengers reads requests (the API accepts names of running challengers only).
        request = await self.store.challenger_request() if self.challengers else None
        if request is not None:
            name = request.get("name")
            if name in self.challengers:
                # The request is deleted by the checkpoint that records the promotion, not before.
                return self._swap_champion(name, str(request.get("reason", "")), str(request.get("actor", "operator")))
            await self.store.drop_challenger_request()
            log.error(
                "an operator asked to promote challenger %r, which this worker does not run (challengers: %s)",
                name,
                ", ".join(self.challengers) or "none",
            )
        if not self.rule.auto or self.paused_since is not None or self.auto_hold_samples:
            return None
        verdicts = {name: contest.verdict() for name, contest in self.contests.items()}
        promotable = [name for name, verdict in verdicts.items() if verdict is not None]
        if not promotable:
            return None
        best = max(promotable, key=lambda name: self.contests[name].summary()["z"])
        return self._swap_champion(best, str(verdicts[best]), "auto")

    def _swap_champion(self, name: str, reason: str, actor: str) -> dict[str, Any]:
        old_name = self.champion_name
        old_model = self.learner.model.kind if self.learner else None
        standing = self.contests[name].summary()
        self._install_champion(name, self.challengers[name])
        if actor != "auto":
            self._hold_auto_promotion()
        return {
            "reason": reason,
            "actor": actor,
            "from_model": old_name,
            "to_model": name,
            "from_kind": old_model,
            "to_kind": self.learner.model.kind if self.learner else None,
            "standing": standing,
        }

    def _learner_of(self, snapshot: Snapshot) -> OnlineLearner:
        """The learner of a stored version (a delta version: its chain applied to the whole version it starts from)."""
        root, deltas = snapshot.chain()
        assert root is not None  # loaded without known_base: the chain reaches a whole version (itself if whole)
        return self._learner_from_bytes(cooccurrence_delta.whole_blob(root.blob, deltas))

    def _snapshot(self, learner: OnlineLearner) -> tuple[bytes, int | None]:
        """This checkpoint's bytes and, for a delta, the version it applies to: a delta against the last version
        written when one can be made, is at most ``checkpoint_delta_share`` of the whole snapshot's size and the
        chain is shorter than MAX_DELTA_CHAIN; else a whole snapshot. (When the deltas add up past the share, a
        whole snapshot of a delta version is written in the background instead: :meth:`_whole_if_long`.)"""
        base = self._delta_base
        if base is not None and self.checkpoint_delta_share > 0 and len(self._chain) < MAX_DELTA_CHAIN:
            made = cooccurrence_delta.parts(learner, base_version=base)
            if made is not None:
                blob = codec.encode(*made)
                if len(blob) <= self.checkpoint_delta_share * self._whole_bytes:
                    return blob, base
        return learner.to_bytes(), None

    def _whole_if_long(self, delta_bytes: int, learner: OnlineLearner) -> Callable[[], bytes] | None:
        """What makes the whole snapshot of the learner now, when the deltas since the chain's whole version, this
        one's ``delta_bytes`` included, add up to more than ``checkpoint_delta_share`` of its size (else None).
        Once the delta is written, the snapshot is made and written over it in the background
        (:meth:`_consolidate`): a chain through it ends there from then on. The next versions are not held back
        by it: they keep coming as deltas while it is written, unlike a whole snapshot written as a version of its
        own. The learner's state is copied here, under the checkpoint lock (``to_bytes_later``); joining the copy
        into one snapshot (~100 MB at a million events) is left to a thread, the learner learning on meanwhile."""
        if self._consolidation is not None or self.checkpoint_delta_share <= 0:
            return None
        if sum(size for _, size in self._chain) + delta_bytes <= self.checkpoint_delta_share * self._whole_bytes:
            return None
        return learner.to_bytes_later()

    def _prepare_growth(self, learner: OnlineLearner) -> None:
        """Have the memory the model grows into next made in a thread now, when that is due (``growth_ahead``: the
        co-occurrence rows' slot table, from half full), so that the growth takes it ready. Made at the growth, on
        the event loop, its pages were faulted in one by one by the events after it: ~70% of a core in the kernel
        for ~3 s on the grown bench model, learning 5-10x slower meanwhile (the forty-ninth session)."""
        if self._growth is not None:
            return
        ahead = learner.growth_ahead()
        if ahead is None:
            return
        self._growth = growth = asyncio.ensure_future(asyncio.to_thread(ahead))

        def done(task: asyncio.Future[object]) -> None:
            self._growth = None
            if not task.cancelled() and task.exception() is not None:  # no memory: the growth makes its own
                log.warning("preparing the model's growth failed: %r", task.exception())

        growth.add_done_callback(done)

    async def _consolidate(self, version: int, make_whole: Callable[[], bytes]) -> None:
        try:
            whole = await asyncio.to_thread(make_whole)
            written = await self.store.consolidate(version, whole)
        except Exception as exc:  # the deltas stay valid; tried again after the next checkpoint
            metrics.CONSOLIDATIONS.labels("failed").inc()
            if isinstance(exc, redis_errors.RedisError):
                metrics.count_redis_error("worker", exc)
            log.exception("writing the whole snapshot of v%s in the background failed; its chain stays", version)
            return
        finally:
            self._consolidation = None
        metrics.CONSOLIDATIONS.labels("ok" if written else "skipped").inc()
        if not written:
            return
        metrics.CHECKPOINT_BYTES.labels("whole").set(len(whole))
        log.debug("v%s is whole now (%d bytes, written in the background)", version, len(whole))
        versions = [v for v, _ in self._chain]
        if version in versions:  # (else a whole version was written since: the chain starts there)
            self._whole_bytes = len(whole)
            self._chain = self._chain[versions.index(version) + 1 :]

    async def settle(self) -> None:
        """Wait for the checkpoint being written (raising its error), then for a whole snapshot being written in the
        background, and for the memory of a growth being made (at shutdown, and in tests)."""
        async with self._lock:
            if self._look_ahead is not None:  # the agent stopped before the slice it was made for
                self._look_ahead.drop()
                self._look_ahead = None
            await self._settle_write()
        task = self._consolidation
        if task is not None:
            await asyncio.shield(task)
        growth = self._growth
        if growth is not None:  # (its failure is logged, not raised: the growth makes its own memory then)
            await asyncio.wait([growth])

    def _install_champion(self, name: str, learner: OnlineLearner) -> None:
        """``learner`` (named ``name``) serves from now on; a configured former champion goes into shadow.

        Every contest starts again: a new champion is not judged on samples scored before it served. So does the
        model guard's yardstick, unless it paused learning (:meth:`ModelGuard.restart`): from the new champion's own
        progressive window. An older version's losses measured against the reference the abandoned one built would
        pause learning for no fault of the stream.
        """
        self._delta_base = None  # the next checkpoint of the new champion is whole
        if self.learner is not None:
            cooccurrence_delta.forget(self.learner)
        old_name, old = self.champion_name, self.learner
        if name != old_name and old is not None and old_name in self._contestants:
            self.challengers[old_name] = old
        self.challengers.pop(name, None)
        self.champion_name = name
        self.learner = learner
        self.contests = {n: Contest(self.rule) for n in self.challengers}
        if self.guard is not None:
            self.guard.restart(learner.metrics.window_losses())
        if learner is not old:
            # The figures the former champion left: its live hit rate samples, the contest's standings by role (every
            # contest starts again), and its progressive figures if its kind differs (they are labelled by kind: a
            # frozen AUC of the former kind would keep an alert firing until a restart).
            self._hits.clear()
            metrics.CONTEST_HIT_RATE.clear()
            if old is not None and old.model.kind != learner.model.kind:
                for gauge in (metrics.PROGRESSIVE_AUC, metrics.PROGRESSIVE_LOGLOSS, metrics.PROGRESSIVE_HIT_RATE):
                    with contextlib.suppress(KeyError):  # (none exported yet)
                        gauge.remove(old.model.kind)

    def _sample_hit(self, user: str, item: str) -> None:
        """Every ``HIT_SAMPLE_EVERY``-th positive: was its item in the user's top 10 just before learning it?
        And every ``rule.sample_every``-th, with challengers running, a paired sample: was it in the
        champion's top 10, and in each challenger's?

        The live figure is a cheap estimate (no exclusion of what the user saw; ``recstream evaluate`` is the exact
        protocol), kept over the last ``HIT_WINDOW`` samples; its samples take at most ``HIT_TIME_SHARE``
        of the worker's time, so a large catalogue is sampled less often rather than slowing ingest.

        :meth:`_handle_events` counts the positives (``_positives_seen``, before learning each) and calls this for
        those at which either sample is due.
        """
        learner = self.learner
        paired = bool(self.challengers) and self._positives_seen % self.rule.sample_every == 0
        # Within its time budget (see recstream.share_budget); free when a paired sample ranks anyway.
        live = self._positives_seen % HIT_SAMPLE_EVERY == 0 and (paired or self.hit_budget.affordable())
        if learner is None or not (live or paired):
            return
        started = self.hit_budget.clock()
        champion_hit = hit_at_k(learner, user, item, self.rule.k)  # ranks the catalogue once for both uses
        if not paired:
            self.hit_budget.spend(self.hit_budget.clock() - started)
        if live:
            self._hits.append(champion_hit)
            metrics.PROGRESSIVE_HIT_RATE.labels(learner.model.kind).set(sum(self._hits) / len(self._hits))
        if paired:
            for name, challenger in self.challengers.items():
                self.contests[name].add(champion_hit, hit_at_k(challenger, user, item, self.rule.k))
            self.auto_hold_samples = max(0, self.auto_hold_samples - 1)

    async def _adopt_promoted_version(self) -> bool:
        """If an operator promoted or rolled back to another version, continue learning from it.

        The events learned since the worker's own last checkpoint are dropped from the model
        (they are *skipped*, not re-learned: Kafka has moved past them) and their ids are not
        recorded as learned, so they can still be replayed deliberately. Returns True if adopted.
        """
        current = await self.store.current_version()
        if current is None or current == self.version:
            return False
        snapshot = await self.store.load(current)
        if snapshot is None:
            return False
        last = await self.store.last_promotion()
        by_operator = last is not None and last.get("to") == current and last.get("actor") != "auto"
        if not by_operator:
            if snapshot.meta.get("writer") == self.writer_id:
                # This worker's own checkpoint committed although its reply was lost (e.g. Redis restarted
                # right after EXEC): the model in memory is that version or newer; nothing to adopt.
                log.warning("v%s was written by this worker's last checkpoint after all; continuing", current)
                self.version = current
                self._unrecorded_promotion = None  # it was in that transaction
                return False
            raise CheckpointConflict(
                f"model v{current} was written by another worker (writer {snapshot.meta.get('writer')!r}), not "
                "promoted by an operator: run one worker per RECSTREAM_REDIS_PREFIX; this worker does not "
                "checkpoint until that is fixed"
            )
        superseded = self._unrecorded_promotion
        if superseded is not None:
            self._unrecorded_promotion = None
            log.warning(
                "the promotion of %r (%s) was not recorded before an operator changed the current version; "
                "the operator's choice stands",
                superseded["to_model"],
                superseded["actor"],
            )
        skipped = self._pending.learned_since
        self._install_champion(snapshot.meta.get("contestant") or self._default_champion, self._learner_of(snapshot))
        self._pending.event_ids.clear()
        self._pending.learned_since = 0
        log.warning(
            "model v%s was promoted by an operator (this worker was at v%s): continuing from it; %d events "
            "learned since this worker's last checkpoint are skipped",
            current,
            self.version,
            skipped,
        )
        self.version = current
        metrics.MODEL_VERSION.labels("worker").set(current)
        self._hold_auto_promotion()
        return True

    async def _promoted_meanwhile(self) -> int | None:
        """``current`` if it is a version an operator promoted since this worker's last checkpoint (what refused the
        write under way), as :meth:`_adopt_promoted_version` tells it; else None (also when Redis does not say)."""
        try:
            current = await self.store.current_version()
            last = await self.store.last_promotion()
        except Exception:  # noqa: BLE001 - Redis away: the write's own error stands
            return None
        by_operator = last is not None and last.get("to") == current and last.get("actor") != "auto"
        return current if current is not None and current != self.version and by_operator else None

    def _hold_auto_promotion(self) -> None:
        """An operator chose the champion: the automatic rule waits ``hold_windows`` windows before it may overrule."""
        self.auto_hold_samples = self.rule.window * self.rule.hold_windows
        if self.challengers and self.rule.auto:
            log.warning(
                "an operator chose the champion: automatic promotion waits %d paired samples", self.auto_hold_samples
            )

    def _watch_while_paused(self, event: Event) -> None:
        """Keep scoring (not learning) labelled events so the guard can tell when the stream is healthy again."""
        learner, guard = self.learner, self.guard
        if learner is None or guard is None:
            return
        y = learner.rule.label(event.type, event.watch_seconds, event.item_duration_seconds)
        if y is None:
            return
        if not guard.update_prediction(y, learner.model.predict_one(event.user_id, event.item_id)):
            self._resume("the progressive loss is back within its resume threshold")

    async def look_for_erasures(self) -> None:
        """Ask Redis whether users wait to be erased (at most every :data:`ERASE_POLL_SECONDS`; the worker's timer
        calls this): if so, a checkpoint is due, which erases them (:meth:`_erase`), even on a quiet stream."""
        if self._erase_waiting or time.monotonic() - self._erase_looked < ERASE_POLL_SECONDS:
            return
        self._erase_looked = time.monotonic()
        try:
            self._erase_waiting = await self.store.erasures.waiting() > 0
        except redis_errors.RedisError as exc:  # the checkpoints say Redis is away; looked for again next second
            log.debug("looking for requests to erase users failed: %s", exc)

    def _erase(self, requests: dict[str, str]) -> None:
        """Erase the users of ``requests`` (user id -> the request as read) from the champion and every challenger,
        from the seen sets pending, and have their older events dropped from now on (learner.erasure); the
        checkpoint under way then writes a whole snapshot and records them erased (store.erasures). A request is
        applied again if that write fails: forgetting a user twice changes nothing."""
        users = list(requests)
        for learner in (self.learner, *self.challengers.values()):
            assert learner is not None
            learner.forget_users(users)  # (one pass over the model's ids for them all: ~0.5 s a million users)
        pending = self._pending
        pending.unsent = [letter for letter in pending.unsent if _user_of(letter) not in requests]  # (not sent yet)
        for user, raw in requests.items():
            pending.seen.pop(user, None)
            at = requested_at(raw)
            assert at is not None  # (UserErasures.requests leaves out what is not a request)
            self.erasures.add(fingerprint(user), at)
        self._delta_base = None  # a delta would apply to a version that names them: the next snapshot is whole

    async def _apply_operator_resume(self) -> None:
        """Resume if an operator asked to end this pause. A request names the pause it ends (its
        ``since``, as reported in the guard status); one for an earlier pause, left in Redis when
        the guard resumed by itself, is dropped instead of cancelling a later pause."""
        if self.paused_since is None:
            return
        requested = await self.store.resume_request()
        if requested is None:
            return
        if requested == str(self.paused_since):  # as the checkpoint writes it into the guard status
            self._resume("an operator asked to resume", operator=True)
            # deleted by the checkpoint that stores the guard's new state: a worker stopped before it applies it again
            self._resume_applied = requested
        else:
            await self.store.drop_resume_request(requested)
            log.warning(
                "dropped a resume request for an earlier pause (since %s; this one since %s)",
                requested,
                self.paused_since,
            )

    def _resume(self, why: str, operator: bool = False) -> None:
        self.paused_since = None
        if operator and self.guard is not None:
            self.guard.resume()
        metrics.MODEL_GUARD_PAUSED.set(0)
        log.warning("model guard: learning resumed (%s)", why)


#: The verdict on an event that was a duplicate when its chunk was judged (already learned, or repeating
#: one that passed earlier in the chunk): _screen decides once it knows whether that one was learned.
_UNJUDGED = Hold(DUPLICATE, "not judged: a duplicate when its chunk was judged")
#: The verdict on an event of an erased user stamped before their erasure was asked for (learner.erasure): dropped,
#: without a dead letter (which would keep their data)
_ERASED = Hold(USER_ERASED, "the user was erased")
#: :meth:`EventProcessor._screen`'s answer for an event to learn
_LEARN = object()


def _count_recommended(kind: str) -> None:
    """A learned event whose context names the recommendation it came from (``rec_id``)."""
    metrics.RECOMMENDED_INTERACTIONS.labels(kind).inc()


def _user_of(letter: Letter) -> str | None:
    """The user of a quarantined event's dead letter (None for another letter)."""
    kind, _, payload = letter
    if kind != QUARANTINED:
        return None
    try:
        return orjson.loads(payload)["event"]["user_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _gate_event(event: Event, ts: float) -> GateEvent:
    # positional: a named tuple builds fastest this way (one per event)
    return GateEvent(
        event.event_id, event.user_id, event.item_id, event.type, ts, event.watch_seconds, event.item_duration_seconds
    )


def _views(chunk: list[Decoded], known: set[str], pending: set[str]) -> tuple[list[GateEvent | None], list[GateEvent]]:
    """The view of each event of ``chunk`` to judge (None for an item without an event, or whose event is in
    ``known`` or ``pending``), and those views alone, in order (``kernel.gate_views`` where the kernels are built)."""
    views: list[GateEvent | None] = [None] * len(chunk)
    judged: list[GateEvent] = []
    for i, decoded in enumerate(chunk):
        event = decoded.event
        if event is not None and event.event_id not in known and event.event_id not in pending:
            views[i] = view = _gate_event(event, event.ts_seconds)
            judged.append(view)
    return views, judged


def _spread(judged: list[Hold | None], chunk: list[Decoded], views: list[GateEvent | None]) -> list[Hold | None]:
    """The verdicts of a chunk from those on its judged views (in order): an event without a view is
    not an event to gate (None) or a duplicate when the chunk was judged (:data:`_UNJUDGED`)."""
    verdicts = iter(judged)
    return [
        next(verdicts) if view is not None else (None if decoded.event is None else _UNJUDGED)
        for decoded, view in zip(chunk, views, strict=True)
    ]


def _finite_or_none(value: float) -> float | None:
    return value if value == value and value not in (float("inf"), float("-inf")) else None

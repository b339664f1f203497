"""The Faust app: one agent on the events topic feeding :class:`stream.processor.EventProcessor`.

Values are taken as raw bytes (``value_serializer="raw"``) and decoded by the processor, so
a malformed message can never crash Faust's deserializer: it is dead-lettered with a reason.
Each taken message gets an extra reference (``incref``) so Faust cannot commit its offset
when the batch ends; the processor releases it after the checkpoint that covers it. A batch is
processed in slices of ``batch_slice_bytes`` (:func:`slices`), with a checkpoint between them
when one is due: a take of a backlog of batch messages can hold millions of events.

When Redis (or the broker, for dead letters) fails, the worker stops taking batches: a
checkpoint that fails is retried with capped exponential backoff (``RETRY_FIRST_SECONDS``
doubling up to ``RETRY_MAX_SECONDS``) before the next batch is taken, so what is pending
never grows without bound, and ``recstream_worker_stalled`` is 1 meanwhile. A batch whose
processing fails (Redis unreachable for the duplicate check) is retried the same way, from
the first message it did not handle. Nothing is acknowledged until a checkpoint covers it, so
nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import faust
from redis.exceptions import AuthenticationError, RedisError

from recstream import components, metrics
from recstream.heap_trim import HeapTrimmer
from recstream.settings import Settings
from store.writer_lease import WriterLease
from stream.dead_letters import BATCH_BYTES, DeadLetterSender
from stream.kafka_consumer import BundledMessage, use_fetch_limits
from stream.processor import (
    NO_OVERRIDES,
    QUARANTINED,
    REJECTED,
    EventProcessor,
    PromotedMeanwhile,
    Record,
    new_writer_id,
    overrides_from_headers,
)
from stream.take import take_ready

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

TAKE_LINGER_SECONDS = 0.005  # a batch waits this long for company (stream/take.py); the fetch limits gather the rest
IDLE_TICK_MAX_SECONDS = 0.2
RETRY_FIRST_SECONDS = 0.5  # first wait after a failed checkpoint (or batch, or start)…
RETRY_MAX_SECONDS = 5.0  # …doubling up to this
RELEASE_TIMEOUT_SECONDS = 3.0  # giving the writer lease back at exit waits this long at most (else it expires)


class Backoff:
    """Capped exponential backoff shared by the agent and the idle-checkpoint timer.

    While an operation keeps failing, :meth:`failed` returns the wait before the next attempt
    (``first``, ``2 * first``, … up to ``cap``) and :attr:`stalled` is True; :meth:`succeeded`
    resets it. ``ready()`` tells the timer whether an attempt is due (it never hurries a retry).
    """

    def __init__(
        self,
        first: float = RETRY_FIRST_SECONDS,
        cap: float = RETRY_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.cap = cap
        self.clock = clock
        self.failures = 0
        self.stalled_since: float | None = None
        self.next_attempt = -float("inf")
        self.retrying = False  # True while retry_until_done owns the retries (the timer stays out)

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    def ready(self) -> bool:
        return self.clock() >= self.next_attempt

    def delay(self) -> float:
        """The wait before the next attempt (0 when nothing failed)."""
        return max(0.0, self.next_attempt - self.clock())

    def failed(self) -> float:
        now = self.clock()
        wait = min(self.cap, self.first * 2 ** min(self.failures, 30))
        self.failures += 1
        if self.stalled_since is None:
            self.stalled_since = now
        self.next_attempt = now + wait
        metrics.WORKER_STALLED.set(1)
        return wait

    def succeeded(self) -> float | None:
        """Reset; returns how long it was stalled (None if it was not)."""
        stalled_for = None if self.stalled_since is None else self.clock() - self.stalled_since
        self.failures = 0
        self.stalled_since = None
        self.next_attempt = -float("inf")
        metrics.WORKER_STALLED.set(0)
        return stalled_for


async def retry_until_done(
    operation: Callable[[], Awaitable[Any]],
    backoff: Backoff,
    what: str,
    operation_label: str,
    on_failure: Callable[[], None] | None = None,
) -> Any:
    """Run ``operation`` until it succeeds, waiting ``backoff`` between attempts; log the stall and its end.

    Cancellation (the worker stopping) propagates; every other exception is retried.
    """
    backoff.retrying = True
    adopting = False  # an operator's promotion refused the last attempt: the next adopts it
    try:
        while True:
            wait = backoff.delay()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                result = await operation()
            except asyncio.CancelledError:
                raise
            except PromotedMeanwhile as exc:
                if on_failure is not None:
                    on_failure()
                if not adopting:  # (logged by the processor) not a failure: at once, without backing off
                    adopting = True
                    continue
                _log_failure(backoff, what, operation_label, exc)  # again: something else is wrong
                continue
            except Exception as exc:  # noqa: BLE001 - Redis or the broker failing: wait and retry
                if on_failure is not None:
                    on_failure()
                _log_failure(backoff, what, operation_label, exc)
                continue
            _log_recovery(backoff, what)
            return result
    finally:
        backoff.retrying = False


def _log_failure(backoff: Backoff, what: str, operation_label: str, exc: BaseException) -> None:
    metrics.WORKER_RETRIES.labels(operation_label).inc()
    if isinstance(exc, RedisError):  # (a batch's duplicate lookup, say; a checkpoint's write counted it already)
        metrics.count_redis_error("worker", exc)
    first = not backoff.stalled
    wait = backoff.failed()
    log.log(
        logging.ERROR if first else logging.WARNING,
        "%s failed (%s: %s); the worker takes no new events until it succeeds; retry %d in %.1fs "
        "(nothing is lost: events stay unacknowledged until a checkpoint covers them)",
        what,
        type(exc).__name__,
        exc,
        backoff.failures,
        wait,
    )


def _log_recovery(backoff: Backoff, what: str) -> None:
    stalled_for = backoff.succeeded()
    if stalled_for is not None:
        log.warning("%s succeeded after %.1fs stalled: consuming again", what, stalled_for)


def records_of(batch: list[Any]) -> list[Record]:
    """The processor's records for a batch of Faust events: one for each Kafka record (a
    :class:`~stream.kafka_consumer.BundledMessage` holds several, taken from it here: each record's bytes are then
    freed once the processor has handled it). Each message gets an extra reference, released by the checkpoint that
    covers its last record, which carries the event as its handle."""
    records = []
    for event in batch:
        message = event.message
        message.incref()  # released by processor.checkpoint()
        if type(message) is BundledMessage:
            members, message.records = message.records, []
        else:
            members = (message,)
        last = members[-1]
        for m in members:  # (positional arguments, and no header to read for most: 0.5 -> 0.3 us a record)
            headers = m.headers
            overrides = overrides_from_headers(headers) if headers else NO_OVERRIDES
            records.append(
                Record(m.topic, m.partition, m.offset, m.key, m.value, event if m is last else None, overrides)
            )
    return records


def slices(records: list[Record], max_bytes: int) -> Iterator[list[Record]]:
    """``records`` in order, in runs of consecutive records whose values add up to at most ``max_bytes`` (a record
    larger than that alone is a run of its own).

    >>> [[r.offset for r in piece] for piece in slices([Record("t", 0, n, None, b"x" * size) for n, size in
    ...  enumerate([3, 4, 2, 9, 1])], 7)]
    [[0, 1], [2], [3], [4]]
    """
    piece: list[Record] = []
    size = 0
    for record in records:
        length = len(record.value or b"")
        if piece and size + length > max_bytes:
            yield piece
            piece, size = [], 0
        piece.append(record)
        size += length
    if piece:
        yield piece


def create_app(settings: Settings) -> tuple[faust.App, EventProcessor]:
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        store="memory://",
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=max(settings.broker_session_timeout / 3, 0.5),
        broker_rebalance_timeout=settings.broker_session_timeout,
        stream_wait_empty=False,
        producer_acks=-1,
        # Dead letters are the worker's only messages: stream.dead_letters.DeadLetterSender builds their record
        # batches itself (partition, linger), up to this size.
        producer_max_batch_size=BATCH_BYTES,
        broker_credentials=components.faust_broker_credentials(settings),
    )
    use_fetch_limits(
        app, settings.broker_fetch_max_wait_seconds, settings.broker_fetch_min_bytes, settings.stream_bundle_bytes
    )
    events_topic = app.topic(
        settings.topic_events, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions
    )
    dead_letter_topics = {REJECTED: settings.topic_rejected, QUARANTINED: settings.topic_quarantined}

    redis = components.redis_client(settings)
    store = components.model_store(settings, redis, bulk=True)
    keys = store.keys
    lease = WriterLease(redis, keys.writer_lease, keys.writer_epoch, new_writer_id(), settings.worker_lease_seconds)

    started: Any = None  # Faust's producer, once started by the first dead letter

    async def letters_producer() -> Any:
        # Straight to aiokafka's producer (Faust's), not through a faust Topic (its channel, schema and message
        # objects cost several times the producer's own work per letter).
        nonlocal started
        if started is None:
            started = await app.maybe_start_producer()
        return started._ensure_producer()

    letters = DeadLetterSender(letters_producer, dead_letter_topics)

    def ack(event: Any) -> None:
        event.ack()

    processor = EventProcessor(
        store=store,
        new_learner=lambda: components.new_learner(settings),
        learner_from_bytes=lambda blob: components.learner_from_bytes(settings, blob),
        dead_letters=letters,
        flush=letters.flush,
        ack=ack,
        gate=components.quality_gate(settings),
        guard=components.model_guard(settings),
        checkpoint_every_events=settings.checkpoint_every_events,
        checkpoint_interval_seconds=settings.checkpoint_interval_seconds,
        checkpoint_catch_up_factor=settings.checkpoint_catch_up_factor,
        checkpoint_share=settings.checkpoint_share,
        checkpoint_delta_share=settings.checkpoint_delta_share,
        contestants=components.contestants(settings),
        champion_name=settings.model,
        promotion_rule=components.promotion_rule(settings),
        lease=lease,
        erasure_kept_seconds=settings.erasure_kept_days * 86400.0,
    )

    backoff = Backoff()

    async def process_batch(records: list[Record], upcoming: list[Record]) -> None:
        """Process ``records`` (and look ``upcoming`` up meanwhile); after a failure retry only those the processor
        did not take yet."""
        remaining = records

        async def attempt() -> None:
            if remaining:
                await processor.process(remaining, upcoming)

        def drop_handled() -> None:
            # Runs right after the failure (no await in between), before a checkpoint can clear the pending set.
            nonlocal remaining
            handled = {id(r) for r in processor.pending_records}
            remaining = [r for r in remaining if id(r) not in handled]

        await retry_until_done(attempt, backoff, "processing a batch", "batch", on_failure=drop_handled)

    trimmer = HeapTrimmer()

    async def checkpoint(wait: bool = True) -> None:
        await processor.checkpoint(wait=wait)
        metrics.publish_array_copies()
        if trimmer.after_checkpoint():  # the snapshot's intermediates are freed: give their pages back
            metrics.HEAP_TRIMS.inc()

    async def checkpoint_until_done() -> None:
        # Between slices the agent does not wait for Redis to take the checkpoint: it learns the next slice meanwhile
        # (EventProcessor.checkpoint); a write that failed is raised by the next checkpoint, which then waits for its
        # own.
        await retry_until_done(lambda: checkpoint(wait=False), backoff, "checkpoint", "checkpoint")

    async def checkpoint_if_due(idle: bool, what: str) -> None:
        # While the agent retries (stalled on a batch), it owns the schedule; otherwise a checkpoint that is due is
        # written here, and one that fails backs off the same way.
        if processor.ready and not backoff.retrying and backoff.ready() and processor.checkpoint_due(idle=idle):
            try:
                await checkpoint()
            except PromotedMeanwhile:  # (logged by the processor) the next checkpoint adopts the promoted version
                pass
            except Exception as exc:  # noqa: BLE001 - logged by the processor too; back off
                _log_failure(backoff, what, "checkpoint", exc)
            else:
                _log_recovery(backoff, what)

    async def checkpoint_when_quiet() -> None:
        # The stream delivered nothing for checkpoint_idle_seconds after a batch: save what is pending now rather
        # than after the rest of the interval (the take loop awaits this between batches).
        await checkpoint_if_due(True, "quiet checkpoint")

    @app.agent(events_topic, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        if not processor.ready:
            await retry_until_done(processor.start, backoff, "loading the model from Redis", "start")
        # Faust's Monitor sensor records per-message statistics we do not use (we export our own
        # Prometheus metrics); measured at about a fifth of the worker's time per event.
        with contextlib.suppress(KeyError):
            app.sensors.remove(app.monitor)
        try:
            async for batch in take_ready(
                stream,
                settings.batch_max_events,
                TAKE_LINGER_SECONDS,
                on_idle=checkpoint_when_quiet if settings.checkpoint_idle_seconds > 0 else None,
                idle_seconds=settings.checkpoint_idle_seconds,
            ):
                records = records_of(batch)
                waiting = waiting_past(app.consumer, batch) + len(records)  # (those taken count until processed)
                pieces = list(slices(records, settings.batch_slice_bytes))
                for at, piece in enumerate(pieces):
                    waiting -= len(piece)
                    processor.note_waiting(waiting)
                    # the next slice's event ids are looked up in Redis while this one is learned
                    await process_batch(piece, pieces[at + 1] if at + 1 < len(pieces) else [])
                    # A failed checkpoint blocks here (capped backoff) instead of taking the next slice.
                    if processor.checkpoint_due() or backoff.stalled:
                        await checkpoint_until_done()
        finally:
            log.info("agent stopping: writing a final checkpoint")
            await _checkpoint_quietly(processor)

    # The timer only looks whether a checkpoint is due; ticking at a fifth of the interval means events
    # that arrive between batches wait at most the interval plus a tick (not up to two intervals).
    @app.timer(interval=min(settings.checkpoint_interval_seconds / 5, IDLE_TICK_MAX_SECONDS))
    async def checkpoint_when_idle() -> None:
        if processor.ready:
            await processor.look_for_erasures()  # (a request makes a checkpoint due: it erases the users)
        await checkpoint_if_due(False, "idle checkpoint")
        _export_lag(app, processor, settings.topic_events)

    @app.on_before_shutdown.connect
    async def final_checkpoint(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        await _checkpoint_quietly(processor)

    return app, processor


def waiting_past(consumer: Any, batch: list[Any]) -> int:
    """Messages in Kafka past the last of ``batch`` (Faust events) in each of its partitions, by the high watermark
    of the consumer's last fetch from each (a partition whose watermark is not known yet counts none)."""
    last: dict[Any, int] = {}
    for event in batch:
        message = event.message
        last[message.tp] = message.offset
    waiting = 0
    for tp, offset in last.items():
        highwater = _highwater(consumer, tp)
        if highwater is not None:
            waiting += max(0, highwater - offset - 1)
    return waiting


def _highwater(consumer: Any, tp: Any) -> int | None:
    """The partition's high watermark from the consumer's last fetch from it (the offset its next message will
    have); None before the first fetch response, or once a rebalance took the partition."""
    try:
        return consumer.highwater(tp)
    except Exception:  # noqa: BLE001 - raised in both cases
        return None


def _export_lag(app: faust.App, processor: EventProcessor, topic: str) -> None:
    """Consumer lag per partition: the broker's high watermark minus the next offset to learn."""
    consumer = app.consumer
    try:
        assigned = list(consumer.assignment())
    except Exception:  # noqa: BLE001 - not assigned yet (rebalancing): nothing to report
        return
    for tp in assigned:
        if tp.topic != topic:
            continue
        highwater = _highwater(consumer, tp)
        if highwater is not None:
            lag = max(0, highwater - processor.next_offsets.get((tp.topic, tp.partition), 0))
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(lag)


async def _checkpoint_quietly(processor: EventProcessor) -> None:
    """A failed checkpoint is logged and retried later; its events stay unacknowledged, so none are lost.
    A whole snapshot being written in the background is waited for (else the next start reads the chain)."""
    for _ in range(2):  # a write that failed before is raised by the first attempt; the second writes its events again
        try:
            await processor.checkpoint()
            break
        except Exception:  # noqa: BLE001 - logged inside; the worker keeps going
            pass
    with contextlib.suppress(Exception):  # (a write's error was raised above already)
        await processor.settle()


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in the foreground until SIGTERM/SIGINT (which checkpoint before exit).

    It first takes the writer lease (store/writer_lease.py), waiting while another worker holds it, and only then
    joins the consumer group; it gives the lease back after its final checkpoint. A worker that loses the lease to
    another stops (exit status 1) without writing anything more.
    """
    from stream.topics import ensure_topics

    # Faust runs on the thread's current loop: create topics and take the lease on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    serve_metrics(settings)
    app, processor = create_app(settings)
    components.start_process(settings, log)
    lease = processor.lease
    assert lease is not None
    try:
        keeper = take_lease(loop, lease, settings.redis_prefix)
        if keeper is None:
            return  # stopped while it waited: it held nothing
        worker = faust.Worker(app, loglevel="INFO", redirect_stdouts=False)
        worker.execute_from_commandline()
    except AuthenticationError as exc:
        raise SystemExit(f"recstream worker: Redis refused the credentials in RECSTREAM_REDIS_URL ({exc})") from None
    finally:
        if lease.epoch is not None:
            asyncio.run(_release_lease(settings, lease))
        if lease.lost_to is not None:
            raise SystemExit(
                f"recstream worker: {lease.loss}; this one stopped without writing (started again, it takes the "
                "lease, or waits for it as a standby while another worker holds it)"
            )


def serve_metrics(settings: Settings) -> WSGIServer | None:
    """Serve the worker's Prometheus endpoint on ``RECSTREAM_WORKER_METRICS_HOST:PORT`` (none when the port is 0), in a
    thread of this process for as long as it runs; returns its server.

    A port another process holds (a second worker on this host, a standby, with the same settings) stops the worker
    with a message naming the setting, instead of a traceback.
    """
    from prometheus_client import start_http_server

    if not settings.worker_metrics_port:
        return None
    where = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
    try:
        server, _ = start_http_server(
            settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=metrics.worker_registry()
        )
    except OSError as exc:
        advice = (
            "another worker on this host may hold it; give each worker its own RECSTREAM_WORKER_METRICS_PORT"
            if exc.errno == errno.EADDRINUSE
            else "check RECSTREAM_WORKER_METRICS_HOST and RECSTREAM_WORKER_METRICS_PORT"
        )
        raise SystemExit(
            f"recstream worker: cannot serve its metrics on {where} ({exc.strerror or exc}): {advice} "
            "(port 0: no metrics endpoint)"
        ) from None
    log.info("worker metrics on http://%s/metrics", where)
    return server


def take_lease(loop: asyncio.AbstractEventLoop, lease: WriterLease, prefix: str) -> asyncio.Task[None] | None:
    """Wait on ``loop`` until ``lease`` is held, then keep it renewed there: the task that does (it stops the process
    by SIGTERM if another worker takes the lease). None if SIGTERM or SIGINT came while it waited."""
    metrics.WORKER_WRITER_LEASE.set(0)

    def waiting(other: str) -> None:
        log.warning(
            "%s writes the model of RECSTREAM_REDIS_PREFIX=%r: this one waits as a standby and takes over "
            "when it stops (at once after a SIGTERM, within %.0f s after a kill)",
            other,
            prefix,
            lease.seconds,
        )

    def lost(_other: str) -> None:
        metrics.WORKER_WRITER_LEASE.set(0)
        log.error("%s: this worker writes nothing more and stops", lease.loss)
        os.kill(os.getpid(), signal.SIGTERM)  # Faust's own shutdown: its final checkpoint is refused, nothing is lost

    # Faust installs its signal handlers only once it runs: until then a stop cancels the wait (and exits cleanly).
    waiting_task = loop.create_task(lease.acquire(waiting))
    stops = (signal.SIGTERM, signal.SIGINT)
    for stop in stops:
        loop.add_signal_handler(stop, waiting_task.cancel)
    try:
        loop.run_until_complete(waiting_task)
    except asyncio.CancelledError:
        log.info("stopped while waiting for the writer lease")
        return None
    finally:
        for stop in stops:
            loop.remove_signal_handler(stop)
    metrics.WORKER_WRITER_LEASE.set(1)
    log.info("writer lease taken: this worker (%s) writes the model", lease.holder)
    return loop.create_task(lease.keep(lost), name="writer-lease")


async def _release_lease(settings: Settings, lease: WriterLease) -> None:
    """Give the lease back after the worker stopped (its loop is closed: a client of its own)."""
    redis = components.redis_client(settings)
    try:
        lease.redis = redis
        if await asyncio.wait_for(lease.release(), RELEASE_TIMEOUT_SECONDS):
            log.info("writer lease released")
    except Exception as exc:  # noqa: BLE001 - Redis unreachable: the lease expires by itself
        log.warning("could not release the writer lease (%s); it expires in %.0f s", exc, lease.seconds)
    finally:
        await redis.aclose()
        metrics.WORKER_WRITER_LEASE.set(0)

"""Every Prometheus metric recstream exports, in one place (the default registry).

Names follow Prometheus conventions: units in names, ``_total`` for counters.

Several API processes on one port (``recstream api --workers N``) use prometheus_client's multiprocess mode: each
process writes its values to files in the directory :data:`MULTIPROCESS_DIR` names, and ``/metrics`` (or
``/v1/stats``) reads them all, whichever process answers (:func:`exposition_registry`). Counters and histograms are
summed over the processes, those that stopped included; a gauge says how it combines them (``multiprocess_mode``,
ignored in a single process): the unlabelled ones the worker sets are one series (``livemax``), the model version
each API process serves one series per process (``liveall``, labelled ``pid``), the seen sets held the sum
(``livesum``). A process's gauges go when it stops, or when a process starts after it died
(:func:`forget_dead_processes`). The ``process_*`` series (memory, CPU, file descriptors) are each live API
process's, labelled ``pid`` (:class:`ApiProcessesCollector`); the ``python_gc_*`` counters are summed over the API
processes like the others (:class:`GcCounts`).
"""

from __future__ import annotations

import asyncio
import gc
import glob
import os
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from learner import arrays

#: The environment variable that switches prometheus_client to its multiprocess mode (read when it is imported).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

EVENTS_CONSUMED = Counter(
    "recstream_events_consumed_total",
    "Events the worker read from the events topic (each element of a batch message counts).",
)
EVENTS_LEARNED = Counter(
    "recstream_events_learned_total", "Valid events the learner applied (model, popularity, seen set)."
)
EVENTS_REJECTED = Counter(
    "recstream_events_rejected_total",
    "Events refused by the contract, by where they were refused.",
    ["stage"],  # "ingest" (each event POST /v1/events refuses, answered 202 or 422) or "worker" (events.rejected)
)
EVENTS_SKIPPED_REPLAY = Counter(
    "recstream_events_skipped_already_learned_total",
    "Messages re-delivered by Kafka after a restart whose offsets the checkpoint already covers.",
)
EVENTS_DUPLICATE = Counter(
    "recstream_events_duplicate_total",
    "Events whose event_id was already learned within the retention window (counted, not learned again).",
)
EVENTS_ERASED = Counter(
    "recstream_events_erased_total",
    "Events of an erased user stamped before their erasure was asked for: dropped, not learned, no dead letter.",
)
USERS_ERASED = Counter("recstream_users_erased_total", "Users erased by the worker, as operators asked.")
EVENTS_QUARANTINED = Counter(
    "recstream_events_quarantined_total",
    "Events the quality gate held (sent to events.quarantined), by reason code.",
    ["reason"],
)
MODEL_GUARD_PAUSED = Gauge(
    "recstream_model_guard_paused", "1 while the model guard has paused learning, else 0.", multiprocess_mode="livemax"
)
MODEL_GUARD_PAUSES = Counter(
    "recstream_model_guard_pauses_total", "Times the model guard paused learning (drift alarms)."
)
CONSUMER_LAG = Gauge(
    "recstream_consumer_lag_messages",
    "Messages in the events topic not yet taken by the worker, per partition.",
    ["partition"],
)
EVENT_TO_LEARNED_SECONDS = Histogram(
    "recstream_event_to_learned_seconds",
    "Freshness: seconds from an event's timestamp to the moment the worker learned it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
KAFKA_ERRORS = Counter("recstream_kafka_errors_total", "Failed Kafka operations, by component.", ["component"])
DEAD_LETTERS_UNDELIVERED = Counter(
    "recstream_dead_letters_undelivered_total",
    "Dead letters the producer gave up on (the broker refused them, or its request timeout passed), or that could "
    "not be handed to it; each is sent again and the checkpoint that would acknowledge its event waits until it is "
    "delivered.",
)
MODEL_SWAP_DELAY = Histogram(
    "recstream_model_swap_delay_seconds",
    "Freshness: seconds from a checkpoint being written to this API process serving it (each newer version it swaps "
    "in; not its first load, nor an older version promoted).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
MODEL_LOAD_SECONDS = Histogram(
    "recstream_model_load_seconds",
    "Seconds this API process took to bring a new version into memory, by how: delta (applied in place to the "
    "version served) or whole (a whole snapshot, or a chain of deltas rebuilt from one).",
    ["how"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RECOMMENDED_INTERACTIONS = Counter(
    "recstream_recommended_interactions_total",
    "Events that echo a recommendation_id in context.rec_id (engagement with served lists), by type.",
    ["type"],
)
CONTEST_HIT_RATE = Gauge(
    "recstream_contest_hit_rate_at_10",
    "Champion / challenger: hit rate@10 over the current window of paired samples, per contestant.",
    ["contestant", "role"],
)
CONTEST_PROMOTIONS = Counter(
    "recstream_contest_promotions_total",
    "Challengers the worker made champion (actor: auto, or the operator's).",
    ["actor"],
)
PROGRESSIVE_HIT_RATE = Gauge(
    "recstream_progressive_hit_rate_at_10",
    "Share of sampled positive events whose item was in the user's top 10 just before learning it (rolling).",
    ["model"],
)
REDIS_ERRORS = Counter("recstream_redis_errors_total", "Failed Redis operations, by component.", ["component"])


def count_redis_error(component: str, exc: BaseException) -> None:
    """Count ``exc`` in :data:`REDIS_ERRORS` once, however many places see it (a checkpoint's failed write is seen
    where it failed, and again by the retry its error reaches)."""
    if getattr(exc, "_recstream_counted", False):
        return
    try:
        exc._recstream_counted = True  # type: ignore[attr-defined]
    except AttributeError:  # (an exception type without a __dict__: counted wherever it is seen)
        pass
    REDIS_ERRORS.labels(component).inc()


EVENTS_INGESTED = Counter(
    "recstream_events_ingested_total", "Events accepted by POST /v1/events and produced to Kafka."
)
INGEST_UNAVAILABLE = Counter(
    "recstream_ingest_broker_unavailable_total", "Ingest batches answered 503 because the broker did not take them."
)

CHECKPOINTS = Counter("recstream_checkpoints_total", "Checkpoints written, by outcome.", ["outcome"])
CHECKPOINT_SECONDS = Histogram(
    "recstream_checkpoint_duration_seconds",
    "Time from the start of a checkpoint until its write is stored (the worker learns on while it is written).",
)
CHECKPOINT_BYTES = Gauge(
    "recstream_checkpoint_size_bytes",
    "Size of the last snapshot written, by kind: whole, or a delta against the last whole one.",
    ["kind"],
)
CONSOLIDATIONS = Counter(
    "recstream_checkpoint_consolidations_total",
    "Whole snapshots of a delta version written over its delta in the background (outcome: ok; failed; skipped: "
    "the version was gone or changed meanwhile), so that chains of deltas stay short without holding versions back.",
    ["outcome"],
)
CHECKPOINT_SPACING = Gauge(
    "recstream_checkpoint_spacing_seconds",
    "Least time from the end of the last checkpoint to the next: 0 while checkpoints keep within "
    "RECSTREAM_CHECKPOINT_SHARE of the worker's time (2 s may be banked), else until the share's budget is out of "
    "debt, at most 30 s (when above 0 for long, the model's size, not RECSTREAM_CHECKPOINT_INTERVAL_SECONDS, sets "
    "how fresh recommendations are).",
    multiprocess_mode="livemax",
)
STREAM_BUFFER_WAITS = Counter(
    "recstream_stream_buffer_waits_total",
    "Times the worker's fetch loop waited for the stream's buffer to drain from 80% to 40% (a backlog: the worker "
    "is taking events as fast as it can).",
)
ARRAY_COPIES = Counter(
    "recstream_array_copies_total",
    "Times a model array that grows in place was copied instead (a view of it held elsewhere, or no mremap): each "
    "copy holds learning or serving while it runs. 0 in a healthy process.",
)
HEAP_TRIMS = Counter(
    "recstream_worker_heap_trims_total",
    "Times the worker gave freed heap memory back to the OS after a checkpoint (at most every 5 s).",
)
WORKER_WRITER_LEASE = Gauge(
    "recstream_worker_writer_lease",
    "1 while this worker holds the writer lease (it alone writes the model), 0 while it waits for another worker to "
    "stop (a standby) or after it lost the lease.",
    multiprocess_mode="livemax",
)
WORKER_CATCHING_UP = Gauge(
    "recstream_worker_catching_up",
    "1 while more than RECSTREAM_CHECKPOINT_EVERY_EVENTS events wait to be learned, in Kafka or in what the worker "
    "took (a restart or a burst left it behind; with RECSTREAM_CHECKPOINT_CATCH_UP_FACTOR above 1 it then checkpoints "
    "that many times less often), else 0.",
    multiprocess_mode="livemax",
)
WORKER_STALLED = Gauge(
    "recstream_worker_stalled",
    "1 while the worker takes no new events because a checkpoint (or the batch's Redis lookups) keeps failing "
    "and it is retrying with backoff, or because at its start the current version cannot be loaded (refused, or "
    "missing from Redis), else 0.",
    multiprocess_mode="livemax",
)
WORKER_RETRIES = Counter(
    "recstream_worker_retries_total",
    "Failed worker operations retried with backoff (Redis or the broker failing), by operation: "
    "start (loading the model), batch (the batch's Redis lookups), checkpoint.",
    ["operation"],
)
LAST_CHECKPOINT = Gauge(
    "recstream_last_checkpoint_timestamp_seconds",
    "Unix time of the last successful checkpoint.",
    multiprocess_mode="livemax",
)
SNAPSHOTS_REFUSED = Counter(
    "recstream_snapshots_refused_total",
    "Snapshots refused, not loaded: their HMAC tag did not verify (tampered, or another key), their chain of "
    "deltas is broken (a base version missing from Redis), or they cannot be decoded (a format this release does "
    "not read); the log line says which.",
    ["component"],
)
CURRENT_VERSION_REFUSED = Gauge(
    "recstream_current_version_refused",
    "1 while this process cannot load the version Redis names current (refused: HMAC, a broken chain of deltas, or a "
    "format this release does not read), else 0: the API serves an older version meanwhile, the worker consumes "
    "nothing.",
    ["component"],
    multiprocess_mode="livemax",
)
MODEL_VERSION = Gauge(
    "recstream_model_version", "Model version this process uses.", ["component"], multiprocess_mode="liveall"
)
PROGRESSIVE_AUC = Gauge("recstream_progressive_auc", "Rolling ROC AUC of predictions made before learning.", ["model"])
PROGRESSIVE_LOGLOSS = Gauge(
    "recstream_progressive_logloss", "Rolling log loss of predictions made before learning.", ["model"]
)

REQUEST_SECONDS = Histogram(
    "recstream_http_request_duration_seconds",
    "API request latency by route and status.",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
HEADS_REFUSED = Counter(
    "recstream_api_heads_refused_total",
    "Requests refused with 431 before the app read them: their line and headers over RECSTREAM_MAX_HEADER_BYTES.",
)
AUTH_REFUSALS = Counter(
    "recstream_api_auth_refusals_total",
    "Requests refused for their API key: none sent (missing), not recognised (unknown), or without the scope the "
    "route needs (scope).",
    ["reason"],
)
RECOMMENDATIONS_SERVED = Counter(
    "recstream_recommendations_served_total", "Recommendation lists served, by source.", ["source"]
)
SEEN_CACHE_LOOKUPS = Counter(
    "recstream_api_seen_cache_lookups_total",
    "Seen sets a recommendation needed, by whether the API process held it (hit) or read it from Redis (miss).",
    ["result"],
)
SEEN_CACHE_USERS = Gauge(
    "recstream_api_seen_cache_users",
    "Users whose seen sets the API processes hold (RECSTREAM_API_SEEN_CACHE_ITEMS).",
    multiprocess_mode="livesum",
)
ITEMS_HIDDEN = Gauge(
    "recstream_api_items_hidden",
    "Items an operator hid (never recommended until unhidden), as the API processes last read them.",
    multiprocess_mode="livemax",
)
RECOMMENDATIONS_DEGRADED = Counter(
    "recstream_recommendations_degraded_total",
    "Recommendation lists served while Redis was unreachable (degraded: true): without excluding seen items, or "
    "excluding a seen set held in memory as of its last sync.",
)


#: Below this many values observe_many observes them one by one (cheaper than its numpy calls).
FEW_OBSERVATIONS = 16


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(max(0.0, a))`` for every ``a``, as one update per bucket.

    The worker observes each learned event's freshness: one ``observe`` per event cost ~1 µs
    (a lock per update); a chunk of 500 costs a few µs this way. The numpy calls cost ~10 µs
    whatever the count, so a few values (a chunk of one-event messages) are observed one by one.
    Also one by one if prometheus_client's histogram no longer has the parts this uses.
    """
    if len(amounts) < FEW_OBSERVATIONS:
        for amount in amounts:
            histogram.observe(amount if amount > 0.0 else 0.0)
        return
    values = np.maximum(np.asarray(amounts, dtype=np.float64), 0.0)
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values.tolist():
            histogram.observe(value)
        return
    # observe() counts a value in the first bucket whose upper bound is >= it (the last is +Inf)
    per_bucket = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    total.inc(float(values.sum()))
    for bucket, count in zip(buckets, per_bucket[: len(bounds)].tolist(), strict=True):
        if count:
            bucket.inc(count)


def _families(*metrics: Counter | Gauge | Histogram) -> frozenset[str]:
    return frozenset(family.name for metric in metrics for family in metric.describe())


#: The families only the worker sets. Every process defines every metric (this module), so without this the API's
#: ``/metrics`` would show them at their first values (``recstream_events_learned_total 0.0``, the writer lease 0),
#: which an operator or an alert could take for the worker's.
WORKER_ONLY = _families(
    EVENTS_CONSUMED, EVENTS_LEARNED, EVENTS_SKIPPED_REPLAY, EVENTS_DUPLICATE, EVENTS_QUARANTINED, MODEL_GUARD_PAUSED,
    MODEL_GUARD_PAUSES, CONSUMER_LAG, EVENT_TO_LEARNED_SECONDS, DEAD_LETTERS_UNDELIVERED, RECOMMENDED_INTERACTIONS,
    CONTEST_HIT_RATE, CONTEST_PROMOTIONS, PROGRESSIVE_HIT_RATE, CHECKPOINTS, CHECKPOINT_SECONDS, CHECKPOINT_BYTES,
    CONSOLIDATIONS, CHECKPOINT_SPACING, STREAM_BUFFER_WAITS, HEAP_TRIMS, WORKER_WRITER_LEASE, WORKER_CATCHING_UP,
    WORKER_STALLED, WORKER_RETRIES, LAST_CHECKPOINT, PROGRESSIVE_AUC, PROGRESSIVE_LOGLOSS, EVENTS_ERASED, USERS_ERASED,
)  # fmt: skip
#: The families only the API sets, left out of the worker's ``/metrics`` likewise.
API_ONLY = _families(
    MODEL_SWAP_DELAY, MODEL_LOAD_SECONDS, EVENTS_INGESTED, INGEST_UNAVAILABLE, REQUEST_SECONDS, RECOMMENDATIONS_SERVED,
    SEEN_CACHE_LOOKUPS, SEEN_CACHE_USERS, RECOMMENDATIONS_DEGRADED, AUTH_REFUSALS,
    HEADS_REFUSED, ITEMS_HIDDEN,
)  # fmt: skip

#: The families both set (each with its own label, or its own series).
SHARED = _families(
    EVENTS_REJECTED, KAFKA_ERRORS, REDIS_ERRORS, SNAPSHOTS_REFUSED, CURRENT_VERSION_REFUSED, MODEL_VERSION, ARRAY_COPIES
)


class _Without(Collector):
    """``source``'s families but those named in ``left_out``."""

    def __init__(self, source: Collector | CollectorRegistry, left_out: frozenset[str]) -> None:
        self.source = source
        self.left_out = left_out

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if family.name not in self.left_out)


def worker_registry() -> CollectorRegistry:
    """What the worker's ``/metrics`` serves: its own metrics, without the API's (:data:`API_ONLY`)."""
    registry = CollectorRegistry()
    registry.register(_Without(REGISTRY, API_ONLY))
    return registry


def multiprocess() -> bool:
    """Whether this process is one of several API processes sharing their metrics (:data:`MULTIPROCESS_DIR` set)."""
    return bool(os.environ.get(MULTIPROCESS_DIR))


def exposition_registry() -> CollectorRegistry:
    """What the API's ``/metrics`` and ``/v1/stats`` read: this process's metrics, or in multiprocess mode those of
    every API process (read from their files at each call); without the worker's (:data:`WORKER_ONLY`)."""
    registry = CollectorRegistry()
    if not multiprocess():
        registry.register(_Without(REGISTRY, WORKER_ONLY))
        return registry
    registry.register(_Without(prometheus_multiprocess.MultiProcessCollector(None), WORKER_ONLY))
    registry.register(ApiProcessesCollector())
    return registry


class ApiProcessesCollector(Collector):
    """In multiprocess mode, what a single process's ``/metrics`` says of itself, for every live API process:
    prometheus_client's ``process_*`` series read from ``/proc/<pid>``, each labelled ``pid``, and ``python_info``.
    (A process's garbage-collector series are not read from outside it: each process publishes its own,
    :class:`GcCounts`.)"""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        supervisor = os.getppid()
        for pid in sorted(_processes_with_gauges()):
            # (a dead process's gauges stay until the next process starts: its PID may be another process's by then)
            if _parent(pid) != supervisor:
                continue
            process = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in process.collect():  # nothing for a process that is gone
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()
        yield from PlatformCollector(registry=None).collect()


#: How often each of several API processes publishes its garbage collections (:class:`GcCounts`).
GC_PUBLISH_SECONDS = 5.0


class GcCounts:
    """In multiprocess mode, this process's garbage collections as prometheus_client's ``python_gc_*`` counters
    (``python_gc_collections_total``, ``python_gc_objects_collected_total``, ``python_gc_objects_uncollectable_total``,
    by ``generation``), written to the metrics directory and so summed over the API processes like the other counters
    (those that stopped included). prometheus_client's own collector reads ``gc.get_stats()`` of the process that
    answers ``/metrics`` alone, so it is not used in that mode. :meth:`publish` adds what ``gc.get_stats()`` counted
    since its last call (everything since the process started, the first time); the process calls it every
    :data:`GC_PUBLISH_SECONDS` (:meth:`run`) and as it stops. Never from a ``gc.callbacks`` hook: a collection may start
    while the thread holds the lock prometheus_client's multiprocess values share, and a hook that takes it then
    waits for ever (prometheus/client_python#322, #363)."""

    def __init__(self) -> None:
        def counter(name: str, documentation: str) -> Counter:  # (registry=None: the default one has GCCollector's)
            return Counter(name, documentation, ["generation"], registry=None)

        self._counters = (
            counter("python_gc_collections", "Number of times this generation was collected"),
            counter("python_gc_objects_collected", "Objects collected during gc"),
            counter("python_gc_objects_uncollectable", "Uncollectable objects found during GC"),
        )
        self._published = [(0, 0, 0) for _ in gc.get_stats()]

    def publish(self) -> None:
        """Add to the counters what each generation collected since the last call."""
        for generation, stats in enumerate(gc.get_stats()):
            now = (stats["collections"], stats["collected"], stats["uncollectable"])
            for counter, value, published in zip(self._counters, now, self._published[generation], strict=True):
                counter.labels(str(generation)).inc(value - published)  # (an inc of 0 makes the series)
            self._published[generation] = now

    async def run(self) -> None:
        """Publish every :data:`GC_PUBLISH_SECONDS` until cancelled, then once more."""
        try:
            while True:
                self.publish()
                await asyncio.sleep(GC_PUBLISH_SECONDS)
        finally:
            self.publish()


_gc_counts: GcCounts | None = None


def gc_counts() -> GcCounts:
    """This process's :class:`GcCounts` (one a process: two would each write the same series)."""
    global _gc_counts
    if _gc_counts is None:
        _gc_counts = GcCounts()
    return _gc_counts


def forget_dead_processes() -> None:
    """In multiprocess mode, drop the gauges of API processes that are gone (uvicorn starts a process in place of
    one that died: that one could not drop its own); their counters stay in the totals."""
    if not multiprocess():
        return
    for pid in _processes_with_gauges():
        if not _alive(pid):
            prometheus_multiprocess.mark_process_dead(pid)


def _processes_with_gauges() -> set[int]:
    """The processes whose gauges are in the metrics directory: every API process's (it makes the unlabelled ones
    as it imports this module) until they are dropped."""
    pids = set()
    for path in glob.glob(os.path.join(os.environ[MULTIPROCESS_DIR], "gauge_live*_*.db")):
        pid = path.rsplit("_", 1)[1].removesuffix(".db")
        if pid.isdigit():
            pids.add(int(pid))
    return pids


def process_stopping() -> None:
    """In multiprocess mode, drop this process's gauges (its counters stay in the totals)."""
    if multiprocess():
        prometheus_multiprocess.mark_process_dead(os.getpid())


def _parent(pid: int) -> int | None:
    """The parent of process ``pid`` (None if there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])  # (after the command's name, which may hold spaces)
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds that pid now
        return True
    return True


_array_copies_published = 0


def publish_array_copies() -> None:
    """Add to ``recstream_array_copies_total`` this process's copies since the last call
    (:func:`learner.arrays.copied_resizes`); the worker calls it after each checkpoint, the API after each model
    load."""
    global _array_copies_published
    copies = arrays.copied_resizes()
    if copies > _array_copies_published:
        ARRAY_COPIES.inc(copies - _array_copies_published)
        _array_copies_published = copies

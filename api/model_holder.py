"""Keeps the current model version in memory and swaps it when a new one is announced.

It listens on the Redis announce channel and also polls the ``current`` pointer (pub/sub
messages are lost while disconnected). Every refresh also syncs the users' seen sets held
(api/seen_cache.py) and the hidden items (api/hidden_items.py), whose changes are announced on the
same channel. A swap is one attribute assignment and a delta is applied
between requests (below), so a request never sees a version half loaded. A snapshot that fails
authentication is refused: the previous model keeps serving.

Loading is bounded to a share of the process's time on average (``load_share``,
RECSTREAM_MODEL_LOAD_SHARE; a load decodes ids and builds indexes, work that holds the GIL, so
requests slow down meanwhile): a time budget (:mod:`recstream.share_budget`) earns ``load_share``
seconds a second, banks up to ``LOAD_BANK_SECONDS``, and a load spends what it took; while the
budget is in debt, new versions wait. A small model loads every version; a large one (hundreds of
milliseconds a load at a 0.5 s checkpoint interval) serves every few versions instead of loading
back to back, and an occasional long load (a whole snapshot among deltas) is paid from what the
short ones left unused. Only new checkpoints wait: the first load is never delayed, nor is a
version no newer than the newest this process has loaded (an operator's rollback, or their
promotion back to a version served before, which must reach every process at once). Nor is the
first load charged: the process serves no model while it loads (the app waits for it at start), and
charging it held the versions after it back by seconds (a grown model of ~80 MB loads whole in ~1.6
s on a slow VM, which left the first event after an API restart ~1.5 s from being served).

A delta version (the worker's default model writes one while deltas are much smaller than a whole
snapshot: learner.cooccurrence_delta) made against the version served is applied to the served model
in place (:meth:`ServingModel.apply_delta`; several, composed, if versions were skipped), in the event
loop between requests: it costs what the delta carries (a few ms), not a rebuild of every row (80 ms
a version on the bench's grown model), and a request never sees it half applied. A version whose
chain does not pass through the one served is read down to its whole version and built anew in a
thread, and swapped in by one assignment.

Redis going away is survived: the poll keeps trying every ``poll_seconds`` (logging once when
Redis becomes unreachable and once when it is back), and the listener opens a new subscription
(closing the broken one) every ``poll_seconds`` until Redis answers again, so versions written
after Redis returns are picked up by either path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.hidden_items import HiddenItemsHeld
from api.seen_cache import SeenCache
from learner import cooccurrence_delta
from learner.codec import CodecError
from learner.id_index import reusing
from learner.serving import ServingModel
from recstream import metrics
from recstream.share_budget import ShareBudget
from store.model_store import ModelStore, Snapshot, SnapshotRefused

log = logging.getLogger(__name__)

#: Load time the budget may bank: what loads of small deltas leave unused pays for an occasional whole version.
LOAD_BANK_SECONDS = 1.0


class ModelHolder:
    def __init__(
        self,
        store: ModelStore,
        poll_seconds: float = 1.0,
        load_share: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[bytes, int], ServingModel] = ServingModel.from_bytes,
        seen: SeenCache | None = None,
        hidden: HiddenItemsHeld | None = None,
    ) -> None:
        if not 0 < load_share <= 1:
            raise ValueError("load_share must be in (0, 1]")
        self.store = store
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._loader = loader
        self.seen = seen  # synced with the seen log at every refresh, after reading the version (api/seen_cache.py)
        self.hidden = hidden  # the hidden items, synced first at every refresh (api/hidden_items.py)
        self._load_budget = ShareBudget(load_share, cap_seconds=LOAD_BANK_SECONDS, clock=clock)  # see the module doc
        self._newest_loaded = 0  # the newest version this process has loaded: anything newer is a new checkpoint
        self.model: ServingModel | None = None
        self.refused_version: int | None = None
        self.redis_ok = False
        self._was_unreachable = False
        self._failing = False  # the last refresh failed other than by Redis being unreachable (logged once)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refreshing = asyncio.Lock()  # one refresh at a time: the loop's, or an operator's promote/rollback
        # exported at 0 from the start: a refusal after it is an increase an alert sees (RecstreamSnapshotRefused); one
        # before the first scrape (an API started while the current version is refused) shows in the gauge
        # (RecstreamCurrentVersionRefused), as it stays 1 while the version Redis names current is refused
        metrics.SNAPSHOTS_REFUSED.labels("api")
        metrics.CURRENT_VERSION_REFUSED.labels("api").set(0)

    async def refresh(self) -> None:
        """Load the current version if it differs from the one in memory."""
        async with self._refreshing:
            await self._refresh()
            self._failing = False

    async def _refresh(self) -> None:
        if self.hidden is not None:  # first: a takedown does not wait on the rest
            await self.hidden.sync()
        version = await self.store.current_version()
        if self.seen is not None:
            # after reading the version: its checkpoint's seen additions (in the same transaction) are synced too,
            # so the sets held are never older than the model served
            await self.seen.sync()
        if not self.redis_ok and self._was_unreachable:
            log.warning("Redis is reachable again: model refresh resumed")
        self.redis_ok = True
        self._was_unreachable = False
        # (1 while the version Redis names current is the one refused: 0 again once current is another, served or not)
        metrics.CURRENT_VERSION_REFUSED.labels("api").set(int(version is not None and version == self.refused_version))
        if (
            version is None
            or (self.model is not None and self.model.version == version)
            or version == self.refused_version
        ):
            return
        if self.model is not None and version > self._newest_loaded and self.load_wait() > 0:
            floor = await self.store.erasures.floor()
            if floor is None or floor <= self.model.version:
                return  # a new checkpoint too soon after the last load: _run comes back when it is allowed
            # else users were erased since the version served (store.erasures): it personalises for them until the
            # erasing version is served, so that one does not wait for the time budget
        served = self.model
        # a version made by deltas from the one served is read down to that one alone, to apply them to it in place
        known_base = served.version if served is not None and served.takes_deltas else None
        try:
            snapshot = await self.store.load(version, known_base=known_base)
        except SnapshotRefused as exc:
            self.refused_version = version
            metrics.CURRENT_VERSION_REFUSED.labels("api").set(1)
            metrics.SNAPSHOTS_REFUSED.labels("api").inc()
            log.error("%s; still serving v%s", exc, self.model.version if self.model else "none")
            return
        if snapshot is None:
            return
        started = self._clock()
        root, deltas = snapshot.chain()
        how = "whole" if root is not None else "delta"  # the chain reached a whole version, or stopped at known_base
        try:
            if how == "delta":
                # Made against the version served (the chain stops there): applied to it in place, here in the
                # event loop, so that no request sees it half done; only decoding (and composing) in a thread.
                if served is None or deltas[0][0] != served.version:
                    raise CodecError(f"the chain of v{version} starts from v{deltas[0][0]}, not the one served")
                header, arrays = await asyncio.to_thread(cooccurrence_delta.resolve_delta, deltas)
                try:
                    served.apply_delta(header, arrays, snapshot.version)
                except cooccurrence_delta.HalfApplied:
                    # the served model is part old, part new, and takes no more deltas: read this version whole now
                    log.exception("applying v%s to the model served failed part-way; loading it whole", version)
                    snapshot = await self.store.load(version)
                    if snapshot is None:
                        return
                    how = "whole"
                    model = await asyncio.to_thread(self._build, snapshot)
                else:
                    model = served
            else:
                # Ids are appended (only an erasure blanks some, in a whole version): the new version's indexes start
                # from copies of this one's when they begin with the same ids (id_index.reusing).
                with reusing(served.id_indexes() if served is not None else ()):
                    model = await asyncio.to_thread(self._build, snapshot)
        except (CodecError, ValueError, KeyError, IndexError, TypeError) as exc:  # authenticated, but not loadable
            self.refused_version = version
            metrics.CURRENT_VERSION_REFUSED.labels("api").set(1)
            metrics.SNAPSHOTS_REFUSED.labels("api").inc()  # (not served either: RecstreamSnapshotRefused)
            log.error("model v%s cannot be loaded (%s); still serving v%s", version, exc,
                      self.model.version if self.model else "none")  # fmt: skip
            return
        elapsed = self._clock() - started
        if served is not None:  # the first load is not charged: no model served meanwhile (below)
            self._load_budget.spend(elapsed)
        metrics.MODEL_LOAD_SECONDS.labels(how).observe(elapsed)
        # a new checkpoint swapped in: not the first load of this process, nor an older version promoted (a rollback),
        # whose delay since it was written is its age, hours perhaps, not freshness
        fresh = served is not None and model.version > self._newest_loaded
        self._newest_loaded = max(self._newest_loaded, model.version)
        self.model = model
        metrics.CURRENT_VERSION_REFUSED.labels("api").set(0)
        metrics.MODEL_VERSION.labels("api").set(model.version)
        metrics.publish_array_copies()
        created = snapshot.meta.get("created")
        if created and fresh:
            metrics.MODEL_SWAP_DELAY.observe(max(0.0, time.time() - datetime.fromisoformat(created).timestamp()))
        log.info("serving model v%d (%d events learned)", model.version, model.events_learned)

    def _build(self, snapshot: Snapshot) -> ServingModel:
        """A new serving model of a whole snapshot, or of a delta version from the whole version its chain starts
        from; one that takes deltas gets room for the next versions' now, off the event loop."""
        root, deltas = snapshot.chain()
        assert root is not None  # read without known_base, or down to a whole version
        if deltas:
            model = ServingModel.from_parts(*cooccurrence_delta.resolve(root.blob, deltas), snapshot.version)
        else:
            model = self._loader(snapshot.blob, snapshot.version)
        if model.takes_deltas:
            model.make_room_for_deltas()
        return model

    def load_wait(self) -> float:
        """Seconds until the next version may be loaded (0: now)."""
        return self._load_budget.wait()

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - Redis down at start, or a version that fails: the poll keeps trying
            self._failed(exc)
        self._task = asyncio.create_task(self._run(), name="model-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="model-announce")
        try:
            while True:
                wait = self.load_wait()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(self.poll_seconds, wait or self.poll_seconds))
                self._wake.clear()
                try:
                    await self.refresh()
                except Exception as exc:  # noqa: BLE001 - Redis down, or a version that fails: keep serving
                    self._failed(exc)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    def _failed(self, exc: BaseException) -> None:
        """A refresh failed: Redis unreachable (the answers from held seen sets then say degraded), or something
        else (logged once until a refresh succeeds; Redis is not blamed)."""
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            self._unreachable(exc)
        elif not self._failing:
            self._failing = True
            log.exception(
                "refreshing the model failed; serving the model in memory (v%s) and retrying every %.1fs",
                self.model.version if self.model else "none",
                self.poll_seconds,
                exc_info=exc,
            )

    def _unreachable(self, exc: BaseException) -> None:
        if not self._was_unreachable:
            log.warning(
                "cannot reach Redis to refresh the model (%s); serving the model in memory (v%s) and retrying "
                "every %.1fs",
                exc,
                self.model.version if self.model else "none",
                self.poll_seconds,
            )
        self.redis_ok = False
        self._was_unreachable = True

    async def _listen(self) -> None:
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(self.store.keys.announce_channel)
                self._wake.set()  # (re)subscribed: check at once for what was announced meanwhile
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect after a pause; polling covers the gap
                await asyncio.sleep(self.poll_seconds)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

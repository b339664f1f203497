"""Model snapshots in Redis: write a checkpoint atomically, read and authenticate the current one.

A checkpoint is one MULTI/EXEC transaction holding the snapshot, its HMAC tag, its metadata,
the Kafka offsets it covers, the seen-set additions since the previous checkpoint, the new
``current`` pointer and the deletion of versions past retention. It is guarded by WATCH on the
``current`` pointer, so two workers cannot both advance the same version (the loser gets
:class:`CheckpointConflict`). After EXEC the new version is announced on pub/sub.

A version's blob is either a whole snapshot or a delta against an earlier version, its ``base``
(itself whole or a delta: a chain back to a whole version; written by the worker while the deltas
are much smaller than a whole snapshot, learner.cooccurrence_delta). Loading a delta version loads
and authenticates its chain too, down to a whole version or to one the caller says it holds, and
retention never deletes a version in the chain of one it keeps. Once a chain is long, the worker
writes the whole snapshot of a delta version over its delta in the background
(:meth:`ModelStore.consolidate`): chains through it end there from then on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.connection import Encoder, PythonRespSerializer
from redis.exceptions import WatchError

from store.erasures import UserErasures, record_erased
from store.keys import Keys, as_text
from store.retention import stale as stale_versions
from store.signing import SnapshotSigner
from store.writer_lease import GONE, WriterLease

log = logging.getLogger(__name__)

T = TypeVar("T")


class SnapshotRefused(Exception):
    """A snapshot was not decoded: its HMAC tag did not verify (the default ``why``), or its chain of deltas
    is not one a reader can follow (``why`` says how)."""

    HMAC = (
        "failed HMAC authentication and was refused (tampered, or signed with another key: the workers, API processes "
        "and command-line tools of one deployment need the same RECSTREAM_HMAC_KEY)"
    )

    def __init__(self, version: int, what: str = "", why: str = HMAC) -> None:
        super().__init__(f"model snapshot {what or f'v{version}'} {why}; it was not loaded")
        self.version = version


class BeforeErasure(Exception):
    """A version written before users were erased (below the erase floor) may not be promoted: it may hold them."""


class CheckpointConflict(Exception):
    """Another writer moved the ``current`` pointer since this worker last checkpointed."""


class ChangedMeanwhile(CheckpointConflict):
    """Another promotion or rollback was recorded after the one asked for chose its version (a rollback)."""


@dataclass
class Snapshot:
    version: int
    blob: bytes  # a whole snapshot, or a delta against base_version
    meta: dict[str, Any]
    base_version: int | None = None  # set: ``blob`` is a delta against this (older) version
    base: Snapshot | None = None  # that version, unless the caller said it holds it (``load(known_base=)``)

    def chain(self) -> tuple[Snapshot | None, list[tuple[int, bytes]]]:
        """(the whole version the chain starts from (this one, if whole), or None when it stops at the caller's
        known version; the deltas from the oldest to this one, each as (the version it was made against, its
        bytes))."""
        deltas: list[tuple[int, bytes]] = []
        snapshot: Snapshot | None = self
        while snapshot is not None and snapshot.base_version is not None:
            deltas.append((snapshot.base_version, snapshot.blob))
            snapshot = snapshot.base
        deltas.reverse()
        return snapshot, deltas


#: Values longer than this go to the socket on their own in a bulk client's commands (redis-py's default).
BULK_BUFFER_CUTOFF = 6000

#: A snapshot at least this long is signed in a thread (:meth:`ModelStore._signed`); a shorter one on the event loop,
#: where the hop to a thread would cost more than the hash (~1 ms a MB).
SIGN_IN_THREAD_BYTES = 1 << 20

#: Entries the seen log keeps (about: trimmed with ``MAXLEN ~``): an API process that falls further behind
#: forgets the seen sets it holds and reads them again (api/seen_cache.py). An entry is ~10 bytes an event of its
#: checkpoint: at 20,000 events a checkpoint the log holds ~15 MB; API processes sync at every version announced.
SEEN_LOG_ENTRIES = 64

#: Adds many users' seen items in one command. ARGV[1]: the seen-key prefix; ARGV[2]: one line per
#: user, ``user item item ...`` (ids never contain white space: recstream.events.ID_PATTERN);
#: ARGV[3]: the seen log, to which the same lines are appended as one entry; ARGV[4]: its length.
#: One command instead of one SADD per user keeps the client's encoding cost per checkpoint small.
SEEN_ADD = r"""
local prefix = ARGV[1]
for line in string.gmatch(ARGV[2], "[^\n]+") do
  local user = nil
  local items = {}
  for token in string.gmatch(line, "%S+") do
    if user == nil then user = token else items[#items + 1] = token end
  end
  for i = 1, #items, 4000 do
    redis.call("SADD", prefix .. user, unpack(items, i, math.min(i + 3999, #items)))
  end
end
redis.call("XADD", ARGV[3], "MAXLEN", "~", ARGV[4], "*", "lines", ARGV[2])
return 0
"""

#: Records learned event ids in one dedupe bucket. ARGV[1]: the bucket's key; ARGV[2]: the ids,
#: space-separated; ARGV[3]: its time to live in seconds. One argument instead of one per id: the
#: client encodes each argument in Python (~0.7 µs an id, the largest part of a checkpoint's CPU
#: after the snapshot itself).
DEDUPE_ADD = r"""
local ids = {}
for id in string.gmatch(ARGV[2], "%S+") do ids[#ids + 1] = id end
for i = 1, #ids, 4000 do
  redis.call("SADD", ARGV[1], unpack(ids, i, math.min(i + 3999, #ids)))
end
redis.call("EXPIRE", ARGV[1], ARGV[3])
return #ids
"""

#: Which of the ids (ARGV[2], space-separated) are members of any bucket set ARGV[1]..n for n in
#: [ARGV[3], ARGV[4]]: the ids are sent once, not once per bucket.
DEDUPE_LOOKUP = """
local ids = {}
for id in string.gmatch(ARGV[2], "%S+") do ids[#ids + 1] = id end
local found = {}
for bucket = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  local key = ARGV[1] .. bucket
  if redis.call("EXISTS", key) == 1 then
    for i = 1, #ids, 4000 do
      local hits = redis.call("SMISMEMBER", key, unpack(ids, i, math.min(i + 3999, #ids)))
      for j = 1, #hits do
        if hits[j] == 1 then found[#found + 1] = ids[i + j - 1] end
      end
    end
  end
end
return found
"""


#: How many times a promotion tries its switch while checkpoints move ``current`` under it.
PROMOTE_ATTEMPTS = 5

#: Deletes KEYS[1] if it holds ARGV[1] (a request applied, unless it was made again meanwhile).
DELETE_IF_SAME_STRING = r"""
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"""

#: How many promotion and rollback records the history keeps (the oldest are trimmed as new ones are recorded).
PROMOTIONS_KEPT = 1000

#: ``promote``'s ``after`` when the caller chose its version whatever was promoted before
_ANY: Any = object()

#: How many times a load reads a version again when its base is gone. A base is deleted only once nothing kept
#: needs it, so the version was made whole (or deleted) meanwhile: one re-read sees that. Still gone after it:
#: the chain is broken.
MAX_REREADS = 1


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def guard_report(raw: Mapping[str, str]) -> dict[str, Any]:
    """The model guard's state as the worker last wrote it (strings, in Redis), typed for people and clients:
    ``state`` ("learning" or "paused"; None before any worker reported), ``since`` (when learning was paused, Unix
    seconds; None while learning), ``reference`` (the loss the guard compares recent losses with; None until it has
    one) and ``reference_count`` (the labelled events behind it). A field that does not parse is None."""

    def number(text: str | None, kind: type[float] | type[int]) -> float | int | None:
        try:
            value = kind(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    return {
        "state": raw.get("state") or None,
        "since": number(raw.get("since"), float),
        "reference": number(raw.get("reference"), float),
        "reference_count": number(raw.get("reference_count"), int),
    }


def bulk_client(url: str, timeout: float = 60.0) -> redis.Redis:
    """A synchronous client for writing a whole snapshot (~100 MB at a million ids) from a thread.

    It packs commands with redis-py's Python serializer, which hands a large value to ``sendall`` as it is:
    no copy, and the GIL is released while it goes out. With hiredis installed, redis-py packs with hiredis,
    which copies the value into one buffer while holding the GIL (~0.12 s per 100 MB, measured), and the
    asyncio client then joins the command and buffers what the socket does not take at once, on the event
    loop. ``timeout`` bounds each socket operation, sending the whole command included.
    """
    packer = PythonRespSerializer(BULK_BUFFER_CUTOFF, Encoder("utf-8", "strict", False).encode)
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=5, health_check_interval=10, command_packer=packer
    )


class ModelStore:
    """Reads and writes model versions, offsets and seen sets under one key prefix."""

    def __init__(
        self,
        redis: aioredis.Redis,
        signer: SnapshotSigner,
        keys: Keys,
        retention: int = 5,
        dedupe_retention_seconds: float = 3600.0,
        dedupe_bucket_seconds: float = 900.0,
        keep_every_seconds: float = 0.0,
        keep_spaced: int = 0,
        bulk: redis.Redis | None = None,
    ) -> None:
        self.redis = redis
        self.bulk = bulk  # the worker's: writes whole snapshots in the background (see consolidate)
        self.signer = signer
        self.keys = keys
        self.retention = retention
        # beyond the newest ``retention``: the first version of each of the last ``keep_spaced``
        # periods of ``keep_every_seconds`` (see store.retention; 0 keeps by count only)
        self.keep_every_seconds = keep_every_seconds
        self.keep_spaced = keep_spaced
        self.dedupe_retention_seconds = dedupe_retention_seconds
        self.dedupe_bucket_seconds = dedupe_bucket_seconds
        self.erasures = UserErasures(redis, keys)

    # -- duplicates ----------------------------------------------------------------------

    def _bucket(self, now: float) -> int:
        return int(now // self.dedupe_bucket_seconds)

    async def learned_event_ids(self, event_ids: list[str], now: float | None = None) -> set[str]:
        """Which of ``event_ids`` were learned within the retention window (one round trip)."""
        if not event_ids:
            return set()
        now = time.time() if now is None else now
        newest = self._bucket(now)
        n_buckets = math.ceil(self.dedupe_retention_seconds / self.dedupe_bucket_seconds) + 1
        found = await self.redis.eval(
            DEDUPE_LOOKUP, 0, self.keys.dedupe_prefix, " ".join(event_ids), newest - n_buckets + 1, newest
        )
        return {event_id.decode() for event_id in found}

    async def current_version(self) -> int | None:
        raw = await self.redis.get(self.keys.current_version)
        return int(raw) if raw is not None else None

    async def load(self, version: int, known_base: int | None = None) -> Snapshot | None:
        """The snapshot of ``version`` if it exists; raises :class:`SnapshotRefused` if its tag fails.

        A delta version comes with its base (loaded and authenticated the same way, and so on down
        its chain), except from ``known_base`` on: the caller holds that version already. A version
        consolidated while its chain was being read (:meth:`consolidate`) is read again, whole."""
        return await self._load(version, known_base, rereads=MAX_REREADS)

    async def _load(self, version: int, known_base: int | None, rereads: int) -> Snapshot | None:
        fields = await self.redis.hgetall(self.keys.version(version))
        if not fields:
            return None
        blob = fields.get(b"blob", b"")
        if not self.signer.verify(blob, fields.get(b"tag")):
            raise SnapshotRefused(version)
        meta = json.loads(fields.get(b"meta", b"{}"))
        raw_base = fields.get(b"base")
        if raw_base is None:
            return Snapshot(version=version, blob=blob, meta=meta)
        base_version = int(raw_base)
        if base_version >= version:  # a delta is made against an older version: a chain always ends
            raise SnapshotRefused(version, why=f"was refused: its base v{base_version} is not older than itself")
        base = None
        if base_version != known_base:
            base = await self._load(base_version, known_base, rereads=rereads)
            if base is None:
                if rereads:  # consolidated meanwhile (whole now), and its old chain deleted: read it again
                    return await self._load(version, known_base, rereads=rereads - 1)
                raise SnapshotRefused(
                    version,
                    why=f"could not be read: its base v{base_version} is missing, so its chain is broken (deleted by "
                    "hand or evicted by Redis's maxmemory policy?); promote or roll back to a version that loads",
                )
        return Snapshot(version=version, blob=blob, meta=meta, base_version=base_version, base=base)

    async def consolidate(self, version: int, whole: bytes) -> bool:
        """Replace delta version ``version``'s blob with ``whole``, the whole snapshot of the same model state:
        a chain through it ends there from now on, and retention may delete the versions before it that no kept
        version needs. The worker writes it in the background after it wrote the delta, so a whole snapshot never
        holds a new version back. False if the version is gone or whole already (nothing written).

        It is signed and written in a thread, over the ``bulk`` client (:func:`bulk_client`): the event loop
        goes on meanwhile."""
        if self.bulk is None:
            raise RuntimeError("this model store has no bulk client to write whole snapshots with (see bulk_client)")
        return await asyncio.to_thread(self._consolidate, self.bulk, version, whole)

    def _consolidate(self, bulk: redis.Redis, version: int, whole: bytes) -> bool:
        key = self.keys.version(version)
        tag = self.signer.sign(whole)  # 100 MB: ~50 ms (hashlib releases the GIL)
        with bulk.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                raw_meta, raw_base = pipe.hmget(key, ["meta", "base"])
                if raw_meta is None or raw_base is None:
                    return False
                meta = {k: v for k, v in json.loads(raw_meta).items() if k != "base"}
                meta["consolidated_from"] = int(raw_base)  # it was written as a delta against that version
                pipe.multi()
                pipe.hset(key, mapping={"blob": whole, "tag": tag, "meta": json.dumps(meta)})
                pipe.hdel(key, "base")
                pipe.hdel(self.keys.version_bases, str(version))
                pipe.execute()
            except WatchError:
                return False  # changed meanwhile (deleted by retention, or by an operator): leave it
        return True

    async def load_current(self) -> Snapshot | None:
        version = await self.current_version()
        return None if version is None else await self.load(version)

    async def offsets(self) -> dict[tuple[str, int], int]:
        raw = await self.redis.hgetall(self.keys.offsets)
        result = {}
        for field, value in raw.items():
            topic, _, partition = field.decode().rpartition("/")
            result[(topic, int(partition))] = int(value)
        return result

    async def _signed(self, blob: bytes) -> bytes:
        """``blob``'s tag; a large one's made in a thread (hashlib releases the GIL), while the event loop goes on
        (a worker's delta of a few MB took ~0.7% of its time on the loop, its deltas several MB each)."""
        if len(blob) < SIGN_IN_THREAD_BYTES:
            return self.signer.sign(blob)
        return await asyncio.to_thread(self.signer.sign, blob)

    async def checkpoint(
        self,
        expected_current: int | None,
        blob: bytes | None,
        meta: dict[str, Any],
        offsets: Mapping[tuple[str, int], int],
        seen: Mapping[str, set[str]],
        event_ids: Collection[str] = (),
        gate_counts: Mapping[str, int] | None = None,
        guard: Mapping[str, Any] | None = None,
        now: float | None = None,
        challengers: Mapping[str, bytes] | None = None,
        contest: Mapping[str, Any] | None = None,
        promotion: Mapping[str, Any] | None = None,
        base: int | None = None,
        lease: WriterLease | None = None,
        erasures: Mapping[str, str] | None = None,
        resume_request: str | None = None,
        erased_expired: Collection[str] = (),
    ) -> int | None:
        """Write a new version atomically and announce it; return its number.

        With ``lease``, the writer lease's epoch must be its holder's and stay so until the
        transaction commits (it is watched: another worker taking the lease aborts it), else
        :class:`CheckpointConflict` and nothing is written.

        With ``base``, ``blob`` is a delta against that version, which must still be retained (else
        :class:`CheckpointConflict`: write a whole snapshot instead).

        ``challengers`` (name -> snapshot bytes) are the shadow models at the same offsets, signed
        like versions; ``contest`` is their standing (JSON). ``promotion`` (``reason``, ``actor``
        and any details) records that this version's model replaced the champion: it is appended
        to the promotion history with ``from``/``to`` filled in, in the same transaction.

        The same transaction records the learned ``event_ids`` for duplicate detection and adds
        ``gate_counts`` (reason -> count since the last checkpoint) to the all-time counts.
        The number is one above every retained version (not just above ``current``), so a
        version is never reused after a rollback. With ``blob=None`` no version is written (the
        model did not change) but everything else is, and ``expected_current`` is returned.

        ``erasures`` (user id -> the request as read) are the users this version no longer holds: the same transaction
        records them erased (store.erasures.record_erased) and forgets the records ``erased_expired`` (fingerprints).
        It needs a whole snapshot (``blob`` and no ``base``). ``resume_request``: an operator's request to end the
        guard's pause that this checkpoint's ``guard`` state applies; the same transaction deletes it (unless it was
        made again meanwhile).
        """
        if erasures and (blob is None or base is not None):
            raise ValueError("a checkpoint that erases users writes a whole snapshot")
        keys = self.keys
        now = time.time() if now is None else now  # dedupe buckets and the version's time
        if lease is not None and (lease.epoch is None or lease.lost_to is not None):
            raise CheckpointConflict(f"this worker ({lease.holder}) does not hold the writer lease: it writes nothing")
        tag = None if blob is None else await self._signed(blob)
        stale_challengers = await self._stale_challengers(challengers or {}) if erasures else set()
        challenger_tags = {name: await self._signed(b) for name, b in (challengers or {}).items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                # the pins too: a version pinned while this checkpoint runs must not be deleted by its retention.
                # A delta's base must still be retained: every deletion of a version removes it from the watched
                # versions set (the base's own hash is not watched: writing its whole snapshot over its delta in
                # the background, ``consolidate``, leaves the state a delta applies to unchanged)
                # the writer lease's epoch too: another worker taking the lease over aborts this transaction
                epoch_key = [keys.writer_epoch] if lease is not None else []
                await pipe.watch(keys.current_version, keys.versions, keys.pinned, *epoch_key)
                if lease is not None:
                    epoch = await pipe.get(keys.writer_epoch)
                    if epoch is None:
                        raise CheckpointConflict(
                            f"{GONE} (Redis restarted without its data, or the keys were deleted; this worker's epoch "
                            f"{lease.epoch}): this worker ({lease.holder}) writes nothing"
                        )
                    if int(epoch) != lease.epoch:
                        raise CheckpointConflict(
                            f"this worker ({lease.holder}) no longer holds the writer lease: another worker took it "
                            f"(epoch {epoch.decode()}, this worker's {lease.epoch}); it writes "
                            "nothing"
                        )
                if base is not None and blob is not None and await pipe.zscore(keys.versions, str(base)) is None:
                    raise CheckpointConflict(f"the base v{base} of this delta is no longer retained")
                raw = await pipe.get(keys.current_version)
                current = int(raw) if raw is not None else None
                if current != expected_current:
                    raise CheckpointConflict(
                        f"current model version is {current}, this worker expected {expected_current}: "
                        "another worker or an operator changed it"
                    )
                old = [int(v) for v in await pipe.zrange(keys.versions, 0, -1)]
                version = max([*old, current or 0]) + 1 if blob is not None else expected_current
                meta = {
                    **meta,
                    "version": version,
                    "parent": expected_current,
                    "offsets": {offset_field(t, p): o for (t, p), o in offsets.items()},
                    **({"base": base} if base is not None else {}),
                }
                pipe.multi()
                if blob is not None:
                    fields: dict[str, Any] = {"blob": blob, "tag": tag, "meta": json.dumps(meta)}
                    if base is not None:
                        fields["base"] = base
                        pipe.hset(keys.version_bases, str(version), base)
                    pipe.hset(keys.version(version), mapping=fields)
                    pipe.set(keys.current_version, version)
                    pipe.zadd(keys.versions, {str(version): version})
                offsets_json = json.dumps({offset_field(t, p): o for (t, p), o in sorted(offsets.items())})
                if challengers:
                    pipe.sadd(keys.challengers_saved, *challengers)
                for name, challenger_blob in (challengers or {}).items():
                    pipe.hset(
                        keys.challenger(name),
                        mapping={
                            "blob": challenger_blob,
                            "tag": challenger_tags[name],
                            "offsets": offsets_json,  # where in the stream this state is
                        },
                    )
                if contest is not None:
                    pipe.set(keys.contest, json.dumps({**contest, "version": version}))
                if promotion is not None and blob is not None:
                    record = {"at": time.time(), "from": expected_current, "to": version, **promotion}
                    pipe.rpush(keys.promotions, json.dumps(record))
                    pipe.ltrim(keys.promotions, -PROMOTIONS_KEPT, -1)
                    if promotion.get("actor") != "auto":
                        pipe.delete(keys.challenger_request)  # applied: the operator's request is done
                if guard:
                    pipe.hset(keys.guard_status, mapping={k: str(v) for k, v in guard.items()})
                if resume_request is not None:  # applied (the guard's state above says so): done
                    pipe.eval(DELETE_IF_SAME_STRING, 1, keys.guard_resume, resume_request)
                if offsets:
                    pipe.hset(keys.offsets, mapping={offset_field(t, p): o for (t, p), o in offsets.items()})
                if erasures or erased_expired:  # (before the seen additions: it deletes the seen log)
                    record_erased(
                        pipe, keys, dict(erasures or {}), version, now, list(erased_expired), stale_challengers
                    )
                lines = "\n".join(f"{user} {' '.join(items)}" for user, items in seen.items() if items)
                if lines:
                    pipe.eval(SEEN_ADD, 0, keys.seen(""), lines, keys.seen_log, SEEN_LOG_ENTRIES)
                if event_ids:
                    bucket_key = keys.dedupe(self._bucket(now))
                    ttl = int(self.dedupe_retention_seconds + 2 * self.dedupe_bucket_seconds)
                    pipe.eval(DEDUPE_ADD, 0, bucket_key, " ".join(event_ids), ttl)
                for reason, count in (gate_counts or {}).items():
                    if count:
                        pipe.hincrby(keys.gate_counts, reason, count)
                if blob is not None:
                    pipe.hset(keys.version_times, str(version), repr(now))
                    pinned = {int(v) for v in await self.redis.smembers(keys.pinned)}
                    undo = _undo_target(await self.redis.lindex(keys.promotions, -1))
                    if undo is not None:  # kept as a pinned one is: what undoing the latest promotion promotes
                        pinned.add(undo)
                    times = {int(v): float(t) for v, t in (await self.redis.hgetall(keys.version_times)).items()}
                    times[version] = now
                    bases = {int(v): int(b) for v, b in (await self.redis.hgetall(keys.version_bases)).items()}
                    if base is not None:
                        bases[version] = base
                    stale = stale_versions(
                        [*old, version],
                        times,
                        pinned,
                        keep_latest=self.retention,
                        parent=expected_current,
                        spaced_every=self.keep_every_seconds,
                        spaced_count=self.keep_spaced,
                        now=now,
                        bases=bases,
                    )
                    needed: set[int] = set()  # a kept delta's chain stays, down to its whole version
                    for kept in {*old, version} - set(stale):
                        while kept in bases:
                            kept = bases[kept]
                            if kept in needed:
                                break  # its chain is walked already
                            needed.add(kept)
                    for gone in stale:
                        if gone in needed:
                            continue
                        pipe.unlink(keys.version(gone))  # a whole snapshot is ~100 MB: freed off Redis's main thread
                        pipe.zrem(keys.versions, str(gone))
                        pipe.hdel(keys.version_times, str(gone))
                        pipe.hdel(keys.version_bases, str(gone))
                await pipe.execute()
            except WatchError as exc:
                _raise_if_connection_lost(exc, "the checkpoint")
                raise CheckpointConflict(
                    "the current model version, the versions, the pins or the writer lease changed during the "
                    "checkpoint"
                ) from exc
        if blob is not None:
            await self._announce(version)
        return version

    async def _stale_challengers(self, written: Mapping[str, bytes]) -> set[str]:
        """The names of contestants whose state a checkpoint saved and this one does not write (a challenger no longer
        configured, the champion's own when none runs now): a checkpoint that erases users deletes them, as they
        hold the users too."""
        saved = {as_text(name) for name in await self.redis.smembers(self.keys.challengers_saved)}
        return saved - set(written)

    async def _announce(self, version: int) -> None:
        """Tell API processes that ``version`` is current. It is committed already, so a failure is only logged:
        API processes also poll for the current version (every second by default)."""
        try:
            await self.redis.publish(self.keys.announce_channel, str(version))
        except Exception as exc:  # noqa: BLE001 - committed; API processes also poll for it
            log.warning("v%s is committed but its announcement failed (%s); API processes poll for it", version, exc)

    # -- registry: list, promote, roll back, pin --------------------------------------------

    async def versions(self) -> list[dict[str, Any]]:
        """Metadata of every retained version, oldest first, with ``current`` and ``pinned`` flags."""
        keys = self.keys
        current = await self.current_version()
        pinned = {int(v) for v in await self.redis.smembers(keys.pinned)}
        out = []
        for raw_version in await self.redis.zrange(keys.versions, 0, -1):
            version = int(raw_version)
            meta_raw = await self.redis.hget(keys.version(version), "meta")
            meta = json.loads(meta_raw) if meta_raw else {}
            out.append({**meta, "version": version, "current": version == current, "pinned": version in pinned})
        return out

    async def promote(
        self, version: int, reason: str, actor: str = "operator", *, rollback: bool = False, after: Any = _ANY
    ) -> None:
        """Make ``version`` current (it must exist and verify); API processes swap to it at once.

        The worker notices before its next batch and continues learning from ``version``
        (see docs/operations.md for what happens to the events learned since). An operator's request to promote a
        challenger that is still pending is dropped: this later choice stands. ``after``: the history's last record
        (raw, or None for none) as the caller saw it when it chose ``version``; another promotion or rollback
        recorded since raises :class:`ChangedMeanwhile`. ``rollback`` marks the record as a rollback.
        """
        keys = self.keys
        # Read and authenticate it (and its chain) first, outside the transaction: a whole version is ~100 MB.
        # Only a background whole snapshot rewrites a version's fields, with the same state, signed.
        self._not_before_erasure(version, await self.erasures.floor())  # (before reading ~100 MB for nothing)
        if await self.load(version) is None:  # raises SnapshotRefused if a tag does not verify
            raise KeyError(f"model version {version} does not exist (retained: see `recstream models list`)")

        async def switch(pipe: Any) -> bytes | None:
            # WATCH: retention must not delete the version (it leaves the versions set then) between the check and
            # the switch, and "from" must be the version it replaces (and the erase floor: a checkpoint that erases
            # users moves the versions too, but say it)
            raw_floor = await pipe.get(keys.erase_floor)
            self._not_before_erasure(version, None if raw_floor is None else int(raw_floor))
            if await pipe.zscore(keys.versions, str(version)) is None:
                raise KeyError(f"model version {version} was deleted by retention meanwhile; pin it first")
            if after is not _ANY:
                last = await pipe.lindex(keys.promotions, -1)
                if last != after:
                    seen = json.loads(last) if last is not None else {}
                    raise ChangedMeanwhile(
                        f"another change came first (v{seen.get('from')} -> v{seen.get('to')} by "
                        f"{seen.get('actor')}: {seen.get('reason')!r}); nothing was changed: see "
                        "`recstream models history` and choose again"
                    )
            pending = await pipe.get(keys.challenger_request)
            raw = await pipe.get(keys.current_version)
            previous = int(raw) if raw is not None else None
            record = {"at": time.time(), "from": previous, "to": version, "reason": reason, "actor": actor}
            if rollback:
                record["rollback"] = True
            pipe.multi()
            pipe.set(keys.current_version, version)
            pipe.rpush(keys.promotions, json.dumps(record))
            pipe.ltrim(keys.promotions, -PROMOTIONS_KEPT, -1)
            if pending is not None:
                pipe.delete(keys.challenger_request)
            await pipe.execute()
            return pending

        watched = (keys.versions, keys.current_version, keys.erase_floor, keys.promotions, keys.challenger_request)
        pending = await self._watched(watched, switch, f"the promotion of v{version}")
        if pending is not None:
            log.warning(
                "v%s promoted by %s; the pending request to promote a challenger (%s) is dropped: this later choice "
                "stands",
                version,
                actor,
                as_text(pending),
            )
        await self._announce(version)

    @staticmethod
    def _not_before_erasure(version: int, floor: int | None) -> None:
        if floor is not None and version < floor:
            raise BeforeErasure(
                f"v{version} was written before v{floor} erased users (`recstream users erase`): it may hold their "
                f"data, so it is not served again; promote v{floor} or a later version"
            )

    async def rollback(self, reason: str = "rollback", actor: str = "operator") -> int:
        """Undo the latest promotion if nothing was written since it, else promote the current version's parent (the
        version it grew from); return the version promoted.

        Undoing a promotion promotes the version it replaced (checkpoints keep it while that promotion is the
        latest). Following the parent, not the next lower number, means a second rollback never lands on a version
        an earlier rollback moved away from (a rollback is not undone by the next). To go further back, promote a
        version by number. Another promotion or rollback recorded while this one chose its version raises
        :class:`ChangedMeanwhile` (nothing is changed).
        """
        keys = self.keys
        last_raw = await self.redis.lindex(keys.promotions, -1)
        current = await self.current_version()
        retained = {v["version"]: v for v in await self.versions()}
        if current is None:
            raise KeyError("no version is current yet (the worker writes the first one): nothing to roll back")
        undo = _undo_target(last_raw)
        if (
            undo is not None
            and json.loads(last_raw)["to"] == current  # (nothing written since the promotion)
            and undo != current  # (a promotion of the current version: nothing to undo)
            # a promotion to the parent of the version it replaced is a rollback's move (a rollback recorded before
            # records were marked, say): not undone, as a rollback is not
            and retained.get(undo, {}).get("parent") != current
        ):
            if undo not in retained:
                raise KeyError(f"v{undo}, which the latest promotion replaced, is no longer retained")
            target = undo
        else:
            parent = retained.get(current, {}).get("parent")
            if parent is None:
                raise KeyError(
                    f"the current version v{current} has no parent to roll back to; promote a version instead"
                )
            if parent not in retained:
                raise KeyError(
                    f"v{current}'s parent v{parent} is no longer retained (RECSTREAM_MODEL_RETENTION); "
                    "promote a retained version instead (`recstream models list`)"
                )
            target = parent
        await self.promote(target, reason=reason, actor=actor, rollback=True, after=last_raw)
        return target

    async def pin(self, version: int, pinned: bool = True) -> None:
        """Keep ``version`` beyond retention (``pinned``), or let retention delete it again. Pinning checks that the
        version is retained in the same transaction as it pins it: a checkpoint's retention cannot delete it between."""
        keys = self.keys
        if not pinned:
            await self.redis.srem(keys.pinned, version)
            return

        async def add(pipe: Any) -> None:
            if await pipe.zscore(keys.versions, str(version)) is None:
                raise KeyError(f"model version {version} does not exist")
            pipe.multi()
            pipe.sadd(keys.pinned, version)
            await pipe.execute()

        await self._watched((keys.versions,), add, f"the pin of v{version}")

    async def _watched(self, keys: tuple[str, ...], body: Callable[[Any], Awaitable[T]], what: str) -> T:
        """``body(pipe)`` in a transaction watching ``keys``, tried again (up to PROMOTE_ATTEMPTS times) while a
        checkpoint changes them under it; then :class:`CheckpointConflict`, to try again later."""
        for attempt in range(PROMOTE_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys)
                    return await body(pipe)
                except WatchError as exc:
                    _raise_if_connection_lost(exc, what)
                    if attempt == PROMOTE_ATTEMPTS - 1:
                        raise CheckpointConflict(
                            f"checkpoints kept changing the model's versions during {what} ({PROMOTE_ATTEMPTS} "
                            "attempts); try again"
                        ) from exc
        raise AssertionError("unreachable")  # (the last attempt returns or raises)

    async def last_promotion(self) -> dict[str, Any] | None:
        raw = await self.redis.lindex(self.keys.promotions, -1)
        return None if raw is None else json.loads(raw)

    async def promotions(self, last: int | None = None) -> list[dict[str, Any]]:
        """The promotion and rollback records, oldest first: the ``last`` ones, or all kept (``PROMOTIONS_KEPT``)."""
        if last == 0:
            return []
        start = 0 if last is None else -last
        return [json.loads(r) for r in await self.redis.lrange(self.keys.promotions, start, -1)]

    # -- champion / challenger -------------------------------------------------------------

    async def load_challenger(self, name: str) -> bytes | None:
        """The contestant ``name`` as of the last checkpoint, or None when there is none or it is stale (saved
        at other offsets than the last checkpoint's: it was not configured meanwhile). Raises
        :class:`SnapshotRefused` if its tag fails."""
        fields = await self.redis.hgetall(self.keys.challenger(name))
        if not fields:
            return None
        blob = fields.get(b"blob", b"")
        if not self.signer.verify(blob, fields.get(b"tag")):
            raise SnapshotRefused(0, what=f"challenger {name!r}")
        offsets = {offset_field(t, p): o for (t, p), o in sorted((await self.offsets()).items())}
        if json.loads(fields.get(b"offsets", b"null")) != offsets:
            log.warning("contestant %r was saved at other offsets than the last checkpoint: not loaded", name)
            return None
        return blob

    async def contest(self) -> dict[str, Any] | None:
        """The champion's name and each challenger's standing, as of the last checkpoint."""
        raw = await self.redis.get(self.keys.contest)
        return None if raw is None else json.loads(raw)

    async def request_challenger_promotion(self, name: str, reason: str, actor: str = "operator") -> None:
        """Ask the worker to promote challenger ``name`` at its next checkpoint."""
        await self.redis.set(self.keys.challenger_request, json.dumps({"name": name, "reason": reason, "actor": actor}))

    async def challenger_request(self) -> dict[str, Any] | None:
        """The pending operator request to promote a challenger (deleted by the checkpoint that applies it)."""
        raw = await self.redis.get(self.keys.challenger_request)
        return None if raw is None else json.loads(raw)

    async def drop_challenger_request(self) -> None:
        await self.redis.delete(self.keys.challenger_request)

    async def guard_status(self) -> dict[str, str]:
        """The model guard's state as the worker last wrote it, as strings (:func:`guard_report` types them)."""
        raw = await self.redis.hgetall(self.keys.guard_status)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def request_resume(self, pause: str) -> None:
        """Ask a worker whose model guard paused learning to resume (read at its next checkpoint).

        ``pause`` names the pause to end: its ``since`` as the worker reported it (``guard_status``).
        A request for an earlier pause does not end a later one.
        """
        await self.redis.set(self.keys.guard_resume, pause)

    async def resume_request(self) -> str | None:
        """The pause an operator asked to end (the request stays until the checkpoint that applies it deletes it:
        ``checkpoint(resume_request=...)``, so a worker that stops before that checkpoint applies it again)."""
        raw = await self.redis.get(self.keys.guard_resume)
        return None if raw is None else raw.decode()

    async def drop_resume_request(self, request: str) -> None:
        """Delete the resume request ``request`` (one for an earlier pause), unless another was made meanwhile."""
        await self.redis.eval(DELETE_IF_SAME_STRING, 1, self.keys.guard_resume, request)

    async def gate_counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.gate_counts)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def seen(self, user_id: str) -> set[str]:
        members = await self.redis.smembers(self.keys.seen(user_id))
        return {m.decode() for m in members}

    async def seen_additions(self, after: str | None) -> tuple[str, list[str] | None]:
        """The seen log's entries after the entry ``after`` (None: from now on): ``(the newest entry's id, their
        lines in order)``; the lines are None when some entry after ``after`` may be gone (trimmed off the log, or the
        log deleted), so what was built from the log before cannot be kept current. Ids ``"0-0"``: an empty log."""
        key = self.keys.seen_log
        async with self.redis.pipeline(transaction=True) as pipe:  # one snapshot of the log
            pipe.xrange(key, "-", "+", count=1)
            pipe.xrevrange(key, "+", "-", count=1)
            if after is not None:
                pipe.xrange(key, f"({after}", "+")
            replies = await pipe.execute()
        first, last = replies[0], replies[1]
        newest = last[0][0].decode() if last else "0-0"
        if after is None:
            return newest, []
        if (
            (not first and after != "0-0")
            or (first and _entry_id(first[0][0].decode()) > _entry_id(after))
            or _entry_id(newest) < _entry_id(after)  # made anew (its ids start lower): what it held is gone
        ):
            return newest, None  # the entry after ``after`` may be among those trimmed
        return newest, [fields[b"lines"].decode() for _, fields in replies[2]]


def _entry_id(text: str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as numbers, to compare."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _raise_if_connection_lost(exc: WatchError, during: str) -> None:
    """redis-py raises :class:`WatchError` both when a watched key changed ("Watched variable changed.") and when the
    connection failed while keys were watched ("A TimeoutError occurred while watching one or more keys"): the second
    is Redis unreachable, not a conflict, and is raised as such (a ``ConnectionError``, which callers retry and
    report as Redis being down)."""
    lost = redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError
    # raised while handling the connection's error; its message says so too ("... occurred [on] while watching ...")
    if isinstance(exc.__context__, lost) or "while watching" in str(exc):
        raise redis.exceptions.ConnectionError(f"the connection to Redis failed during {during} ({exc})") from exc


def _undo_target(raw: bytes | None) -> int | None:
    """The version that undoing the promotion recorded in ``raw`` (the history's last record) promotes: the one it
    replaced; None for none, a rollback (not undone by the next one) or a challenger the worker promoted by itself."""
    if raw is None:
        return None
    record = json.loads(raw)
    if record.get("rollback") or record.get("actor") == "auto" or record.get("from") is None:
        return None
    return int(record["from"])

"""Model snapshots in Redis: write a checkpoint atomically, read and authenticate the current one.

A checkpoint is one MULTI/EXEC transaction holding the snapshot, its HMAC tag, its metadata,
the Kafka offsets it covers, the seen-set additions since the previous checkpoint, the new
``current`` pointer and the deletion of versions past retention. It is guarded by WATCH on the
``current`` pointer, so two workers cannot both advance the same version (the loser gets
:class:`CheckpointConflict`). After EXEC the new version is announced on pub/sub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from store.keys import Keys
from store.signing import SnapshotSigner

log = logging.getLogger(__name__)


class SnapshotRefused(Exception):
    """A snapshot's HMAC tag did not verify; it was not decoded."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"model snapshot v{version} failed HMAC authentication and was refused "
            "(tampered, or signed with another key); it was not loaded"
        )
        self.version = version


class CheckpointConflict(Exception):
    """Another writer moved the ``current`` pointer since this worker last checkpointed."""


@dataclass
class Snapshot:
    version: int
    blob: bytes
    meta: dict[str, Any]


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class ModelStore:
    """Reads and writes model versions, offsets and seen sets under one key prefix."""

    def __init__(self, redis: aioredis.Redis, signer: SnapshotSigner, keys: Keys, retention: int = 5) -> None:
        self.redis = redis
        self.signer = signer
        self.keys = keys
        self.retention = retention

    async def current_version(self) -> int | None:
        raw = await self.redis.get(self.keys.current_version)
        return int(raw) if raw is not None else None

    async def load(self, version: int) -> Snapshot | None:
        """The snapshot of ``version`` if it exists; raises :class:`SnapshotRefused` if its tag fails."""
        fields = await self.redis.hgetall(self.keys.version(version))
        if not fields:
            return None
        blob = fields.get(b"blob", b"")
        if not self.signer.verify(blob, fields.get(b"tag")):
            raise SnapshotRefused(version)
        meta = json.loads(fields.get(b"meta", b"{}"))
        return Snapshot(version=version, blob=blob, meta=meta)

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

    async def checkpoint(
        self,
        expected_current: int | None,
        blob: bytes,
        meta: dict[str, Any],
        offsets: Mapping[tuple[str, int], int],
        seen: Mapping[str, set[str]],
    ) -> int:
        """Write a new version atomically and announce it; return its number.

        The number is one above every retained version (not just above ``current``), so a
        version is never reused after a rollback.
        """
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.current_version, keys.versions)
                raw = await pipe.get(keys.current_version)
                current = int(raw) if raw is not None else None
                if current != expected_current:
                    raise CheckpointConflict(
                        f"current model version is {current}, this worker expected {expected_current}: "
                        "another worker or an operator changed it"
                    )
                old = [int(v) for v in await pipe.zrange(keys.versions, 0, -1)]
                version = max([*old, current or 0]) + 1
                meta = {
                    **meta,
                    "version": version,
                    "parent": expected_current,
                    "offsets": {offset_field(t, p): o for (t, p), o in offsets.items()},
                }
                pipe.multi()
                pipe.hset(
                    keys.version(version),
                    mapping={"blob": blob, "tag": self.signer.sign(blob), "meta": json.dumps(meta)},
                )
                pipe.set(keys.current_version, version)
                pipe.zadd(keys.versions, {str(version): version})
                if offsets:
                    pipe.hset(keys.offsets, mapping={offset_field(t, p): o for (t, p), o in offsets.items()})
                for user, items in seen.items():
                    if items:
                        pipe.sadd(keys.seen(user), *items)
                retained = sorted([*old, version])
                for stale in retained[: max(0, len(retained) - self.retention)]:
                    pipe.delete(keys.version(stale))
                    pipe.zrem(keys.versions, str(stale))
                await pipe.execute()
            except WatchError as exc:
                raise CheckpointConflict("the current model version changed during the checkpoint") from exc
        await self.redis.publish(keys.announce_channel, str(version))
        return version

    async def seen(self, user_id: str) -> set[str]:
        members = await self.redis.smembers(self.keys.seen(user_id))
        return {m.decode() for m in members}

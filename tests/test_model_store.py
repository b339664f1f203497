"""Checkpoints in a real Redis: atomic, fenced, retained, authenticated."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from store.keys import Keys
from store.model_store import (
    MAX_REREADS,
    PROMOTE_ATTEMPTS,
    SIGN_IN_THREAD_BYTES,
    ChangedMeanwhile,
    CheckpointConflict,
    ModelStore,
    SnapshotRefused,
    bulk_client,
    guard_report,
)
from store.signing import SnapshotSigner
from tests.conftest import Endpoint, open_model_store

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k1", "t", retention=3) as opened:
        yield opened


async def test_checkpoint_writes_blob_offsets_and_seen_sets_together(store: ModelStore) -> None:
    v1 = await store.checkpoint(
        None, b"blob-1", {"events_learned": 2}, {("events", 0): 5, ("events", 1): 7}, {"u1": {"a", "b"}}
    )
    assert v1 == 1
    snapshot = await store.load_current()
    assert snapshot is not None and snapshot.blob == b"blob-1"
    assert snapshot.meta["offsets"] == {"events/0": 5, "events/1": 7} and snapshot.meta["parent"] is None
    assert await store.offsets() == {("events", 0): 5, ("events", 1): 7}
    assert await store.seen("u1") == {"a", "b"}
    v2 = await store.checkpoint(v1, b"blob-2", {}, {("events", 0): 9}, {"u1": {"c"}})
    assert v2 == 2 and (await store.load(2)).meta["parent"] == 1  # type: ignore[union-attr]
    assert await store.seen("u1") == {"a", "b", "c"}


async def test_a_stale_writer_is_fenced_off(store: ModelStore) -> None:
    await store.checkpoint(None, b"a", {}, {}, {})
    with pytest.raises(CheckpointConflict):
        await store.checkpoint(None, b"b", {}, {}, {})  # thinks there is no version yet
    assert (await store.load_current()).blob == b"a"  # type: ignore[union-attr]


async def test_retention_keeps_the_last_versions_and_numbers_are_never_reused(store: ModelStore) -> None:
    current = None
    for n in range(5):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    assert current == 5
    assert [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)] == [3, 4, 5]
    assert await store.load(2) is None
    # Roll back by hand to 3: the next checkpoint is 6, not 4.
    await store.redis.set(store.keys.current_version, 3)
    assert await store.checkpoint(3, b"after-rollback", {}, {}, {}) == 6
    assert (await store.load(5)).blob == b"b4"  # type: ignore[union-attr]


async def test_rollback_reaches_an_old_promoted_version_after_the_next_checkpoint(store: ModelStore) -> None:
    current = None
    for n in range(5):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.promote(3, reason="back to a good one")
    v6 = await store.checkpoint(3, b"learned-on-3", {}, {}, {})
    # retention keeps the newest 3 (4, 5, 6) and the newest version's parent, 3
    assert [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)] == [3, 4, 5, 6]
    assert await store.rollback(reason="the promotion was a mistake") == 3
    assert (await store.load_current()).blob == b"b2"  # type: ignore[union-attr]
    assert v6 == 6


async def test_a_rollback_right_after_a_promotion_undoes_it_and_the_next_goes_further_back(store: ModelStore) -> None:
    current = None
    for n in range(5):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.promote(3, reason="by mistake")  # (v3's parent is v2: the old rollback went there)
    assert await store.rollback(reason="undo the mistake") == 5  # the version the promotion replaced
    assert (await store.load_current()).blob == b"b4"  # type: ignore[union-attr]
    # a rollback is not undone by the next one: that one goes to the parent
    assert await store.rollback(reason="further back") == 4
    records = await store.promotions()
    assert [(r["from"], r["to"], r.get("rollback", False)) for r in records] == [
        (5, 3, False),
        (3, 5, True),
        (5, 4, True),
    ]


async def test_the_version_a_promotion_replaced_is_kept_while_that_promotion_is_the_latest(store: ModelStore) -> None:
    current = None
    for n in range(5):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.promote(3, reason="by mistake")  # replaces v5
    current = 3
    for n in range(6):  # retention keeps the newest 3 and the parent: v5 would be long gone
        current = await store.checkpoint(current, f"after{n}".encode(), {}, {}, {})
    retained = [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)]
    assert retained == [5, 9, 10, 11], retained
    await store.promote(5, reason="undo it by number, the worker having written since")
    assert (await store.load_current()).blob == b"b4"  # type: ignore[union-attr]
    current = 5
    for n in range(4):  # the latest promotion replaced v11 now: v11 is kept, v5 goes as any other
        current = await store.checkpoint(current, f"later{n}".encode(), {}, {}, {})
    retained = [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)]
    assert retained == [11, 13, 14, 15], retained


async def test_a_rollback_after_another_change_came_first_changes_nothing(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = None
    for n in range(4):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    other = ModelStore(store.redis, store.signer, store.keys)
    versions = store.versions

    async def another_operator_first() -> list[dict]:  # while this rollback chooses its version
        await other.promote(2, reason="another operator, a known-good version")
        return await versions()

    monkeypatch.setattr(store, "versions", another_operator_first)
    with pytest.raises(ChangedMeanwhile, match="another change came first"):
        await store.rollback(reason="roll back what I saw")
    assert await store.current_version() == 2  # the other operator's choice stands
    assert [r["reason"] for r in await store.promotions()] == ["another operator, a known-good version"]


async def test_the_promotion_history_keeps_the_latest_records(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("store.model_store.PROMOTIONS_KEPT", 3)
    current = None
    for n in range(3):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    for n in range(5):
        await store.promote(1 + n % 3, reason=f"r{n}")
    assert [r["reason"] for r in await store.promotions()] == ["r2", "r3", "r4"]
    assert [r["reason"] for r in await store.promotions(2)] == ["r3", "r4"]
    assert await store.promotions(0) == []


async def test_spaced_retention_keeps_one_version_per_period_back_to_its_reach(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    keys = Keys(f"sp-{uuid.uuid4().hex[:8]}")
    store = ModelStore(client, SnapshotSigner(b"k"), keys, retention=2, keep_every_seconds=60.0, keep_spaced=3)
    try:
        current = None
        written = {}
        for n in range(30):  # one version every 10 s, from t=1000 to t=1290
            current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {}, now=1_000.0 + 10 * n)
            written[current] = 1_000.0 + 10 * n
        retained = [int(v) for v in await client.zrange(keys.versions, 0, -1)]
        # periods of 60 s: [1140, 1200) starts with v15 (t=1140), [1200, 1260) with v21, [1260, 1320) with v27;
        # older periods are past the reach (3 periods); the newest 2 are v29 and v30 (v29 is also v30's parent)
        assert retained == [15, 21, 27, 29, 30]
        assert None not in [await store.load(v) for v in retained]
        assert await store.load(14) is None
        times = {int(v): float(t) for v, t in (await client.hgetall(keys.version_times)).items()}
        assert times == {v: written[v] for v in retained}  # deleted versions leave no time behind
    finally:
        await client.aclose()


async def test_a_snapshot_signed_with_another_key_is_refused(store: ModelStore) -> None:
    await store.checkpoint(None, b"blob", {}, {}, {})
    other = ModelStore(store.redis, SnapshotSigner(b"k2"), store.keys)
    with pytest.raises(SnapshotRefused, match="failed HMAC authentication"):
        await other.load_current()


async def test_large_and_small_snapshots_are_signed_alike(store: ModelStore, monkeypatch) -> None:
    """A snapshot of SIGN_IN_THREAD_BYTES or more is signed in a thread, a shorter one on the loop: both tags are
    the signer's, for the version and for a challenger; a tampered large blob is refused."""
    signed_in: list[str] = []
    sign = store.signer.sign

    def recording(blob: bytes) -> bytes:
        signed_in.append(threading.current_thread().name)
        return sign(blob)

    monkeypatch.setattr(store.signer, "sign", recording)
    large, small = bytes(range(256)) * (SIGN_IN_THREAD_BYTES // 256), b"small"
    v1 = await store.checkpoint(None, large, {}, {("events", 0): 1}, {}, challengers={"other": small})
    assert signed_in[0] != threading.main_thread().name and signed_in[1] == threading.main_thread().name
    assert (await store.load(v1)).blob == large  # type: ignore[union-attr]  # (its tag verified)
    assert await store.load_challenger("other") == small
    v2 = await store.checkpoint(v1, small, {}, {("events", 0): 2}, {}, challengers={"other": large})
    assert signed_in[2] == threading.main_thread().name and signed_in[3] != threading.main_thread().name
    assert (await store.load(v2)).blob == small and await store.load_challenger("other") == large  # type: ignore[union-attr]
    await store.redis.hset(store.keys.version(v1), "blob", large[:-1] + b"!")
    with pytest.raises(SnapshotRefused, match="failed HMAC authentication"):
        await store.load(v1)


async def test_a_version_pinned_during_a_checkpoint_is_not_deleted_by_its_retention(store: ModelStore) -> None:
    current = None
    for n in range(3):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    # An operator pins v1 (the oldest, next to go) right after the checkpoint has read the pins.
    read_pins = store.redis.smembers

    async def pins_then_operator_pins(key: str) -> set[bytes]:
        pins = await read_pins(key)
        await store.redis.sadd(store.keys.pinned, 1)
        return pins

    store.redis.smembers = pins_then_operator_pins  # type: ignore[method-assign]
    with pytest.raises(CheckpointConflict):
        await store.checkpoint(current, b"b3", {}, {}, {})
    store.redis.smembers = read_pins  # type: ignore[method-assign]
    assert (await store.load(1)).blob == b"b0"  # type: ignore[union-attr]
    assert await store.checkpoint(current, b"b3", {}, {}, {}) == 4  # the retry sees the pin and keeps v1
    assert (await store.load(1)).blob == b"b0"  # type: ignore[union-attr]


async def test_learned_event_ids_are_recorded_with_the_checkpoint_and_expire_after_the_retention(
    store: ModelStore,
) -> None:
    now = 1_800_000_000.0
    ids = [f"e{i}" for i in range(9_000)]  # more than one SADD chunk in the script
    await store.checkpoint(None, b"blob", {}, {}, {}, event_ids=ids, now=now)
    await store.checkpoint(1, None, {}, {}, {}, event_ids=["late-1"], now=now + 10)  # same bucket, no new version
    assert await store.learned_event_ids([*ids[::1000], "late-1", "never"], now=now + 20) == {*ids[::1000], "late-1"}
    bucket = store.keys.dedupe(store._bucket(now))
    assert await store.redis.scard(bucket) == len(ids) + 1
    ttl = await store.redis.ttl(bucket)
    retention = store.dedupe_retention_seconds + 2 * store.dedupe_bucket_seconds
    assert retention - 5 <= ttl <= retention
    # past the retention window they are no longer duplicates
    later = now + store.dedupe_retention_seconds + 2 * store.dedupe_bucket_seconds
    assert await store.learned_event_ids(ids[:3], now=later) == set()


async def test_a_delta_version_loads_with_its_base_and_retention_keeps_that_base(store: ModelStore) -> None:
    whole = await store.checkpoint(None, b"whole-1", {}, {}, {})
    current = whole
    for n in range(4):  # more deltas than retention (3) keeps: their base is older than all of them
        current = await store.checkpoint(current, f"delta-{n}".encode(), {}, {}, {}, base=whole)
    retained = [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)]
    assert retained == [whole, 3, 4, 5]  # v2 went; v1 stays: the kept deltas apply to it
    snapshot = await store.load(current)
    assert snapshot is not None and snapshot.blob == b"delta-3" and snapshot.base_version == whole
    assert snapshot.base is not None and snapshot.base.blob == b"whole-1" and snapshot.meta["base"] == whole
    held = await store.load(current, known_base=whole)  # the caller holds v1: not read again
    assert held is not None and held.base is None and held.base_version == whole
    # a whole version later, the old base goes once no kept version needs it
    for n in range(3):
        current = await store.checkpoint(current, f"whole-{n + 2}".encode(), {}, {}, {})
    assert whole not in [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)]
    assert await store.redis.hgetall(store.keys.version_bases) == {}
    with pytest.raises(CheckpointConflict, match="no longer retained"):
        await store.checkpoint(current, b"delta-of-a-gone-base", {}, {}, {}, base=whole)


async def test_a_delta_whose_base_fails_authentication_is_refused(store: ModelStore) -> None:
    whole = await store.checkpoint(None, b"whole", {}, {}, {})
    delta = await store.checkpoint(whole, b"delta", {}, {}, {}, base=whole)
    await store.redis.hset(store.keys.version(whole), "blob", b"forged")
    with pytest.raises(SnapshotRefused):
        await store.load(delta)


async def test_a_chain_of_deltas_loads_down_to_its_whole_version_or_to_the_one_the_caller_holds(
    store: ModelStore,
) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    for n in range(4):  # each delta against the version before it
        current = await store.checkpoint(current, f"delta-{n}".encode(), {}, {}, {}, base=current)
    assert [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)] == [1, 2, 3, 4, 5]  # all: a chain
    root, deltas = (await store.load(5)).chain()  # type: ignore[union-attr]
    assert root is not None and root.version == 1 and root.blob == b"whole"
    assert deltas == [(1, b"delta-0"), (2, b"delta-1"), (3, b"delta-2"), (4, b"delta-3")]
    root, deltas = (await store.load(5, known_base=3)).chain()  # type: ignore[union-attr]
    assert root is None and deltas == [(3, b"delta-2"), (4, b"delta-3")]
    # a base field pointing forward (not written by a worker) is refused rather than followed
    await store.redis.hset(store.keys.version(2), "base", 5)
    with pytest.raises(SnapshotRefused):
        await store.load(3)


async def test_a_consolidated_delta_version_is_whole_and_its_old_chain_can_go(store: ModelStore) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    for n in range(3):  # v2, v3, v4: each a delta against the version before it
        current = await store.checkpoint(current, f"delta-{n}".encode(), {}, {}, {}, base=current)
    assert await store.consolidate(3, b"whole-3")
    snapshot = await store.load(3)
    assert snapshot is not None and snapshot.base_version is None and snapshot.blob == b"whole-3"
    assert "base" not in snapshot.meta and snapshot.meta["consolidated_from"] == 2
    root, deltas = (await store.load(4)).chain()  # type: ignore[union-attr]
    assert root is not None and root.version == 3 and deltas == [(3, b"delta-2")]  # the chain ends at v3 now
    assert await store.redis.hgetall(store.keys.version_bases) == {b"2": b"1", b"4": b"3"}
    assert not await store.consolidate(3, b"whole-3")  # whole already: nothing written
    assert not await store.consolidate(99, b"nothing")  # no such version
    # retention (3) may now delete v1 and v2: nothing kept needs them
    for n in range(3):
        current = await store.checkpoint(current, f"d{n}".encode(), {}, {}, {}, base=current)
    assert [int(v) for v in await store.redis.zrange(store.keys.versions, 0, -1)] == [3, 4, 5, 6, 7]
    forged = await store.checkpoint(current, b"delta", {}, {}, {}, base=current)
    await store.redis.hset(store.keys.version(3), "blob", b"forged")  # a consolidated blob is authenticated too
    with pytest.raises(SnapshotRefused):
        await store.load(forged)


async def test_a_reader_that_read_a_delta_just_before_it_was_consolidated_reads_it_again(
    store: ModelStore, monkeypatch
) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    for n in range(2):  # v2, v3
        current = await store.checkpoint(current, f"delta-{n}".encode(), {}, {}, {}, base=current)
    as_delta = await store.redis.hgetall(store.keys.version(2))
    assert await store.consolidate(2, b"whole-2")
    await store.redis.delete(store.keys.version(1))  # what retention does once nothing kept needs v1
    real = store.redis.hgetall
    stale = [store.keys.version(2)]

    async def hgetall(key):  # type: ignore[no-untyped-def]
        if stale and key == stale[0]:  # the reader's first read of v2 happened before the consolidation
            stale.clear()
            return as_delta
        return await real(key)

    monkeypatch.setattr(store.redis, "hgetall", hgetall)
    root, deltas = (await store.load(3)).chain()  # type: ignore[union-attr]
    assert not stale and root is not None and root.version == 2 and root.blob == b"whole-2"
    assert deltas == [(2, b"delta-1")]


async def test_a_delta_checkpoint_goes_through_while_its_base_is_consolidated(
    store: ModelStore, redis_endpoint: Endpoint, monkeypatch
) -> None:
    """The background whole snapshot of the base lands between the checkpoint's WATCH and EXEC: the base's state is
    the same, so the checkpoint must not fail as a conflict (it did when the base's own hash was watched)."""
    whole = await store.checkpoint(None, b"whole", {}, {}, {})
    base = await store.checkpoint(whole, b"delta-1", {}, {}, {}, base=whole)
    other = redis.Redis.from_url(redis_endpoint.url)  # another client: the worker's background task
    sign = store.signer.sign

    def sign_while_consolidating(blob: bytes) -> str:
        if blob == b"delta-2":  # signed inside the checkpoint's transaction, after its WATCH
            key = store.keys.version(base)
            other.hset(key, mapping={"blob": b"whole-2", "tag": sign(b"whole-2")})
            other.hdel(key, "base")
            other.hdel(store.keys.version_bases, str(base))
        return sign(blob)

    monkeypatch.setattr(store.signer, "sign", sign_while_consolidating)
    try:
        current = await store.checkpoint(base, b"delta-2", {}, {}, {}, base=base)
    finally:
        other.close()
    root, deltas = (await store.load(current)).chain()  # type: ignore[union-attr]
    assert root is not None and root.version == base and root.blob == b"whole-2" and deltas == [(base, b"delta-2")]


async def test_a_broken_chain_is_reported_as_unreadable_not_tampered(store: ModelStore, monkeypatch) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    for n in range(2):  # v2, v3
        current = await store.checkpoint(current, f"delta-{n}".encode(), {}, {}, {}, base=current)
    as_delta = await store.redis.hgetall(store.keys.version(2))
    await store.redis.delete(store.keys.version(1))
    real = store.redis.hgetall
    reads = []

    async def hgetall(key):  # type: ignore[no-untyped-def]
        if key == store.keys.version(2):  # v2 is still a delta, and its base is gone: a broken chain
            reads.append(key)
            return as_delta
        return await real(key)

    monkeypatch.setattr(store.redis, "hgetall", hgetall)
    with pytest.raises(SnapshotRefused, match="could not be read: its base v1 is missing") as refused:
        await store.load(3)
    assert "HMAC" not in str(refused.value)
    assert len(reads) == 1 + MAX_REREADS  # read again, a bounded number of times


async def test_a_promotion_goes_through_while_checkpoints_move_current_and_its_version_is_made_whole(
    store: ModelStore, redis_endpoint: Endpoint, monkeypatch
) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    target = current = await store.checkpoint(current, b"delta-1", {}, {}, {}, base=current)
    current = await store.checkpoint(current, b"delta-2", {}, {}, {}, base=current)
    other = redis.Redis.from_url(redis_endpoint.url)  # another client: the worker
    zscore = aioredis.client.Pipeline.zscore
    attempts = []

    async def zscore_then_the_worker_writes(pipe, *args):  # type: ignore[no-untyped-def]
        found = await zscore(pipe, *args)  # read after the promotion's WATCH
        attempts.append(args)
        if len(attempts) == 1:  # a checkpoint moves current: a conflict, tried again
            other.set(store.keys.current_version, current + 1)
        elif len(attempts) == 2:  # the background whole snapshot of the target (the same state): no conflict
            key = store.keys.version(target)
            other.hset(key, mapping={"blob": b"whole-2", "tag": store.signer.sign(b"whole-2")})
            other.hdel(key, "base")
        return found

    monkeypatch.setattr(aioredis.client.Pipeline, "zscore", zscore_then_the_worker_writes)
    try:
        await store.promote(target, reason="back")
    finally:
        other.close()
    assert len(attempts) == 2 and await store.current_version() == target
    assert (await store.last_promotion())["from"] == current + 1  # type: ignore[index]  # what it replaced


async def test_a_promotion_of_a_version_retention_deleted_meanwhile_is_refused(store: ModelStore, monkeypatch) -> None:
    current = None
    for n in range(3):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    real_load = store.load

    async def load_then_retention_deletes(version, known_base=None):  # type: ignore[no-untyped-def]
        snapshot = await real_load(version, known_base)
        await store.checkpoint(current, b"b3", {}, {}, {})  # retention (3) drops v1
        return snapshot

    monkeypatch.setattr(store, "load", load_then_retention_deletes)
    with pytest.raises(KeyError, match="deleted by retention"):
        await store.promote(1, reason="too late")
    assert await store.current_version() == 4


async def test_consolidating_a_version_deleted_meanwhile_writes_nothing(
    store: ModelStore, redis_endpoint: Endpoint, monkeypatch
) -> None:
    current = await store.checkpoint(None, b"whole", {}, {}, {})
    delta = await store.checkpoint(current, b"delta", {}, {}, {}, base=current)
    other = redis.Redis.from_url(redis_endpoint.url)
    hmget = redis.client.Pipeline.hmget  # the consolidation runs over the store's (synchronous) bulk client

    def hmget_then_retention_deletes(pipe, *args):  # type: ignore[no-untyped-def]
        found = hmget(pipe, *args)  # read after the consolidation's WATCH
        other.unlink(store.keys.version(delta))
        return found

    monkeypatch.setattr(redis.client.Pipeline, "hmget", hmget_then_retention_deletes)
    try:
        assert not await store.consolidate(delta, b"whole-2")
    finally:
        other.close()
    assert not await store.redis.exists(store.keys.version(delta))  # no half-written version left behind


async def test_a_promotion_that_checkpoints_keep_overtaking_gives_up_as_a_conflict(
    store: ModelStore, redis_endpoint: Endpoint, monkeypatch
) -> None:
    current = await store.checkpoint(None, b"b0", {}, {}, {})
    current = await store.checkpoint(current, b"b1", {}, {}, {})
    other = redis.Redis.from_url(redis_endpoint.url)
    zscore = aioredis.client.Pipeline.zscore
    moves = []

    async def zscore_then_a_checkpoint(pipe, *args):  # type: ignore[no-untyped-def]
        found = await zscore(pipe, *args)
        moves.append(current + 1 + len(moves))
        other.set(store.keys.current_version, moves[-1])
        return found

    monkeypatch.setattr(aioredis.client.Pipeline, "zscore", zscore_then_a_checkpoint)
    try:
        with pytest.raises(CheckpointConflict, match="try again"):
            await store.promote(1, reason="while ingest runs")
    finally:
        other.close()
    assert len(moves) == PROMOTE_ATTEMPTS and await store.current_version() == moves[-1]
    assert await store.last_promotion() is None


def test_the_bulk_client_sends_a_large_value_as_it_is() -> None:
    """A whole snapshot goes to the socket without being copied into one buffer (hiredis's packer copies it,
    holding the GIL, ~0.12 s per 100 MB): the packer hands the value itself on, after its header."""
    client = bulk_client("redis://127.0.0.1:1/0")  # never connects: packing happens before any I/O
    whole = bytes(100_000)
    try:
        packed = client.connection_pool.make_connection().pack_commands([("HSET", "v3", "blob", whole)])
    finally:
        client.close()
    assert any(chunk is whole for chunk in packed)
    assert b"".join(packed) == b"*4\r\n$4\r\nHSET\r\n$2\r\nv3\r\n$4\r\nblob\r\n$100000\r\n" + whole + b"\r\n"


async def test_a_committed_version_whose_announcement_fails_is_not_reported_as_failed(
    store: ModelStore, monkeypatch, caplog
) -> None:
    """Checkpoints and promotions are committed by EXEC; the pub/sub announcement after it is a courtesy (API
    processes poll too), so its failure must not turn a done checkpoint or promotion into an error."""
    first = await store.checkpoint(None, b"b1", {}, {}, {})

    async def broken_publish(_channel: str, _message: str) -> int:
        raise redis.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(store.redis, "publish", broken_publish)
    second = await store.checkpoint(first, b"b2", {}, {}, {})
    await store.promote(first, reason="back")
    assert await store.current_version() == first and second == first + 1
    assert caplog.text.count("announcement failed") == 2


def test_the_guard_report_types_what_the_worker_wrote_and_leaves_what_does_not_parse_out() -> None:
    learning = {"state": "learning", "since": "", "reference": "0.6125", "reference_count": "2000"}
    assert guard_report(learning) == {"state": "learning", "since": None, "reference": 0.6125, "reference_count": 2000}
    paused = {"state": "paused", "since": "1764500000.25", "reference": "0.5", "reference_count": "7"}
    assert guard_report(paused) == {"state": "paused", "since": 1764500000.25, "reference": 0.5, "reference_count": 7}
    nothing = {"state": None, "since": None, "reference": None, "reference_count": None}
    assert guard_report({}) == nothing  # no worker reported yet
    assert guard_report({"state": "", "since": "soon", "reference": "nan", "reference_count": "1.5"}) == nothing


async def test_a_rollback_recorded_before_records_were_marked_is_not_undone(store: ModelStore) -> None:
    """A record of a rollback written before records said so (no ``rollback`` field) looks like a promotion; one to
    the parent of the version it replaced is taken for what it is: the next rollback goes on to the parent."""
    current = None
    for n in range(5):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.promote(4, reason="an old rollback")  # v5's parent: a rollback's move, recorded without the mark
    assert "rollback" not in (await store.promotions())[-1]
    assert await store.rollback(reason="further back") == 3  # not back to v5
    await store.promote(3, reason="the current one again")  # nothing to undo: from == to
    with pytest.raises(KeyError, match="parent v2 is no longer retained"):  # (it goes for the parent: not a no-op)
        await store.rollback(reason="and further")

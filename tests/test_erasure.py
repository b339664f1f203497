"""Erasing a user (learner.erasure, store.erasures): the worker's processor on a real Redis (Kafka plays no part:
tests/transport.py records the dead letters).

A request in Redis makes a checkpoint due, even with nothing pending; that checkpoint forgets the user in the
champion and every challenger, writes a whole snapshot that does not name them, deletes their seen set and the seen
log, records them by fingerprint and raises the erase floor, below which no version is promoted. Their events
stamped before the request are dropped afterwards (no dead letter, counted), also after a restart; those stamped
after it are learned.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from learner.erasure import fingerprint
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.registry import build_model
from recstream.events import Event
from recstream.settings import Settings
from store.erasures import record_erased
from store.model_store import BeforeErasure, ModelStore
from stream.processor import QUARANTINED, DeadLettersUndelivered, quarantine_payload
from stream.quarantine import not_erased
from tests.clock import iso
from tests.conftest import Endpoint, loops, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration

ERASED, KEPT = "erase-me@example.com", "u-kept"


def _events(user: str, start: int, n: int, ts: float | None = None) -> list[dict]:
    return [
        {"event_id": f"{user}-{k}", "user_id": user, "item_id": f"v{k % 7}", "type": "like",
         "ts": iso(k) if ts is None else _iso_at(ts)}
        for k in range(start, start + n)
    ]  # fmt: skip


def _iso_at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _cooccurrence() -> OnlineLearner:
    return OnlineLearner(model=ItemCooccurrence())


def _bpr() -> OnlineLearner:
    return OnlineLearner(model=build_model("bpr"))


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "erase") as opened:
        yield opened


async def _started(store: ModelStore, transport: Transport):  # type: ignore[no-untyped-def]
    processor = transport.processor(
        store, new_learner=_cooccurrence, contestants={"champion": _cooccurrence, "bpr": _bpr}
    )
    await processor.start()
    return processor


async def test_a_request_is_applied_by_the_next_checkpoint_even_on_a_quiet_stream(store: ModelStore) -> None:
    redis, keys = store.redis, store.keys
    transport = Transport()
    # a worker that ran a third contestant, since taken out of the settings: its saved state names the user too
    earlier = transport.processor(
        store, new_learner=_cooccurrence, contestants={"champion": _cooccurrence, "bpr": _bpr, "retired": _bpr}
    )
    await earlier.start()
    await earlier.process(transport.records(_events(ERASED, 100, 3)))
    await earlier.checkpoint()
    await earlier.settle()
    assert ERASED.encode() in await store.load_challenger("retired")
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(ERASED, 0, 20) + _events(KEPT, 0, 20)))
    before = await processor.checkpoint()
    assert await redis.smembers(keys.seen(ERASED)) and await redis.exists(keys.seen_log)
    assert processor.learner.model.knows_user(ERASED) and processor.challengers["bpr"].model.knows_user(ERASED)

    requested = await store.erasures.request(ERASED, reason="account deleted", actor="test")
    assert await store.erasures.status(ERASED) == {"state": "waiting", "requested": requested["at"],
                                                   "reason": "account deleted"}  # fmt: skip
    assert not processor.checkpoint_due()  # nothing pending, and the request not looked for yet
    await processor.look_for_erasures()
    assert processor.checkpoint_due()  # the request makes one due, with nothing pending
    # learned before the request is applied (so in the seen sets pending): erased too
    await processor.process(transport.records(_events(ERASED, 50, 3)))
    version = await processor.checkpoint()
    assert version is not None and version > before

    snapshot = await store.load(version)
    assert snapshot.base_version is None  # whole: a delta would apply to a version that names them
    assert ERASED.encode() not in snapshot.blob
    for name in ("bpr", "champion"):  # the contestants' states as written with it
        blob = await store.load_challenger(name)
        assert blob is not None and ERASED.encode() not in blob
    assert not await redis.exists(keys.challenger("retired")) and await redis.exists(keys.contest)
    assert await redis.smembers(keys.challengers_saved) == {b"champion", b"bpr"}
    assert not processor.learner.model.knows_user(ERASED) and processor.learner.model.knows_user(KEPT)
    assert not processor.challengers["bpr"].model.knows_user(ERASED)
    assert not await redis.exists(keys.seen(ERASED)) and await redis.smembers(keys.seen(KEPT))
    # API processes drop the seen sets they hold; the log starts again, without them
    log = await redis.xrange(keys.seen_log)
    assert log and log[0][1] == {b"lines": b""}  # (an entry newer than any an API process read)
    assert all(not line.startswith(ERASED) for _, fields in log for line in fields[b"lines"].decode().splitlines())
    assert await store.erasures.waiting() == 0
    status = await store.erasures.status(ERASED)
    assert status["state"] == "erased" and status["version"] == version and status["requested"] == requested["at"]
    assert ERASED.encode() not in b"".join(await redis.hkeys(keys.erased_users))  # a fingerprint, not the id
    assert await store.erasures.floor() == version
    with pytest.raises(BeforeErasure, match=f"v{before} was written before v{version}"):
        await store.promote(before, reason="test")
    with pytest.raises(BeforeErasure):
        await store.rollback(reason="test")  # its parent is the version before
    await processor.look_for_erasures()
    assert not processor.checkpoint_due()  # done: nothing waits
    await processor.settle()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_their_older_events_are_dropped_also_after_a_restart_and_newer_ones_learned(
    store: ModelStore, compiled: bool
) -> None:
    with loops(compiled):
        await _older_dropped_newer_learned(store)


async def _older_dropped_newer_learned(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(ERASED, 0, 10)))
    await processor.checkpoint()
    requested = await store.erasures.request(ERASED, reason="account deleted", actor="test")
    await processor.look_for_erasures()
    await processor.checkpoint()

    # a backlog of theirs, stamped before the request: dropped, without a dead letter
    await processor.process(transport.records(_events(ERASED, 100, 5)))
    assert not processor.learner.model.knows_user(ERASED)
    assert transport.dead_letters == []
    assert processor._pending.gate_counts["user_erased"] == 5
    assert ERASED not in processor._pending.seen
    await processor.checkpoint()
    assert (await store.gate_counts())["user_erased"] == 5
    await processor.settle()

    restarted_transport = Transport()
    restarted_transport.offset = transport.offset
    restarted = await _started(store, restarted_transport)
    await restarted.process(restarted_transport.records(_events(ERASED, 200, 3)))
    assert not restarted.learner.model.knows_user(ERASED)
    # they came back: stamped after the request, learned
    await restarted.process(restarted_transport.records(_events(ERASED, 300, 3, ts=requested["at"] + 1)))
    assert restarted.learner.model.knows_user(ERASED)
    assert restarted.challengers["bpr"].model.knows_user(ERASED)
    await restarted.settle()


async def test_a_request_made_again_while_its_checkpoint_runs_stays_for_the_next(store: ModelStore) -> None:
    redis, keys = store.redis, store.keys
    await store.erasures.request(ERASED, reason="first", actor="test")
    read = await store.erasures.requests()
    await store.erasures.request(ERASED, reason="again", actor="test")  # a later time: more events to drop
    async with redis.pipeline(transaction=True) as pipe:
        record_erased(pipe, keys, read, version=7, now=time.time(), expired=[])
        await pipe.execute()
    assert json.loads((await store.erasures.requests())[ERASED])["reason"] == "again"
    assert (await store.erasures.status(ERASED))["state"] == "waiting"  # (its record is written; the request wins)
    assert await redis.hexists(keys.erased_users, fingerprint(ERASED))


async def test_records_past_their_keeping_time_are_forgotten_in_redis_by_a_checkpoint(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(KEPT, 0, 3)))
    await processor.checkpoint()
    stale = {"at": time.time() - 8 * 86400, "applied": time.time() - 8 * 86400, "version": 1}
    await store.redis.hset(store.keys.erased_users, fingerprint("long-gone"), json.dumps(stale))
    await store.redis.hset(store.keys.erased_users, fingerprint("recent"), json.dumps({**stale, "at": time.time()}))
    await processor.settle()
    restarted = await _started(store, transport)  # loads them: the old one is forgotten
    await restarted.process(transport.records(_events(KEPT, 10, 3)))
    await restarted.checkpoint()
    assert set(await store.erasures.erased()) == {fingerprint("recent")}
    assert restarted._erased_expired == []  # deleted: not sent again
    await restarted.settle()


async def test_a_paused_model_still_writes_the_version_that_erases(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(ERASED, 0, 5)))
    before = await processor.checkpoint()
    processor._pause(processor.clock())  # (the model guard's pause: no new version while it lasts)
    await store.erasures.request(ERASED, reason="account deleted", actor="test")
    await processor.look_for_erasures()
    version = await processor.checkpoint()
    assert version is not None and version > before
    assert ERASED.encode() not in (await store.load(version)).blob
    assert (await store.erasures.status(ERASED))["version"] == version
    await processor.settle()


async def test_an_erasure_whose_write_fails_is_applied_again_by_the_next(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(ERASED, 0, 5) + _events(KEPT, 0, 5)))
    await processor.checkpoint()
    await store.erasures.request(ERASED, reason="account deleted", actor="test")
    write, failed = store.checkpoint, []

    async def failing_once(*args: Any, **kwargs: Any) -> int | None:
        if not failed:
            failed.append(kwargs.get("erasures"))
            raise ConnectionError("Redis went away")
        return await write(*args, **kwargs)

    monkeypatch.setattr(store, "checkpoint", failing_once)
    await processor.look_for_erasures()
    with pytest.raises(ConnectionError):
        await processor.checkpoint()
    assert list(failed[0]) == [ERASED]  # (the write that failed carried it)
    assert await store.erasures.waiting() == 1 and processor.checkpoint_due()
    version = await processor.checkpoint()
    assert version is not None
    snapshot = await store.load(version)
    assert snapshot.base_version is None and ERASED.encode() not in snapshot.blob
    assert (await store.erasures.status(ERASED))["version"] == version
    await processor.settle()


async def test_a_user_erased_again_keeps_the_new_record_when_the_old_one_expires(store: ModelStore) -> None:
    redis, keys = store.redis, store.keys
    await store.erasures.request(ERASED, reason="again", actor="test")
    await redis.hset(keys.erased_users, fingerprint("other"), json.dumps({"at": 1.0, "applied": 2.0, "version": 1}))
    async with redis.pipeline(transaction=True) as pipe:
        expired = [fingerprint(ERASED), fingerprint("other")]  # (their old records, forgotten in the same write)
        record_erased(pipe, keys, await store.erasures.requests(), version=9, now=time.time(), expired=expired)
        await pipe.execute()
    assert set(await store.erasures.erased()) == {fingerprint(ERASED)}
    assert (await store.erasures.status(ERASED))["version"] == 9


async def test_a_field_that_is_not_a_request_is_dropped_not_applied(store: ModelStore, caplog) -> None:
    redis, keys = store.redis, store.keys
    await redis.hset(keys.erase_requests, mapping={"hand-made": "not json", "no-time": json.dumps({"reason": "x"})})
    await store.erasures.request(ERASED, reason="account deleted", actor="test")
    assert (await store.erasures.status("hand-made")) == {"state": "none"}  # (not a request: not waiting)
    assert set(await store.erasures.requests()) == {ERASED}
    assert await store.erasures.waiting() == 1  # deleted
    assert "not requests" in caplog.text and "'hand-made'" in caplog.text


async def test_a_quarantine_replay_leaves_out_the_events_an_erased_user_made_before(
    store: ModelStore, redis_endpoint: Endpoint
) -> None:
    requested = await store.erasures.request(ERASED, reason="account deleted", actor="test")
    record = json.dumps({"at": requested["at"], "applied": 0, "version": 1})
    await store.redis.hset(store.keys.erased_users, fingerprint("gone"), record)
    held = [
        {"event": _events(ERASED, 0, 1)[0]},  # waiting to be erased, from before: left out
        {"event": _events("gone", 0, 1)[0]},  # erased, from before: left out
        {"event": _events("gone", 5, 1, ts=requested["at"] + 10)[0]},  # after: they came back
        {"event": _events(KEPT, 0, 1)[0]},
    ]
    settings = Settings(redis_url=redis_endpoint.url, redis_prefix=store.keys.prefix)
    assert await not_erased(settings, held) == held[2:]


async def test_their_dead_letters_not_sent_yet_are_dropped_the_others_sent(store: ModelStore) -> None:
    transport = Transport()
    processor = await _started(store, transport)
    await processor.process(transport.records(_events(KEPT, 0, 2)))
    await processor.checkpoint()
    records = transport.records(_events(ERASED, 10, 1) + _events(KEPT, 10, 1))
    letters = [
        (QUARANTINED, r.key, quarantine_payload(r, Event.model_validate_json(r.value), "user_rate", "test"))
        for r in records
    ]
    processor._pending.unsent.extend(letters)  # (as a broker that refused them leaves them)
    await store.erasures.request(ERASED, reason="account deleted", actor="test")
    await processor.look_for_erasures()
    with pytest.raises(DeadLettersUndelivered):  # (letters sent again: the checkpoint waits for them, as always)
        await processor.checkpoint()
    assert [letter["event"]["user_id"] for _, letter in transport.dead_letters] == [KEPT]
    version = await processor.checkpoint()
    assert (await store.erasures.status(ERASED))["version"] == version
    await processor.settle()

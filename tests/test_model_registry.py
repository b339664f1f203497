"""Model versions in a real Redis: list, pin, promote, roll back, and the worker continuing from a rollback."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from learner.online_learner import OnlineLearner
from store.model_store import ModelStore, SnapshotRefused
from stream.processor import EventProcessor
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store, run_cli
from tests.transport import Transport

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "r", retention=3) as opened:
        yield opened


async def _processor(store: ModelStore, transport: Transport) -> EventProcessor:
    processor = transport.processor(store)
    await processor.start()
    return processor


def _likes(start: int, n: int) -> list[dict]:
    return [
        {"event_id": f"e{k}", "user_id": f"u{k % 5}", "item_id": f"v{k % 9}", "type": "like", "ts": iso(k)}
        for k in range(start, start + n)
    ]


async def test_pinned_versions_survive_retention(store: ModelStore) -> None:
    current = None
    for n in range(2):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.pin(1)
    for n in range(2, 6):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    listed = await store.versions()
    assert [v["version"] for v in listed] == [1, 4, 5, 6]
    assert [v["version"] for v in listed if v["pinned"]] == [1]
    assert [v["version"] for v in listed if v["current"]] == [6]


async def test_rollback_makes_the_worker_continue_from_the_older_version(store: ModelStore) -> None:
    transport = Transport()
    processor = await _processor(store, transport)
    await processor.process(transport.records(_likes(0, 30)))
    v1 = await processor.checkpoint()
    await processor.process(transport.records(_likes(30, 30)))
    v2 = await processor.checkpoint()
    assert (v1, v2) == (1, 2)

    # Three more events are learned but not yet checkpointed when the operator rolls back (say v2
    # learned a bad batch). The API would swap to v1 at once.
    await processor.process(transport.records(_likes(60, 3)))
    assert await store.rollback(reason="bad batch in v2") == 1
    assert await store.current_version() == 1
    assert (await store.promotions())[-1] | {"at": 0} == {
        "at": 0,
        "from": 2,
        "to": 1,
        "reason": "bad batch in v2",
        "actor": "operator",
        "rollback": True,
    }

    # At its next checkpoint the worker adopts v1: the 3 un-checkpointed events are skipped (their
    # offsets are committed, their ids not recorded as learned), and no new version is needed.
    assert await processor.checkpoint() == 1
    assert processor.learner.events_learned == 30
    # Events arriving after the rollback are learned on top of v1; the next version is numbered 3.
    await processor.process(transport.records(_likes(63, 5)))
    v3 = await processor.checkpoint()
    assert v3 == 3
    meta = next(v for v in await store.versions() if v["version"] == 3)
    assert meta["parent"] == 1 and meta["events_learned"] == 35
    assert (await store.offsets())[("events", 0)] == transport.offset  # every message handled


async def test_promote_refuses_a_missing_or_tampered_version(store: ModelStore) -> None:
    await store.checkpoint(None, b"good", {}, {}, {})
    await store.redis.hset(store.keys.version(9), mapping={"blob": b"evil", "tag": b"0" * 64, "meta": "{}"})
    with pytest.raises(SnapshotRefused):
        await store.promote(9, reason="test")
    with pytest.raises(KeyError):
        await store.promote(42, reason="test")
    assert await store.current_version() == 1


async def test_models_history_prints_each_promotion_and_rollback_as_a_row(
    store: ModelStore, redis_endpoint: Endpoint
) -> None:
    current = None
    for n in range(3):
        current = await store.checkpoint(current, f"b{n}".encode(), {}, {}, {})
    await store.promote(1, reason="back to the first one")
    await store.promote(2, reason="second try")
    # (a reason is shown as text, not run by the terminal; an actor longer than the column widens it)
    await store.rollback(reason="bad batch in v2\x1b[2J", actor="api:release-bot-admin")
    env = {
        **os.environ,
        "RECSTREAM_REDIS_URL": redis_endpoint.url,
        "RECSTREAM_REDIS_PREFIX": store.keys.prefix,
        "RECSTREAM_HMAC_KEY": "k",
    }
    shown = run_cli("models", "history", env=env)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["when", "(UTC)", "from", "to", "by", "model", "reason"]
    cells = [row.split(maxsplit=6) for row in rows]  # date, time, from, to, by, model, reason
    assert [(c[2], c[3], c[4], c[6]) for c in cells] == [
        ("3", "1", "operator", "back to the first one"),
        ("1", "2", "operator", "second try"),
        ("2", "1", "api:release-bot-admin", "(rollback) bad batch in v2\\x1b[2J"),  # (it undid the promotion of v2)
    ]
    as_json = run_cli("models", "history", "--json", env=env)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert records == await store.promotions()
    last = run_cli("models", "history", "--last", "1", env=env)
    assert last.returncode == 0 and last.stdout.splitlines()[1:] == rows[-1:], last.stdout


async def test_models_commands_refuse_a_wrong_version_in_one_line(store: ModelStore, redis_endpoint: Endpoint) -> None:
    env = {
        **os.environ,
        "RECSTREAM_REDIS_URL": redis_endpoint.url,
        "RECSTREAM_REDIS_PREFIX": store.keys.prefix,
        "RECSTREAM_HMAC_KEY": "k",
    }
    empty = run_cli("models", "rollback", "--reason", "x", env=env)
    assert (empty.returncode, empty.stderr.strip()) == (
        1,
        "recstream models: no version is current yet (the worker writes the first one): nothing to roll back",
    )
    await store.checkpoint(None, b"good", {}, {}, {})
    await store.redis.hset(store.keys.version(9), mapping={"blob": b"evil", "tag": b"0" * 64, "meta": "{}"})
    refused = {
        ("promote", "42", "--reason", "x"): "model version 42 does not exist",
        ("pin", "42"): "model version 42 does not exist",
        ("rollback", "--reason", "x"): "the current version v1 has no parent to roll back to",
        ("promote", "9", "--reason", "x"): "failed HMAC authentication and was refused",
    }
    for args, said in refused.items():
        done = run_cli("models", *args, env=env)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("recstream models: ") and said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert await store.current_version() == 1


async def test_a_worker_whose_current_version_is_gone_waits_for_one_that_loads(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``current`` names a version whose data is not in Redis (deleted, or evicted): a new model would fail every
    checkpoint (it expects no current version), so the worker waits, saying what to do, until a version loads."""
    current = None
    for _ in range(2):
        current = await store.checkpoint(current, OnlineLearner().to_bytes(), {}, {}, {})
    await store.redis.delete(store.keys.version(2))  # evicted
    processor = Transport().processor(store, refused_retry_seconds=0.05)
    starting = asyncio.create_task(processor.start())
    try:
        deadline = time.monotonic() + 10
        while "model v2 is current but is not in Redis" not in caplog.text:
            assert time.monotonic() < deadline and not starting.done(), caplog.text
            await asyncio.sleep(0.05)
        assert not starting.done()
        await store.promote(1, reason="v2 is gone")  # an operator promotes a version that loads
        await asyncio.wait_for(starting, 10)
    finally:
        starting.cancel()
    assert processor.version == 1

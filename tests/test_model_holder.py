"""The API's model holder with a real Redis: loading new versions is bounded to a share of the time."""

from __future__ import annotations

import json
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from api.model_holder import LOAD_BANK_SECONDS, ModelHolder
from learner import codec, cooccurrence_delta, id_index
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.serving import ServingModel
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from tests.conftest import Endpoint

pytestmark = pytest.mark.integration


async def test_slow_loads_keep_to_their_share_of_the_time(redis_endpoint: Endpoint) -> None:
    """Loads of 1 s at a share of 0.25: the first costs nothing (no model was served meanwhile), the next ones
    are paid from the bank, then each waits until the time budget has earned back what the last one spent; an
    operator's rollback or promotion never waits."""
    client = aioredis.Redis.from_url(redis_endpoint.url)
    store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"mh-{uuid.uuid4().hex[:8]}"))
    now = [100.0]
    loaded: list[int] = []

    def slow_loader(blob: bytes, version: int) -> ServingModel:
        loaded.append(version)
        now[0] += 1.0  # every load takes one second on the holder's clock
        return ServingModel.from_bytes(blob, version)

    holder = ModelHolder(store, poll_seconds=60, load_share=0.25, clock=lambda: now[0], loader=slow_loader)
    learner = OnlineLearner()
    versions: list[int] = []

    async def checkpoint() -> int:
        learner.learn(f"u{len(versions)}", "v1", "like", None, None)
        versions.append(await store.checkpoint(versions[-1] if versions else None, learner.to_bytes(), {}, {}, {}))
        return versions[-1]

    try:
        v1 = await checkpoint()
        await holder.refresh()
        assert holder.model is not None and holder.model.version == v1  # the first load: at once
        # 100 -> 101: not charged, LOAD_BANK_SECONDS (1 s) still banked (capped: nothing more earned)
        assert LOAD_BANK_SECONDS == 1.0 and holder.load_wait() == 0.0 and holder._load_budget.left == 1.0
        v2 = await checkpoint()
        await holder.refresh()
        assert holder.model.version == v2 and now[0] == 102.0
        # 101 -> 102: 1 + 0.25 (earned while it ran) - 1 = 0.25 s left: not in debt, the next at once too
        assert holder.load_wait() == 0.0
        v3 = await checkpoint()
        await holder.refresh()
        assert holder.model.version == v3 and now[0] == 103.0
        # 102 -> 103: 0.25 + 0.25 - 1 = -0.5 s: earned back at 0.25 s a second, the next may start at 105
        assert holder.load_wait() == pytest.approx(2.0)
        v4 = await checkpoint()
        now[0] = 104.9
        await holder.refresh()
        assert holder.model.version == v3 and loaded == [v1, v2, v3]
        now[0] = 105.0
        await holder.refresh()
        assert holder.model.version == v4 and loaded == [v1, v2, v3, v4]
        assert holder.load_wait() == pytest.approx(3.0)  # 105 -> 106: 0 + 0.25 - 1 = -0.75 s: the next at 109
        # An operator rolls back to v3: an older version is loaded at once, whatever the wait.
        await store.promote(v3, reason="roll back")
        await holder.refresh()
        assert holder.model.version == v3 and loaded == [v1, v2, v3, v4, v3]
        # ...and promotes v4 again: newer than v3 but served before, so not a new checkpoint: at once too.
        assert holder.load_wait() > 0
        await store.promote(v4, reason="back to v4")
        await holder.refresh()
        assert holder.model.version == v4 and loaded == [v1, v2, v3, v4, v3, v4]
        # A new checkpoint still waits its turn.
        v5 = await checkpoint()
        assert holder.load_wait() > 0
        await holder.refresh()
        assert holder.model.version == v4
        now[0] += holder.load_wait()
        await holder.refresh()
        assert holder.model.version == v5
        # A version that erases a user does not wait: the versions before it personalise for them.
        assert holder.load_wait() > 0
        learner.forget_users(["u0"])
        request = json.dumps({"at": 1.0, "reason": "test", "actor": "test"})
        v6 = await store.checkpoint(v5, learner.to_bytes(), {}, {}, {}, erasures={"u0": request})
        versions.append(v6)
        await holder.refresh()
        assert holder.model.version == v6 and not holder.model.model.knows_user("u0")
        await checkpoint()  # the next one waits its turn again
        await holder.refresh()
        assert holder.model.version == v6 and holder.load_wait() > 0
    finally:
        await client.aclose()


def test_the_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="load_share"):
        ModelHolder(store=None, load_share=0)  # type: ignore[arg-type]


async def test_a_new_version_is_loaded_from_the_previous_ones_indexes(
    redis_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[list[str]] = []  # the id lists of the indexes built from scratch (not from a previous one's copy)
    new_table = id_index._new_table
    monkeypatch.setattr(id_index, "_new_table", lambda ids: built.append(list(ids)) or new_table(ids))
    client = aioredis.Redis.from_url(redis_endpoint.url)
    store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"mh-{uuid.uuid4().hex[:8]}"))
    holder = ModelHolder(store, poll_seconds=60, load_share=1.0)
    learner = OnlineLearner()
    try:
        for i in range(300):
            learner.learn(f"u{i % 40}", f"v{i % 70}", "like", None, None)
        v1 = await store.checkpoint(None, learner.to_bytes(), {}, {}, {})
        await holder.refresh()
        first = holder.model
        for i in range(300, 400):  # new users and items, and more of the old ones
            learner.learn(f"u{i % 55}", f"v{i % 90}", "like", None, None)
        v2 = await store.checkpoint(v1, learner.to_bytes(), {}, {}, {})
        built.clear()
        await holder.refresh()
        assert first is not None and holder.model is not None and holder.model.version == v2
        # v2's indexes started from v1's (copies of them: no index of v2's 55 users or 90 items built from scratch),
        # and serve what a fresh load serves
        assert holder.model.model.users.ids == [f"u{i}" for i in range(55)]
        assert [len(ids) for ids in built if len(ids) in (55, 90)] == []
        fresh = ServingModel.from_bytes((await store.load(v2)).blob, v2)  # type: ignore[union-attr]
        for user in [f"u{i}" for i in range(60)]:
            assert holder.model.recommend(user, 10, set()) == fresh.recommend(user, 10, set())
        assert len(first.model.users) == 40  # the version still serving requests meanwhile is unchanged
    finally:
        await client.aclose()


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    client = aioredis.Redis.from_url(redis_endpoint.url)
    yield ModelStore(client, SnapshotSigner(b"k"), Keys(f"mh-{uuid.uuid4().hex[:8]}"))
    await client.aclose()


async def _write_delta(store: ModelStore, learner: OnlineLearner, version: int) -> int:
    """As the worker does: a delta against ``version`` (the last one written), then mark the learner."""
    made = cooccurrence_delta.parts(learner, base_version=version)
    assert made is not None
    written = await store.checkpoint(version, codec.encode(*made), {}, {}, {}, base=version)
    cooccurrence_delta.mark(learner)
    assert written is not None
    return written


async def test_delta_versions_are_served_from_the_base_the_process_keeps(store: ModelStore) -> None:
    read: list[tuple[int, int | None, bool]] = []  # (version, its base, base read with it)
    load = store.load

    async def recording_load(version: int, known_base: int | None = None):  # type: ignore[no-untyped-def]
        snapshot = await load(version, known_base)
        if snapshot is not None:
            read.append((version, snapshot.base_version, snapshot.base is not None))
        return snapshot

    store.load = recording_load  # type: ignore[method-assign]
    holder, learner, whole = await _serving_a_whole_version(store, "abcd")
    served = holder.model
    version = whole
    in_place_before = _loads("delta")
    for k, (user, item) in enumerate([("bob", "a"), ("ann", "b"), ("cid", "c")]):
        learner.learn(user, item, "like", None, None, 1.8e9 + k)
        version = await _write_delta(store, learner, version)
        await holder.refresh()
        assert holder.model is served and served.version == version  # the delta applied to the model served
        want = ServingModel.from_bytes(learner.to_bytes(), version)
        for who in ("ann", "bob", "cid", "nobody"):
            assert holder.model.recommend(who, 5, set()) == want.recommend(who, 5, set()), who
    assert _loads("delta") - in_place_before == 3
    # the whole version once, then every delta alone
    assert read == [(whole, None, False), (2, whole, False), (3, 2, False), (4, 3, False)]
    # an operator's rollback to v2: its chain does not pass through v4, so it is read down to v1, and built anew
    await store.promote(2, reason="back")
    await holder.refresh()
    assert holder.model.version == 2 and read[-1] == (2, whole, True) and holder.model is not served
    assert served.version == 4  # the model replaced was left as it was (requests in flight finish on it)


async def _serving_a_whole_version(store: ModelStore, items: str) -> tuple[ModelHolder, OnlineLearner, int]:
    """A holder serving the whole version of a learner that took ``items`` (marked: its next delta is against it)."""
    holder = ModelHolder(store, poll_seconds=60, load_share=1.0)
    learner = OnlineLearner(model=ItemCooccurrence())
    for k, item in enumerate(items):
        learner.learn("ann", item, "like", None, None, 1.7e9 + k)
    whole = await store.checkpoint(None, learner.to_bytes(), {}, {}, {})
    assert whole is not None
    cooccurrence_delta.mark(learner)
    await holder.refresh()
    return holder, learner, whole


def _loads(how: str) -> float:
    return REGISTRY.get_sample_value("recstream_model_load_seconds_count", {"how": how}) or 0.0


async def test_a_delta_that_does_not_fit_is_refused_and_the_served_version_stays(store: ModelStore) -> None:
    """Signed, but pointed at another version than it was made against (the base field is not signed): refused."""
    holder = ModelHolder(store, poll_seconds=60, load_share=1.0)
    learner = OnlineLearner(model=ItemCooccurrence())
    for k, item in enumerate("abc"):
        learner.learn("ann", item, "like", None, None, 1.7e9 + k)
    whole = await store.checkpoint(None, learner.to_bytes(), {}, {}, {})
    cooccurrence_delta.mark(learner)
    learner.learn("bob", "a", "like", None, None, 1.8e9)
    second = await store.checkpoint(whole, learner.to_bytes(), {}, {}, {})  # whole too
    assert second is not None
    cooccurrence_delta.mark(learner)
    await holder.refresh()
    assert holder.model is not None and holder.model.version == second
    learner.learn("bob", "b", "like", None, None, 1.8e9 + 1)
    third = await _write_delta(store, learner, second)
    await store.redis.hset(store.keys.version(third), "base", whole)  # pointed at v1 instead
    await holder.refresh()  # no exception: logged, and v3 is not tried again
    assert holder.model.version == second and holder.refused_version == third
    assert holder.model.recommend("bob", 5, set()).source == "model"


async def test_a_delta_refused_in_place_changes_nothing_and_one_failing_part_way_is_read_whole(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, learner, whole = await _serving_a_whole_version(store, "abc")
    served = holder.model
    assert served is not None
    # signed and made against the version served, but for a base of other sizes: refused where it is applied
    learner.learn("bob", "a", "like", None, None, 1.8e9)
    header, arrays = cooccurrence_delta.parts(learner, base_version=whole)  # type: ignore[misc]
    header = {**header, "base_sizes": {"users": 7, "items": 7}}
    bad = await store.checkpoint(whole, codec.encode(header, arrays), {}, {}, {}, base=whole)
    assert bad is not None
    await holder.refresh()
    assert holder.model is served and served.version == whole and holder.refused_version == bad
    assert served.recommend("bob", 5, set()).source == "popular"  # nothing of the refused delta was applied
    # a right delta against the version served, which fails part-way in place (as out of memory would)
    learner.learn("cid", "b", "like", None, None, 1.8e9 + 1)
    made = cooccurrence_delta.parts(learner, base_version=whole)
    assert made is not None
    third = await store.checkpoint(bad, codec.encode(*made), {}, {}, {}, base=whole)  # made after v2, against v1
    assert third is not None

    def fail(*_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(type(served.model.rows), "set_entries", fail)  # type: ignore[attr-defined]
    await holder.refresh()
    monkeypatch.undo()
    # read whole instead (its chain down to v1), and built anew: what a whole load of the learner serves
    assert holder.model is not served and holder.model.version == third and not served.takes_deltas
    want = ServingModel.from_bytes(learner.to_bytes(), third)
    for who in ("ann", "bob", "cid", "nobody"):
        assert holder.model.recommend(who, 5, set()) == want.recommend(who, 5, set()), who


async def test_a_version_that_fails_to_load_is_not_blamed_on_redis(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that fails for another reason (here a version's metadata that is not JSON) keeps Redis counted as
    reachable: answers from held seen sets are not marked degraded for it, and it is logged once, not every poll."""
    learner = OnlineLearner()
    learner.learn("u1", "v1", "like", None, None)
    await store.checkpoint(None, learner.to_bytes(), {}, {}, {})
    version = await store.checkpoint(1, learner.to_bytes(), {}, {}, {})
    holder = ModelHolder(store, poll_seconds=60, load_share=1.0)
    await holder.start()  # serves the second version
    assert holder.redis_ok and holder.model is not None and holder.model.version == version
    await store.checkpoint(version, learner.to_bytes(), {}, {}, {})
    await store.redis.hset(store.keys.version(version + 1), "meta", "{not json")
    with caplog.at_level("WARNING", logger="api.model_holder"):
        for _ in range(3):
            try:
                await holder.refresh()
            except Exception as exc:  # noqa: BLE001 - as the holder's poll meets it
                holder._failed(exc)
    await holder.stop()
    assert holder.redis_ok, "a failure that is not Redis's marked Redis unreachable"
    assert holder.model.version == version  # still serving what it had
    failed = [r for r in caplog.records if "refreshing the model failed" in r.getMessage()]
    assert len(failed) == 1 and not any("cannot reach Redis" in r.getMessage() for r in caplog.records)

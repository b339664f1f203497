"""Snapshot HMAC key rotation (docs/security.md): sign with the current key, accept previous keys for reading."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from recstream import components
from recstream.settings import Settings
from store.keys import Keys
from store.model_store import ModelStore, SnapshotRefused
from store.signing import SnapshotSigner
from tests.conftest import Endpoint

K1, K2 = b"old-key-k1", b"new-key-k2"


def test_signs_with_the_current_key_and_verifies_current_or_previous() -> None:
    old, rotating, new = SnapshotSigner(K1), SnapshotSigner(K2, previous=[K1]), SnapshotSigner(K2)
    old_tag = old.sign(b"blob")
    assert rotating.verify(b"blob", old_tag) and not new.verify(b"blob", old_tag)
    assert rotating.sign(b"blob") == new.sign(b"blob") != old_tag  # never signed with a previous key
    assert old.verify(b"blob", rotating.sign(b"blob")) is False
    assert rotating.verify(b"blob!", old_tag) is False and rotating.verify(b"blob", None) is False
    assert rotating.verify(b"blob", b"") is False
    with pytest.raises(ValueError):
        SnapshotSigner(K2, previous=[b""])
    assert "old-key" not in repr(rotating) and "new-key" not in repr(rotating)


def test_settings_take_previous_keys_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_HMAC_KEY", K2.decode())
    monkeypatch.setenv("RECSTREAM_HMAC_PREVIOUS_KEYS", f'["{K1.decode()}", "older-k0"]')
    settings = Settings()
    assert [k.get_secret_value() for k in settings.hmac_previous_keys] == [K1.decode(), "older-k0"]
    assert K1.decode() not in repr(settings) and K2.decode() not in repr(settings)
    signer = components.snapshot_signer(settings)
    assert signer.verify(b"x", SnapshotSigner(K1).sign(b"x")) and signer.verify(
        b"x", SnapshotSigner(b"older-k0").sign(b"x")
    )
    assert signer.sign(b"x") == SnapshotSigner(K2).sign(b"x")
    monkeypatch.delenv("RECSTREAM_HMAC_PREVIOUS_KEYS")
    assert Settings(hmac_key=SecretStr("k")).hmac_previous_keys == []


@pytest.mark.integration
async def test_rotation_through_model_store_in_real_redis(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    keys = Keys(f"rot-{uuid.uuid4().hex[:8]}")
    old_store = ModelStore(client, SnapshotSigner(K1), keys)
    rotating = ModelStore(client, SnapshotSigner(K2, previous=[K1]), keys)
    new_only = ModelStore(client, SnapshotSigner(K2), keys)
    try:
        v1 = await old_store.checkpoint(None, b"snapshot-from-k1", {}, {}, {})
        # Before the rotation is complete, a process with only K2 refuses the K1 snapshot…
        with pytest.raises(SnapshotRefused):
            await new_only.load(v1)
        # …while a process with K2 and previous [K1] loads it.
        loaded = await rotating.load_current()
        assert loaded is not None and loaded.version == v1 and loaded.blob == b"snapshot-from-k1"

        # New checkpoints are signed with K2: K2-only loads them, a K1-only process refuses them.
        v2 = await rotating.checkpoint(v1, b"snapshot-from-k2", {}, {}, {})
        tag = await client.hget(keys.version(v2), "tag")
        assert tag == SnapshotSigner(K2).sign(b"snapshot-from-k2")
        assert (await new_only.load_current()).blob == b"snapshot-from-k2"  # type: ignore[union-attr]
        with pytest.raises(SnapshotRefused):
            await old_store.load(v2)
        # Once current is signed with K2, K1 can be dropped; the old version stays unreadable to K2-only.
        with pytest.raises(SnapshotRefused):
            await new_only.load(v1)
    finally:
        stale = await client.keys(f"{keys.prefix}:*")
        if stale:
            await client.delete(*stale)
        await client.aclose()

"""API keys: hashing round trip, what each scope grants, the settings format, and `recstream keys create`."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydantic import ValidationError

from api.auth import AuthNotConfigured, KeyRing, hash_key, key_ring_from_settings, new_key, verify_key
from recstream.settings import ApiKeyEntry, Settings
from tests.conftest import run_cli


def test_a_key_verifies_against_its_hash_and_nothing_else_does() -> None:
    key = new_key()
    hashed = hash_key(key)
    assert verify_key(key, hashed)
    assert not verify_key(key[:-1], hashed)
    assert not verify_key(new_key(), hashed)
    assert key not in hashed


def test_each_hash_has_its_own_salt() -> None:
    key = new_key()
    first, second = hash_key(key), hash_key(key)
    assert first != second and verify_key(key, first) and verify_key(key, second)


def test_a_tampered_hash_does_not_verify() -> None:
    key = new_key()
    scheme, salt, digest = hash_key(key).split("$")
    other_salt = ("0" if salt[0] != "0" else "1") + salt[1:]
    assert not verify_key(key, f"{scheme}${other_salt}${digest}")
    with pytest.raises(ValueError, match="unknown API key hash scheme"):
        verify_key(key, f"md5${salt}${digest}")


def test_keys_are_long_random_tokens() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("rsk_") and len(k) >= 4 + 43 for k in keys)


def _entry(name: str, scopes: list[str], key: str) -> ApiKeyEntry:
    return ApiKeyEntry.model_validate({"name": name, "scopes": scopes, "hash": hash_key(key)})


def test_the_key_ring_names_the_holder_and_admin_implies_read_but_not_ingest() -> None:
    ingest, admin = new_key(), new_key()
    ring = KeyRing([_entry("backend", ["ingest"], ingest), _entry("ops", ["admin"], admin)])
    backend = ring.identify(ingest)
    assert backend is not None and backend.name == "backend" and backend.scopes == {"ingest"}
    ops = ring.identify(admin)
    assert ops is not None and ops.name == "ops" and ops.scopes == {"admin", "read"}
    assert ring.identify(new_key()) is None
    assert ring.identify("") is None
    assert ring.identify(ingest + "x" * 300) is None


def test_two_keys_with_one_name_are_refused() -> None:
    with pytest.raises(AuthNotConfigured, match="more than once"):
        KeyRing([_entry("ops", ["admin"], new_key()), _entry("ops", ["read"], new_key())])


def test_settings_read_keys_from_json_and_refuse_malformed_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    monkeypatch.setenv("RECSTREAM_API_KEYS", json.dumps([{"name": "a", "scopes": ["read"], "hash": hash_key(key)}]))
    ring = key_ring_from_settings(Settings())
    assert ring.identify(key) is not None
    for bad in (
        {"name": "a", "scopes": ["read"], "hash": key},  # the key itself instead of its hash
        {"name": "a", "scopes": ["write"], "hash": hash_key(key)},
        {"name": "a b", "scopes": ["read"], "hash": hash_key(key)},
        {"name": "a", "scopes": [], "hash": hash_key(key)},
    ):
        monkeypatch.setenv("RECSTREAM_API_KEYS", json.dumps([bad]))
        with pytest.raises(ValidationError):
            Settings()


def test_auth_is_on_by_default_and_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSTREAM_API_KEYS", raising=False)
    monkeypatch.delenv("RECSTREAM_AUTH_ENABLED", raising=False)
    settings = Settings()
    assert settings.auth_enabled
    with pytest.raises(AuthNotConfigured, match="recstream keys create"):
        key_ring_from_settings(settings)


def _keys_create(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", "create", *args)


def test_the_cli_prints_a_key_once_and_an_entry_whose_hash_verifies_it() -> None:
    done = _keys_create("--name", "mobile-backend", "--scopes", "ingest,read")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    key = next(line for line in lines if line.startswith("rsk_"))
    entry = json.loads(next(line for line in lines if line.startswith("{")))
    assert entry["name"] == "mobile-backend" and entry["scopes"] == ["ingest", "read"]
    assert verify_key(key, entry["hash"])
    assert done.stdout.count(key) == 1
    ring = KeyRing([ApiKeyEntry.model_validate(entry)])  # the printed line is what RECSTREAM_API_KEYS accepts
    assert ring.identify(key) is not None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--name", "x", "--scopes", "read,write"], "unknown scopes ['write']"),
        (["--name", "a b", "--scopes", "read"], "name"),
    ],
)
def test_the_cli_refuses_unknown_scopes_and_bad_names(args: list[str], says: str) -> None:
    done = _keys_create(*args)
    assert done.returncode == 2 and says in done.stderr
    assert "rsk_" not in done.stdout


def test_the_examples_in_api_auth_run() -> None:
    import doctest

    import api.auth

    results = doctest.testmod(api.auth)
    assert results.attempted > 0, "api.auth has no examples left to run"
    assert results.failed == 0

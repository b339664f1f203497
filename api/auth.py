"""API keys: generating them, hashing them for the settings, and recognising them on a request.

The service never stores a key, only ``sha256$<salt>$<digest>``: SHA-256 over a random 16-byte
salt followed by the key. A fast hash is enough because every key is 256 random bits
(``secrets.token_urlsafe(32)``); a slow KDF only protects guessable secrets such as passwords, and
here it would cost milliseconds on every request (docs/security.md). Digests are compared with
:func:`hmac.compare_digest`.

>>> key = new_key()
>>> hashed = hash_key(key)
>>> verify_key(key, hashed), verify_key(key + "x", hashed)
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from recstream.settings import ApiKeyEntry, Scope, Settings

log = logging.getLogger(__name__)

#: Prefix of every key: lets secret scanners (and people) recognise a leaked recstream key.
KEY_PREFIX = "rsk_"
#: Longer presented keys are refused before hashing.
MAX_KEY_LENGTH = 256
ALL_SCOPES: frozenset[Scope] = frozenset(("ingest", "read", "admin"))


class AuthNotConfigured(Exception):
    """Authentication is on but no API key is configured: the API must not start."""


def new_key() -> str:
    """A fresh random API key (256 bits), to be shown once to whoever will hold it."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _digest(salt: bytes, key: str) -> str:
    return hashlib.sha256(salt + key.encode()).hexdigest()


def hash_key(key: str, salt: bytes | None = None) -> str:
    """``sha256$<salt hex>$<digest hex>`` for the settings (``RECSTREAM_API_KEYS``)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return f"sha256${salt.hex()}${_digest(salt, key)}"


def verify_key(key: str, hashed: str) -> bool:
    """True when ``key`` is the key ``hashed`` was made from (constant-time comparison)."""
    scheme, salt_hex, digest = hashed.split("$")
    if scheme != "sha256":
        raise ValueError(f"unknown API key hash scheme {scheme!r}; expected sha256")
    return hmac.compare_digest(_digest(bytes.fromhex(salt_hex), key), digest)


def effective_scopes(scopes: Iterable[Scope]) -> frozenset[Scope]:
    """``admin`` implies ``read`` (an operator inspects what is served); nothing implies ``ingest``."""
    granted = frozenset(scopes)
    return granted | {"read"} if "admin" in granted else granted


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's configured name (never the key) and what it may do."""

    name: str
    scopes: frozenset[Scope]


ANONYMOUS = Principal("anonymous", ALL_SCOPES)


class KeyRing:
    """The configured keys; :meth:`identify` maps a presented key to its :class:`Principal`."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self.entries = list(entries)
        names = [e.name for e in self.entries]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise AuthNotConfigured(f"RECSTREAM_API_KEYS names {duplicated} more than once; names must be unique")

    def identify(self, presented: str) -> Principal | None:
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        found: ApiKeyEntry | None = None
        for entry in self.entries:  # check every entry: the time taken does not depend on which one matched
            if verify_key(presented, entry.hash) and found is None:
                found = entry
        return Principal(found.name, effective_scopes(found.scopes)) if found else None


def key_ring_from_settings(settings: Settings) -> KeyRing:
    """The key ring, or :class:`AuthNotConfigured` when auth is on without keys; warns when auth is off."""
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS OFF (RECSTREAM_AUTH_ENABLED=false): anyone who can reach this port can publish "
            "events, read recommendations and operate the gate. Use this only on a development machine."
        )
        return KeyRing([])
    if not settings.api_keys:
        raise AuthNotConfigured(
            "no API key is configured: set RECSTREAM_API_KEYS (create a key with "
            "`recstream keys create --name NAME --scopes ingest,read`), or set RECSTREAM_AUTH_ENABLED=false "
            "on a development machine"
        )
    return KeyRing(settings.api_keys)

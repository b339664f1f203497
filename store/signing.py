"""Authentication of snapshot bytes with HMAC-SHA256, checked before anything is decoded.

New snapshots are always signed with the current key; during a key rotation the previous
keys are still accepted for reading (docs/security.md, "Snapshot key rotation").

>>> signer = SnapshotSigner(b"k")
>>> tag = signer.sign(b"blob")
>>> signer.verify(b"blob", tag), signer.verify(b"blob!", tag)
(True, False)
>>> SnapshotSigner(b"k2", previous=[b"k"]).verify(b"blob", tag)
True
>>> SnapshotSigner(None, missing="no key is set").sign(b"blob")
Traceback (most recent call last):
...
store.signing.KeyMissing: no key is set
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def _tag(key: bytes, blob: bytes) -> bytes:
    return hmac.new(key, blob, hashlib.sha256).hexdigest().encode()


class KeyMissing(Exception):
    """No snapshot key is configured: nothing can be signed or verified (the message says which setting to set)."""


class SnapshotSigner:
    """Signs with ``key`` and verifies with it or any of ``previous``. With ``key`` None (none configured) it signs
    and verifies nothing: each raises :class:`KeyMissing` with ``missing``, so a command that only lists what Redis
    holds still runs."""

    def __init__(self, key: bytes | None, previous: Iterable[bytes] = (), missing: str = "no snapshot key") -> None:
        if key is not None and not key:
            raise ValueError("the snapshot HMAC key must not be empty")
        previous = tuple(previous)
        if not all(previous):
            raise ValueError("a previous snapshot HMAC key must not be empty")
        self._key = key
        self._previous = tuple(k for k in previous if k != key)
        self._missing = missing

    def __repr__(self) -> str:
        current = "no current key" if self._key is None else "1 current key"
        return f"<SnapshotSigner: {current}, {len(self._previous)} previous>"

    def _current(self) -> bytes:
        if self._key is None:
            raise KeyMissing(self._missing)
        return self._key

    def sign(self, blob: bytes) -> bytes:
        """The tag of ``blob`` under the current key (never a previous one)."""
        return _tag(self._current(), blob)

    def verify(self, blob: bytes, tag: bytes | None) -> bool:
        """True if ``tag`` is the tag of ``blob`` under the current key or any previous key.

        Every key is compared (constant time each, no early exit), so the time taken does not
        tell which key matched.
        """
        current = self._current()
        if not tag:
            return False
        ok = False
        for key in (current, *self._previous):
            ok |= hmac.compare_digest(_tag(key, blob), tag)
        return ok

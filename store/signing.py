"""Authentication of snapshot bytes with HMAC-SHA256, checked before anything is decoded.

New snapshots are always signed with the current key; during a key rotation the previous
keys are still accepted for reading (docs/security.md, "Snapshot key rotation").

>>> signer = SnapshotSigner(b"k")
>>> tag = signer.sign(b"blob")
>>> signer.verify(b"blob", tag), signer.verify(b"blob!", tag)
(True, False)
>>> SnapshotSigner(b"k2", previous=[b"k"]).verify(b"blob", tag)
True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def _tag(key: bytes, blob: bytes) -> bytes:
    return hmac.new(key, blob, hashlib.sha256).hexdigest().encode()


class SnapshotSigner:
    def __init__(self, key: bytes, previous: Iterable[bytes] = ()) -> None:
        if not key:
            raise ValueError("the snapshot HMAC key must not be empty")
        previous = tuple(previous)
        if not all(previous):
            raise ValueError("a previous snapshot HMAC key must not be empty")
        self._key = key
        self._previous = tuple(k for k in previous if k != key)

    def __repr__(self) -> str:
        return f"<SnapshotSigner: 1 current key, {len(self._previous)} previous>"

    def sign(self, blob: bytes) -> bytes:
        """The tag of ``blob`` under the current key (never a previous one)."""
        return _tag(self._key, blob)

    def verify(self, blob: bytes, tag: bytes | None) -> bool:
        """True if ``tag`` is the tag of ``blob`` under the current key or any previous key.

        Every key is compared (constant time each, no early exit), so the time taken does not
        tell which key matched.
        """
        if not tag:
            return False
        ok = False
        for key in (self._key, *self._previous):
            ok |= hmac.compare_digest(_tag(key, blob), tag)
        return ok

"""Authentication of snapshot bytes with HMAC-SHA256, checked before anything is decoded.

>>> signer = SnapshotSigner(b"k")
>>> tag = signer.sign(b"blob")
>>> signer.verify(b"blob", tag), signer.verify(b"blob!", tag)
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac


class SnapshotSigner:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the snapshot HMAC key must not be empty")
        self._key = key

    def sign(self, blob: bytes) -> bytes:
        return hmac.new(self._key, blob, hashlib.sha256).hexdigest().encode()

    def verify(self, blob: bytes, tag: bytes | None) -> bool:
        if not tag:
            return False
        return hmac.compare_digest(self.sign(blob), tag)

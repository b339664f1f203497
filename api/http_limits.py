"""A bound on a request's line and headers, which uvicorn's httptools protocol does not have.

uvicorn (0.54, httptools) reads a request's URL and headers whole, however long, before the app sees them: one
unauthenticated ``GET /healthz`` with a 100 MB header took the API from 154 to 345 MB, and a 100 MB URL took ~24 s
of the event loop (the pieces are joined as they come). The body limit (``RECSTREAM_MAX_BODY_BYTES``,
``api.hygiene.BodyLimitMiddleware``) runs in the app, too late for them. :class:`HeadLimitedHttpTools` counts the
bytes of the reads after which a request's head is still incomplete, and past ``RECSTREAM_MAX_HEADER_BYTES`` answers
``431`` and closes the connection: what a head holds is bounded by the limit plus one read (asyncio reads up to
256 KiB at a time), and a head that ends within a read is never refused. It counts whole reads: a read that ends one
request's body and begins the next one's head (HTTP pipelining, which clients hardly use) counts as head.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from recstream import metrics
from recstream.settings import get_settings

#: The import path uvicorn is given (``http=``): its worker processes import it by name.
PROTOCOL = "api.http_limits:HeadLimitedHttpTools"


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request whose line and headers exceed ``RECSTREAM_MAX_HEADER_BYTES``
    (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = get_settings().max_header_bytes
        self._in_head = False  # a request's head began and is not complete
        self._head_bytes = 0  # read since it began
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # (closing: what was read after the refusal is dropped)
            return
        super().data_received(data)
        if self._in_head:  # a head still incomplete after this read
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse()

    def _refuse(self) -> None:
        metrics.HEADS_REFUSED.inc()
        message = (
            f"the request line and headers exceed {self.max_head_bytes} bytes (RECSTREAM_MAX_HEADER_BYTES); "
            "send a shorter URL and fewer or shorter headers"
        ).encode()
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                message,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
        self._refused = True

"""A bound on a request's line and headers, which uvicorn's httptools protocol does not have.

uvicorn (0.54, httptools) reads a request's URL and headers whole, however long, before the app sees them: one
unauthenticated ``GET /healthz`` with a 100 MB header took the API from 154 to 345 MB, and a 100 MB URL took ~24 s
of the event loop (the pieces are joined as they come). The body limit (``RECSTREAM_MAX_BODY_BYTES``,
``api.hygiene.BodyLimitMiddleware``) runs in the app, too late for them. :class:`HeadLimitedHttpTools` counts the
bytes of the reads after which a request's head is still incomplete, and past ``RECSTREAM_MAX_HEADER_BYTES`` answers
``431`` and closes the connection: what a head holds is bounded by the limit plus one read (asyncio reads up to
256 KiB at a time), and a head that ends within a read is never refused. What a request sends after its head that is
not body (a chunked body's framing, and its trailers, which httptools joins in memory as it does headers) has the
same bound, counted from the head's end. It counts whole reads: a read that ends one request and begins the next
(HTTP pipelining, which clients hardly use) counts as the next one's head. On a pipelined connection the 431 is
written after the answers to the requests before the refused one.
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
    (module doc); the same bound holds for what a request sends after its headers that is not body (chunk framing,
    trailers), which httptools also joins in memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = get_settings().max_header_bytes
        self._in_head = False  # a request's head began and is not complete
        self._head_bytes = 0  # read since it began (its head; after it, what was not body)
        self._in_message = False  # a request began and is not complete
        self._body_bytes = 0  # body handed on during the current read
        self._refused = False  # over the limit: nothing more is read
        self._refusal_owed = False  # ... and the 431 waits for the responses to the requests before it

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._in_message = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0  # (from now on: what is neither head nor body)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # (closing: what was read after the refusal is dropped)
            return
        after_head = self._in_message and not self._in_head  # the current request's head was complete before
        self._body_bytes = 0
        super().data_received(data)
        if self.transport.is_closing():  # (uvicorn refused it itself: a 400)
            return
        if self._in_head:  # a head still incomplete after this read
            self._head_bytes += len(data)
        elif after_head and self._in_message:  # within one request's body: what was not body
            self._head_bytes += len(data) - self._body_bytes
        else:
            return
        if self._head_bytes > self.max_head_bytes:
            self._refuse()

    def _responses_pending(self) -> bool:
        """Requests before the one whose head is being read are not answered yet (pipelined)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal_owed and not self._responses_pending():
            self._refusal_owed = False
            self._answer_431()

    def _refuse(self) -> None:
        metrics.HEADS_REFUSED.inc()
        self._refused = True
        if not self._in_head:  # framing or trailers after its head: the request is self.cycle, its app may run
            if self.pipeline or self.cycle.response_started:  # (no 431 in its place: the connection is closed)
                self.transport.close()
            else:
                self._answer_431()  # (its app, waiting for the rest of the body, learns the connection is gone)
        elif self._responses_pending():  # pipelined: the 431 goes after the answers to the requests before it
            self._refusal_owed = True
            self.transport.pause_reading()
        else:
            self._answer_431()

    def _answer_431(self) -> None:
        if self.transport.is_closing():
            return
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

"""The bound on a request's head (api/http_limits.py), read by read: uvicorn's protocol fed as a socket feeds it.

tests/test_security_api.py checks the same against a running API over real connections, where how a head is split
into reads is the kernel's to choose; here each read is chosen."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn import Config
from uvicorn.server import ServerState

from api.http_limits import HeadLimitedHttpTools
from recstream.settings import Settings

LIMIT = Settings().max_header_bytes


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:  # (uvicorn's flow control: nothing to pause, the test feeds each read)
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)


async def _ok(_scope: dict, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):  # the whole body read, as the API reads it
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection() -> tuple[HeadLimitedHttpTools, Transport]:
    protocol = HeadLimitedHttpTools(config=Config(_ok, log_level="warning"), server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _header(size: int) -> bytes:
    return b"X-Pad: " + b"x" * size + b"\r\n"


async def test_a_head_is_refused_once_the_reads_it_spans_pass_the_limit() -> None:
    protocol, transport = _connection()
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: h\r\n" + _header(LIMIT // 2))
    protocol.data_received(_header(LIMIT // 2 - 100))
    assert not transport.written and not transport.closed  # within the limit so far
    protocol.data_received(_header(LIMIT // 2))
    assert transport.written.startswith(b"HTTP/1.1 431 ") and transport.closed
    assert b"(RECSTREAM_MAX_HEADER_BYTES)" in transport.written
    protocol.data_received(b"\r\n")  # what comes after the refusal is dropped: the head is never complete
    assert not protocol.tasks  # (no request reaches the app)


async def test_each_request_of_a_connection_has_the_whole_limit() -> None:
    protocol, transport = _connection()
    for served in (1, 2):  # two heads of 70% of the limit, each over two reads (the first one incomplete)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: h\r\n" + _header(LIMIT * 6 // 10))
        protocol.data_received(_header(LIMIT // 10) + b"\r\n")
        await asyncio.wait_for(_until(lambda n=served: transport.written.count(b"HTTP/1.1 200 ") >= n), 30)
    assert b" 431 " not in transport.written and not transport.closed
    assert transport.written.count(b"HTTP/1.1 200 ") == 2


async def test_a_body_is_not_counted_as_head() -> None:
    protocol, transport = _connection()
    body = b"y" * (4 * LIMIT)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
    for start in range(0, len(body), LIMIT // 2):
        protocol.data_received(body[start : start + LIMIT // 2])
    await asyncio.wait_for(_until(lambda: b"HTTP/1.1 200 " in transport.written), 30)
    assert not transport.closed


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)

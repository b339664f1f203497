"""The bound on a request's head (api/http_limits.py), read by read: uvicorn's protocol fed as a socket feeds it.

tests/test_security_api.py checks the same against a running API over real connections, where how a head is split
into reads is the kernel's to choose; here each read is chosen."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn import Config
from uvicorn.server import ServerState

from api.http_limits import HeadLimitedHttpTools
from recstream import metrics
from recstream.settings import Settings

LIMIT = Settings().max_header_bytes


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:  # as asyncio's: the protocol learns the connection is lost, soon after
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

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


def _connection(app: Any = _ok) -> tuple[HeadLimitedHttpTools, Transport]:
    protocol = HeadLimitedHttpTools(config=Config(app, log_level="warning"), server_state=ServerState(), app_state={})
    transport = Transport()
    transport.protocol = protocol
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


async def test_a_chunked_body_is_read_but_trailers_over_the_limit_are_refused() -> None:
    protocol, transport = _connection()
    head = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    protocol.data_received(head)
    for _ in range(4 * LIMIT // 4096):  # a body of 4 times the limit, in chunks of 4 KiB, one a read
        protocol.data_received(b"1000\r\n" + b"y" * 4096 + b"\r\n")
    protocol.data_received(b"0\r\n\r\n")
    await asyncio.wait_for(_until(lambda: b"HTTP/1.1 200 " in transport.written), 30)
    assert not transport.closed
    protocol.data_received(head + b"1\r\ny\r\n0\r\nX-Trailer: ")  # then a trailer that never ends
    for _ in range(3):
        protocol.data_received(b"t" * (LIMIT // 2))
    assert b"HTTP/1.1 431 " in transport.written and transport.closed


async def test_on_a_pipelined_connection_the_431_comes_after_the_answers_before_it() -> None:
    answer = asyncio.Event()

    async def slow(_scope: dict, receive: Any, send: Any) -> None:
        await answer.wait()
        await _ok(_scope, receive, send)

    protocol, transport = _connection(slow)
    protocol.data_received(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\n" + _header(LIMIT))
    protocol.data_received(_header(LIMIT))  # over the limit while /first is not answered yet
    await asyncio.sleep(0)
    assert not transport.written and not transport.closed  # nothing yet: /first is answered first
    answer.set()
    await asyncio.wait_for(_until(lambda: transport.closed), 30)
    assert transport.written.startswith(b"HTTP/1.1 200 ")
    assert transport.written.index(b"HTTP/1.1 431 ") > transport.written.index(b"HTTP/1.1 200 ")


async def test_a_request_uvicorn_refuses_itself_gets_its_400_alone() -> None:
    protocol, transport = _connection()
    refused = metrics.HEADS_REFUSED._value.get()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"x" * (2 * LIMIT) + b"\x01")
    assert transport.written.startswith(b"HTTP/1.1 400 ") and b" 431 " not in transport.written
    assert metrics.HEADS_REFUSED._value.get() == refused  # (not counted as ours)


async def test_the_head_and_what_follows_it_each_have_the_whole_limit() -> None:
    protocol, transport = _connection()
    framing = b"1\r\ny\r\n" * (LIMIT * 6 // 10 // 5)  # one-byte chunks: 5 bytes of framing each, 60% of the limit
    # a head of 70% of the limit over two reads, then framing of 60%: neither over the limit on its own
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n" + _header(LIMIT * 6 // 10))
    protocol.data_received(_header(LIMIT // 10) + b"\r\n")
    protocol.data_received(framing)
    protocol.data_received(b"0\r\n\r\n")
    await asyncio.wait_for(_until(lambda: transport.written.count(b"HTTP/1.1 200 ") == 1), 30)
    # the next request's head: 70% again, after the last one's framing
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: h\r\n" + _header(LIMIT * 6 // 10))
    protocol.data_received(_header(LIMIT // 10) + b"\r\n")
    await asyncio.wait_for(_until(lambda: transport.written.count(b"HTTP/1.1 200 ") == 2), 30)
    assert b" 431 " not in transport.written and not transport.closed


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)

"""A closed-loop HTTP load generator run as a separate process.

``python -m bench.load URL[,URL...] SECONDS [API_KEY] [--connections N]``

``N`` keep-alive connections (spread round-robin over the URLs, e.g. two API processes on two
ports), each sending requests back to back for a fixed time after a short warm-up; prints JSON
with the request count, errors, requests/s and latency percentiles in milliseconds. A ``{user}``
in a URL is replaced, request by request, by ``u0``, ``u1``, ... ``u{users-1}`` in turn.

The client is a minimal HTTP/1.1 client on asyncio streams (uvloop when installed): a Python
client as heavy as the server would measure itself, not the server. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length bodies only); return its status code."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by bench.load")
    if length:
        await reader.readexactly(length)
    return int(status_line[9:12])


class _Target:
    def __init__(self, url: str, api_key: str | None, users: int) -> None:
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise SystemExit("bench.load only targets http://127.0.0.1:PORT")
        self.host, self.port = parts.hostname, parts.port
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        template = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}\r\n"
        if "{user}" in template:
            self.requests = [template.replace("{user}", f"u{i}").encode() for i in range(users)]
        else:
            self.requests = [template.encode()]


class _Gate:
    """Connections report ready after their warm-up; the clock starts once all have."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.start = asyncio.Event()
        self.deadline = 0.0

    def report_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.expected:
            self.all_ready.set()


async def _connection(target: _Target, offset: int, warmup: int, gate: _Gate) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    requests, n = target.requests, len(target.requests)
    latencies: list[float] = []
    errors = 0
    i = offset
    try:
        for _ in range(warmup):
            writer.write(requests[i % n])
            i += 1
            await _read_response(reader)
        gate.report_ready()
        await gate.start.wait()
        deadline = gate.deadline
        perf = time.perf_counter
        while True:
            began = perf()
            if began >= deadline:
                break
            writer.write(requests[i % n])
            i += 1
            status = await _read_response(reader)
            latencies.append(perf() - began)
            errors += status != 200
    finally:
        writer.close()
    return latencies, errors


async def _run(urls: list[str], seconds: float, api_key: str | None, connections: int, users: int) -> dict:
    targets = [_Target(url, api_key, users) for url in urls]
    gate = _Gate(connections)
    tasks = [asyncio.create_task(_connection(targets[c % len(targets)], c * 7, 20, gate)) for c in range(connections)]
    ready = asyncio.create_task(gate.all_ready.wait())
    await asyncio.wait([ready, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not gate.all_ready.is_set():  # a connection failed (its task is done) or the warm-up hung
        ready.cancel()
        for t in tasks:
            t.cancel()
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        raise SystemExit(f"bench.load: connections not ready: {errors[:1] or 'warm-up timed out'}")
    began = time.perf_counter()
    gate.deadline = began + seconds
    gate.start.set()
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    latencies = sorted(lat for lats, _ in results for lat in lats)
    errors = sum(e for _, e in results)
    n = len(latencies)
    return {
        "urls": urls,
        "connections": connections,
        "seconds": elapsed,
        "requests": n,
        "errors": errors,
        "requests_per_second": n / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p90_ms": _percentile(latencies, 0.90) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
    }


def run(
    urls: str | list[str], seconds: float, api_key: str | None = None, connections: int = 1, users: int = 2000
) -> dict:
    """Run the load in this process (the bench calls it through ``python -m bench.load``)."""
    if isinstance(urls, str):
        urls = urls.split(",")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    return runner(_run(urls, seconds, api_key, connections, users))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("urls", help="comma-separated http://127.0.0.1:PORT/... URLs; {user} cycles u0, u1, ...")
    parser.add_argument("seconds", type=float)
    parser.add_argument("api_key", nargs="?", default=None)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--users", type=int, default=2000, help="how many user ids {user} cycles through")
    args = parser.parse_args()
    print(json.dumps(run(args.urls, args.seconds, args.api_key, args.connections, args.users)))


if __name__ == "__main__":
    main()

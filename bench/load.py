"""A closed-loop HTTP load generator run as a separate process.

``python -m bench.load URL[,URL...] SECONDS [API_KEY] [--connections N] [--against URL[,URL...] [--rounds R]]``

``N`` keep-alive connections (spread round-robin over the URLs, e.g. two API processes on two
ports), each sending requests back to back for a fixed time after a short warm-up; prints JSON
with the request count, errors, requests/s and latency percentiles in milliseconds. A ``{user}``
in a URL is replaced, request by request, by ``u0``, ``u1``, ... ``u{users-1}`` in turn.

With ``--against``, a figure and its reference are measured over the same stretch of time: the
two groups of URLs take turns, ``R`` phases each (A B, B A, A B, ...), for ``SECONDS`` in all
each, and their latencies are pooled over their phases; it prints a list of two results. This VM's
speed drifts by up to 2x over a minute, so a figure measured right after its reference (as before
the twenty-second session) could land on another stretch: serving ratios moved by ±40% from one
run to the next.

The client is a minimal HTTP/1.1 client, an asyncio protocol that parses each response as its
bytes arrive (uvloop when installed): on 2 cores the client's CPU is taken from the servers, so a
client as heavy as the server would measure itself, not the server (``client_cpu_share`` in the
output: the share of one core it used while measuring). Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: :meth:`request` writes a request and waits for its response, which is parsed
    as its bytes arrive (Content-Length bodies only), without a stream reader's calls per header line."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # bytes no request waits for: the connection is not reused (see usable)
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        if b"\r\ntransfer-encoding:" in head:
            waiter.set_exception(ValueError("chunked responses are not supported by bench.load"))
            return
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buffer) < total:
            return
        status = int(buffer[9:12])
        del buffer[:total]
        waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionError("server closed the connection"))

    async def request(self, data: bytes) -> int:
        """Send one request; its response's status code."""
        if self.lost or self.transport is None:
            raise ConnectionError("server closed the connection")
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await waiter

    def usable(self) -> bool:
        """Open, and nothing read beyond the last response (a connection the server closed is not reused)."""
        transport = self.transport
        return not self.lost and transport is not None and not transport.is_closing() and not self.buffer

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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


#: A connection idle longer than this is not reused: uvicorn closes keep-alive connections after 5 s idle.
MAX_IDLE_SECONDS = 3.0


class _Pool:
    """Open keep-alive connections by port, reused from one phase to the next."""

    def __init__(self) -> None:
        self.free: dict[tuple[str, int], list[tuple[_Connection, float]]] = {}
        self.closed = False

    async def take(self, target: _Target) -> _Connection:
        free = self.free.get((target.host, target.port))
        while free:
            connection, since = free.pop()
            # not one the server closed or reset, or may be about to close (its keep-alive timeout)
            if time.monotonic() - since < MAX_IDLE_SECONDS and connection.usable():
                return connection
            connection.close()
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, target.host, target.port)
        return connection

    def give_back(self, target: _Target, connection: _Connection) -> None:
        if self.closed:
            connection.close()
            return
        self.free.setdefault((target.host, target.port), []).append((connection, time.monotonic()))

    def close(self) -> None:
        self.closed = True
        for connections in self.free.values():
            for connection, _ in connections:
                connection.close()
        self.free.clear()


async def _connection(
    pool: _Pool, target: _Target, offset: int, warmup: int, gate: _Gate
) -> tuple[list[float], int, int]:
    connection = await pool.take(target)
    request = connection.request
    requests, n = target.requests, len(target.requests)
    latencies: list[float] = []
    errors = 0
    i = offset
    try:
        for _ in range(warmup):
            await request(requests[i % n])
            i += 1
        gate.report_ready()
        await gate.start.wait()
        deadline = gate.deadline
        perf = time.perf_counter
        while True:
            began = perf()
            if began >= deadline:
                break
            status = await request(requests[i % n])
            i += 1
            latencies.append(perf() - began)
            errors += status != 200
    except BaseException:
        connection.close()
        raise
    pool.give_back(target, connection)  # only a connection that read its last response whole is reused
    return latencies, errors, i


async def _phase(
    pool: _Pool, targets: list[_Target], seconds: float, connections: int, offsets: list[int], warmup: int
) -> tuple[list[float], int, float, float]:
    """``connections`` connections (round-robin over ``targets``) for ``seconds`` once all are warm: their
    latencies, errors, the time the phase took and the CPU time this process used meanwhile. ``offsets`` (where
    each connection is in the user cycle) move on."""
    gate = _Gate(connections)
    tasks = [
        asyncio.create_task(_connection(pool, targets[c % len(targets)], offsets[c], warmup, gate))
        for c in range(connections)
    ]
    ready = asyncio.create_task(gate.all_ready.wait())
    await asyncio.wait([ready, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not gate.all_ready.is_set():  # a connection failed (its task is done) or the warm-up hung
        ready.cancel()
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        await _stop(tasks)
        raise SystemExit(f"bench.load: connections not ready: {errors[:1] or 'warm-up timed out'}")
    began, cpu = time.perf_counter(), time.process_time()
    gate.deadline = began + seconds
    gate.start.set()
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:  # a connection failed: stop the others before giving up
        await _stop(tasks)
        raise
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    for c, (_, _, at) in enumerate(results):
        offsets[c] = at
    return [lat for lats, _, _ in results for lat in lats], sum(e for _, e, _ in results), elapsed, cpu


async def _stop(tasks: list[asyncio.Task]) -> None:
    """Cancel the connections' tasks and wait for them: each closes its own connection."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def load_groups(
    groups: list[list[str]], seconds: float, api_key: str | None, connections: int, users: int, rounds: int
) -> list[dict]:
    """Each group of URLs loaded for ``seconds`` in all, in ``rounds`` phases; the groups take turns, in
    reverse order every other round (A B, B A, A B, ...), so that a drift of the machine's speed over the run
    falls on every group alike (a linear drift cancels over an even number of rounds). Latencies and requests
    are pooled over a group's phases; each phase's requests/s and p99 are kept too (a stall in one phase
    shows there)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    targets = [[_Target(url, api_key, users) for url in urls] for urls in groups]
    pool = _Pool()
    offsets = [[c * 7 for c in range(connections)] for _ in groups]
    sides = [_Side() for _ in groups]
    try:
        for r in range(rounds):
            order = range(len(groups)) if r % 2 == 0 else reversed(range(len(groups)))
            for g in order:
                warmup = 20 if r == 0 else 2  # each group's first phase warms the server up; later ones a little
                sides[g].add(*await _phase(pool, targets[g], seconds / rounds, connections, offsets[g], warmup))
    finally:
        pool.close()
    return [side.summary(urls, connections) for urls, side in zip(groups, sides, strict=True)]


@dataclass
class _Side:
    """One group's phases: their latencies pooled, errors and time summed, and each phase's req/s and p99."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    phase_rates: list[float] = field(default_factory=list)
    phase_p99_ms: list[float] = field(default_factory=list)

    def add(self, latencies: list[float], errors: int, seconds: float, cpu_seconds: float) -> None:
        self.latencies.extend(latencies)
        self.errors += errors
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.phase_rates.append(len(latencies) / seconds)
        self.phase_p99_ms.append(_percentile(sorted(latencies), 0.99) * 1e3)

    def summary(self, urls: list[str], connections: int) -> dict:
        latencies = sorted(self.latencies)
        n = len(latencies)
        return {
            "urls": urls,
            "connections": connections,
            "seconds": self.seconds,
            "requests": n,
            "errors": self.errors,
            "requests_per_second": n / self.seconds,
            # the load generator's own CPU while measuring: a share of one core, and per request
            "client_cpu_share": self.cpu_seconds / self.seconds,
            "client_cpu_us_per_request": self.cpu_seconds / n * 1e6 if n else float("nan"),
            "p50_ms": _percentile(latencies, 0.50) * 1e3,
            "p90_ms": _percentile(latencies, 0.90) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
            "phases_requests_per_second": self.phase_rates,
            "phases_p99_ms": self.phase_p99_ms,
        }


def _runner():  # type: ignore[no-untyped-def]
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run


def run(
    urls: str | list[str], seconds: float, api_key: str | None = None, connections: int = 1, users: int = 2000
) -> dict:
    """Load ``urls`` for ``seconds`` (the bench calls it through ``python -m bench.load``)."""
    if isinstance(urls, str):
        urls = urls.split(",")
    return _runner()(load_groups([urls], seconds, api_key, connections, users, 1))[0]


def run_paired(
    groups: list[list[str]],
    seconds: float,
    api_key: str | None = None,
    connections: int = 1,
    users: int = 2000,
    rounds: int = 4,
) -> list[dict]:
    """Load each group of URLs for ``seconds`` in all, the groups taking turns in ``rounds`` rounds (see
    :func:`load_groups`): a figure and its reference measured over the same stretch of time."""
    return _runner()(load_groups(groups, seconds, api_key, connections, users, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("urls", help="comma-separated http://127.0.0.1:PORT/... URLs; {user} cycles u0, u1, ...")
    parser.add_argument("seconds", type=float, help="seconds of load (for each group, with --against)")
    parser.add_argument("api_key", nargs="?", default=None)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--users", type=int, default=2000, help="how many user ids {user} cycles through")
    parser.add_argument(
        "--against", help="a second group of URLs, loaded in turns with the first (prints a list of two results)"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="with --against: turns each group takes (even: a linear drift cancels)"
    )
    args = parser.parse_args()
    if args.against:
        groups = [args.urls.split(","), args.against.split(",")]
        print(json.dumps(run_paired(groups, args.seconds, args.api_key, args.connections, args.users, args.rounds)))
    else:
        print(json.dumps(run(args.urls, args.seconds, args.api_key, args.connections, args.users)))


if __name__ == "__main__":
    main()

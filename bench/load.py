"""A closed-loop HTTP load generator run as a separate process: ``python -m bench.load URL SECONDS [API_KEY]``.

One keep-alive connection, requests back to back, for a fixed time; prints JSON with the
request count and latency percentiles in milliseconds. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def run(url: str, seconds: float, api_key: str | None = None) -> dict[str, float]:
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit("bench.load only targets 127.0.0.1")
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=5, headers=headers) as client:
        for _ in range(50):  # warm-up
            client.get(url)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = client.get(url)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "requests_per_second": n / seconds,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
    }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)))

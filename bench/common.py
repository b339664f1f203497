"""Shared pieces of the bench: event streams, waiting, the result rows the table is made of."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
#: MovieLens ratings (GroupLens "ml-latest-small"), kept in the repository with its README.txt (usage license)
MOVIELENS_RATINGS = PROJECT / "data" / "movielens-latest-small" / "ratings.csv"

#: PIDs of every process the bench started (services, API, worker, load generators), in the report,
#: so that a test can check each is gone once the bench has returned.
STARTED_PIDS: list[int] = []
#: If set, each PID the bench starts is also appended to this file (one a line) as it is started,
#: so whoever runs the bench can stop those processes by PID even if the bench itself has to be
#: killed before it writes its report (tests/test_bench_smoke.py does).
PIDS_FILE_ENV = "RECSTREAM_BENCH_PIDS_FILE"


def track(pid: int) -> int:
    STARTED_PIDS.append(pid)
    pids_file = os.environ.get(PIDS_FILE_ENV)
    if pids_file:
        with open(pids_file, "a") as f:
            f.write(f"{pid}\n")
    return pid


@dataclass
class Row:
    """One line of the table: a figure next to its reference from the same run, and the target."""

    part: str
    name: str
    figure: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    target: str = ""  # human-readable, e.g. ">= 20,000 ev/s and >= 0.5x ref"
    met: bool | None = None  # None: no target for this row

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference or not math.isfinite(self.reference):
            return None
        return self.figure / self.reference

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


class TimeBudget:
    """A part's time bound: ``left()`` seconds remain; ``check()`` raises once it is spent."""

    def __init__(self, seconds: float, part: str) -> None:
        self.part = part
        self.deadline = time.monotonic() + seconds

    def left(self, floor: float = 1.0) -> float:
        return max(floor, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def check(self, what: str) -> None:
        if self.expired():
            raise TimeoutError(f"{self.part}: time budget spent while {what}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def events(
    n: int,
    users: int,
    items: int,
    seed: int = 1,
    prefix: str = "b",
    start: datetime | None = None,
    span_seconds: float = 3000.0,
) -> list[bytes]:
    """``n`` events in the contract spread over ``span_seconds`` from ``start`` (default: an hour ago)."""
    rnd = random.Random(seed)
    kinds = ["view", "like", "like", "share", "skip"]
    start = start or datetime.now(UTC) - timedelta(hours=1)
    step = span_seconds / max(n, 1)
    out = []
    for i in range(n):
        user, item, kind = f"u{rnd.randrange(users)}", f"v{rnd.randrange(items)}", rnd.choice(kinds)
        watched, duration = watch_times(rnd, kind)
        event = {
            "event_id": f"{prefix}{i}",
            "user_id": user,
            "item_id": item,
            "type": kind,
            "ts": (start + timedelta(seconds=i * step)).isoformat(),
            "watch_seconds": watched,
            "item_duration_seconds": duration,
        }
        out.append(json.dumps(event).encode())
    return out


#: The share of a clip watched, by event type, for :func:`watch_times` (a skip is early, a like mostly late).
WATCHED_SHARE = {"skip": (0.0, 0.2), "view": (0.1, 1.0), "like": (0.5, 1.0), "share": (0.5, 1.0)}


def watch_times(rnd: random.Random, kind: str) -> tuple[float, float]:
    """(watch seconds, clip duration) of a bench event of type ``kind``: clips of 10-120 s, watched for a share
    of their length that depends on the type (:data:`WATCHED_SHARE`), to 0.1 s. Varied, as in a real stream: the
    gate's anomaly rule and the label rule see different watch ratios, not one constant."""
    duration = round(rnd.uniform(10.0, 120.0), 1)
    low, high = WATCHED_SHARE[kind]
    return round(duration * rnd.uniform(low, high), 1), duration


def run_json(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m ...`` in a child process (its own session) and parse the JSON it prints last."""
    process = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    track(process.pid)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        stop_process(process)
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {process.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the child's process group (it was started in its own session), then SIGKILL."""
    import signal

    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from ``/proc/PID/status`` (``VmRSS``)."""
    return _status_kib(pid, "VmRSS") * 1024


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int | str = "self") -> int:
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")

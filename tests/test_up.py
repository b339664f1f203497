"""The README's first command: ``recstream up --demo`` (what ``scripts/up.sh`` runs) on a fresh directory.

It must come up on its own (local broker, Redis, worker, API), print what a newcomer needs (key,
dashboard, the operator CLI's environment), show recommendations that change as the demo traffic
is learned, let the printed operator command read the run, and leave nothing running after SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from recstream.embedded import API_KEY_FILE, HMAC_KEY_FILE, REDIS_URL_FILE
from recstream.local_services import free_port, redis_ping
from tests.conftest import metric_value, run_cli

pytestmark = pytest.mark.integration

UP_SECONDS = 240  # a first run may fetch nothing here (the Kafka jars are fetched by scripts/test.sh)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], parent [1], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``, with its start time (a pid can be reused; the pair cannot)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _alive(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def test_up_runs_everything_shows_changing_recommendations_and_stops_clean(tmp_path: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "recstream.cli", "up", "--demo", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    spawned: dict[int, str] = {}
    leftovers: list[int] = []
    try:
        deadline = time.monotonic() + UP_SECONDS
        while not any(line.startswith("demo:") for line in lines):
            assert up.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "recstream up did not come up:\n" + "".join(lines)
            spawned.update(_descendants(up.pid))
            time.sleep(0.2)
        out = "".join(lines)
        api = f"http://127.0.0.1:{port}"
        # this run's API key is in an owner-only file the banner names, never in the output
        api_key_file = tmp_path / ".recstream" / API_KEY_FILE
        assert f"KEY=$(cat {api_key_file})" in out, out
        assert api_key_file.stat().st_mode & 0o777 == 0o600
        key = api_key_file.read_text().strip()
        assert key.startswith("rsk_") and key not in out
        assert f"{api}/dashboard" in out
        exports = dict(re.findall(r"(RECSTREAM_BROKER_URL)=(\S+)", out))
        # Redis has a password this run, in an owner-only file with its URL: never printed, never on a command line
        redis_url_file = tmp_path / ".recstream" / REDIS_URL_FILE
        assert f"RECSTREAM_REDIS_URL=$(cat {redis_url_file})" in out, out
        assert redis_url_file.stat().st_mode & 0o777 == 0o600
        exports["RECSTREAM_REDIS_URL"] = redis_url = redis_url_file.read_text().strip()
        password, address = re.fullmatch(r"redis://:([0-9a-f]{32})@(127\.0\.0\.1:\d+)/0", redis_url).groups()
        assert password not in out
        assert not any(password in " ".join(_cmdline(pid)) for pid in _descendants(up.pid))
        host, port_text = address.split(":")
        assert not redis_ping(host, int(port_text))  # refused without it
        assert redis_ping(host, int(port_text), password=password)
        # the snapshots are signed with this state directory's own key, never printed nor the public default
        key_file = tmp_path / ".recstream" / HMAC_KEY_FILE
        assert f"RECSTREAM_HMAC_KEY=$(cat {key_file})" in out, out
        assert key_file.stat().st_mode & 0o777 == 0o600
        exports["RECSTREAM_HMAC_KEY"] = key_file.read_text().strip()
        assert exports["RECSTREAM_HMAC_KEY"] not in out
        spawned.update(_descendants(up.pid))

        # the demo's traffic is learned: the same user's list changes, under newer model versions
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{api}/v1/users/user-0000/recommendations?k=5"
        seen_lists, versions = set(), set()
        deadline = time.monotonic() + 120
        while len(seen_lists) < 2 or len(versions) < 2:
            assert time.monotonic() < deadline, f"recommendations did not change: {seen_lists} {versions}"
            response = httpx.get(url, headers=headers, timeout=5)
            assert response.status_code in (200, 503), response.text  # 503: no model written yet
            body = response.json()
            if response.status_code == 200 and body["source"] == "model":
                seen_lists.add(tuple(item["item_id"] for item in body["items"]))
                versions.add(body["model_version"])
            time.sleep(0.5)

        # the worker's own metrics, at the URL the banner prints: what it learned
        worker_metrics = re.search(r"metrics\s+\S+/metrics \(API\), (http://127\.0\.0\.1:\d+/metrics) \(worker\)", out)
        assert worker_metrics is not None, out
        page = httpx.get(worker_metrics.group(1), timeout=5).text
        assert metric_value(page, "recstream_events_learned_total") > 0, page[:2000]

        # the operator command the banner prints reads this run
        listed = run_cli("models", "list", env={**os.environ, **exports})
        assert listed.returncode == 0, listed.stderr
        current = re.search(r"^\s*(\d+)\s+\*", listed.stdout, re.M)  # the row marked current
        assert current is not None, listed.stdout
        assert int(current.group(1)) >= max(versions), listed.stdout  # this run's, as far as it got
        spawned.update(_descendants(up.pid))

        # the worker killed (as by the OOM killer): `up` starts it again, the API serves on meanwhile, and the new
        # worker goes on from the last checkpoint (newer versions of the demo's traffic)
        worker_pid = next(pid for pid in _descendants(up.pid) if _cmdline(pid)[-1:] == ["worker"])
        before_kill = max(versions)
        os.kill(worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any(line.startswith("recstream up: the worker runs again") for line in lines):
            assert up.poll() is None, "recstream up stopped when its worker was killed:\n" + "".join(lines)
            assert time.monotonic() < deadline, "the worker was not started again:\n" + "".join(lines)
            time.sleep(0.2)
        spawned.update(_descendants(up.pid))
        deadline = time.monotonic() + 90  # (it first waits out the killed worker's lease: 10 s)
        while True:
            response = httpx.get(url, headers=headers, timeout=5)
            assert response.status_code == 200, response.text  # served all along
            if response.json()["model_version"] > before_kill and response.json()["source"] == "model":
                break
            assert time.monotonic() < deadline, "no newer version after the restart:\n" + "".join(lines)
            time.sleep(0.5)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)  # did not stop: do not leave it behind
            up.wait()
        deadline = time.monotonic() + 10
        while any(_alive(*p) for p in spawned.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = [pid for pid, started in spawned.items() if _alive(pid, started)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
                os.kill(pid, signal.SIGKILL)
    assert up.returncode == 0, "".join(lines)
    worker_logs = "".join(p.read_text() for p in (tmp_path / ".recstream" / "worker").glob("*.log"))
    assert "matrix products" in worker_logs  # (the log read is the worker's: its start is logged there)
    assert "development default" not in worker_logs
    assert len(spawned) >= 4, spawned  # broker, Redis, worker, API at least
    assert not leftovers, f"recstream up left processes running: {leftovers}"

"""Several API processes on one port (``recstream api --workers N``): they share the port, ``/metrics`` counts what
all of them did (those that died included), a process that dies is replaced, and a stop leaves none behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api import processes as api_processes
from recstream import local_services
from tests.clock import iso
from tests.conftest import TEST_API_KEY, run_cli, start_stack, stop_gracefully, wait_for
from tests.kafka_io import produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VERSION_SAMPLE = re.compile(r'^recstream_model_version\{component="api",pid="(\d+)"\} ([0-9.e+]+)$', re.MULTILINE)
#: What prometheus_client says of a process (from /proc), one series a live API process.
PROCESS_SERIES = ("process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
                  "process_cpu_seconds_total", "process_open_fds", "process_max_fds")  # fmt: skip
SERVED_SAMPLE = re.compile(r"^recstream_recommendations_served_total\{source=\"\w+\"\} ([0-9.e+]+)$", re.MULTILINE)


def _children(pid: int) -> set[int]:
    """The API processes uvicorn's supervisor ``pid`` runs (multiprocessing's spawned children; not its resource
    tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def _two_processes(supervisor: int) -> set[int]:
    """Wait until the supervisor runs its two API processes; their pids."""
    children = wait_for(lambda: len(c := _children(supervisor)) == 2 and c, 60, "two API processes")
    assert isinstance(children, set)
    return children


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def _versions(url: str) -> dict[int, float]:
    """The model version each API process serves, by pid, as ``/metrics`` (of whichever process answers) says."""
    return {int(pid): float(version) for pid, version in VERSION_SAMPLE.findall(_metrics(url))}


def _labelled_by_pid(url: str) -> dict[str, set[int]]:
    """The metrics whose samples carry a ``pid`` label (one series a process), with the pids they name."""
    found: dict[str, set[int]] = {}
    for name, pid in re.findall(r'^(\w+)\{[^}]*\bpid="(\d+)"', _metrics(url), re.MULTILINE):
        found.setdefault(name, set()).add(int(pid))
    return found


def _gc_collections(url: str) -> dict[str, float]:
    """``python_gc_collections_total`` by generation, as ``/metrics`` (of whichever process answers) says."""
    found = re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', _metrics(url), re.MULTILINE)
    return {generation: float(value) for generation, value in found}


def _served(url: str) -> float:
    return sum(float(value) for value in SERVED_SAMPLE.findall(_metrics(url)))


def _ingested(url: str) -> float:
    found = re.findall(r"^recstream_events_ingested_total ([0-9.e+]+)$", _metrics(url), re.MULTILINE)
    return sum(float(value) for value in found)


def _ingest(url: str, events: int) -> None:
    """``events`` events, one ``POST /v1/events`` each."""
    for i in range(events):
        event = {"event_id": f"i{i}", "user_id": "u1", "item_id": f"v{i}", "type": "view", "ts": iso(i)}
        answer = httpx.post(
            f"{url}/v1/events", json=[event], headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=10
        )
        assert answer.status_code == 202, answer.text


def _recommend(url: str, times: int) -> None:
    """``times`` recommendation requests, each on a connection of its own (each accepted by a process anew)."""
    for _ in range(times):
        answer = httpx.get(
            f"{url}/v1/users/u1/recommendations", headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text


def _without(paused: int, work: Callable[[], None]) -> None:
    """Run ``work`` while the API process ``paused`` is stopped: the other one accepts every connection it makes."""
    os.kill(paused, signal.SIGSTOP)
    try:
        work()
    finally:
        os.kill(paused, signal.SIGCONT)


def test_two_api_processes_share_a_port_and_their_metrics(service_env: dict[str, str], processes: list) -> None:
    env = {**service_env, "RECSTREAM_API_WORKERS": "2"}
    stack = start_stack(env, processes)
    api = stack.api
    try:
        supervisor = api.process.pid
        first = _two_processes(supervisor)
        a, b = sorted(first)
        environ = Path(f"/proc/{a}/environ").read_bytes().split(b"\0")
        shared = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
        assert Path(shared).is_dir()

        events = [
            {"event_id": f"w{i}", "user_id": f"u{i % 3}", "item_id": f"v{i % 7}", "type": "like", "ts": iso(i)}
            for i in range(40)
        ]
        produce_events(stack.broker, stack.topic, events)
        # Both processes load the model; the page of either lists both (each process's gauge, read from its file).
        wait_for(lambda: set(_versions(api.url)) == {a, b} and min(_versions(api.url).values()) >= 1, 60,
                 "both API processes to serve a model, in /metrics")  # fmt: skip

        for pid in (a, b):  # each process logs as the service does, its lines marked with its pid
            assert re.search(rf"\[{pid}\] INFO api.model_holder: serving model v\d+", api.log_path.read_text()), pid

        _without(a, lambda: _recommend(api.url, 5))  # answered by b alone
        _without(b, lambda: _recommend(api.url, 7))  # by a alone
        # Whichever process answers /metrics counts the other's requests too (one process's own count: 5 or 7).
        for _ in range(4):
            assert _served(api.url) == 12
            stats = stack.client.get("/v1/stats").json()  # (its latency table reads the same files)
            assert stats["api"]["/v1/users/{user_id}/recommendations"]["requests"] == 12

        os.kill(a, signal.SIGKILL)  # the supervisor starts another in its place
        replaced = wait_for(lambda: len(c := _children(supervisor) - {a}) == 2 and c, 60, "a process in place of a")
        assert isinstance(replaced, set) and b in replaced
        (c,) = replaced - {b}
        # The dead process's gauge goes (dropped by the one that replaced it); what it counted stays.
        wait_for(lambda: set(_versions(api.url)) == {b, c}, 60, "/metrics to list the live processes' versions")
        # one series a live process for the version served and for what /proc says of it, none for a gone one
        assert _labelled_by_pid(api.url) == {name: {b, c} for name in ("recstream_model_version", *PROCESS_SERIES)}
        page = _metrics(api.url)
        for pid in (b, c):  # each process's own memory (read from /proc/<pid>, not the answering process's)
            exported = float(re.search(rf'^process_resident_memory_bytes\{{pid="{pid}"\}} (\S+)$', page, re.M)[1])
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            assert 0.8 < exported / resident < 1.25, (pid, exported, resident)
        started = {int(pid): float(value) for pid, value in
                   re.findall(r'^process_start_time_seconds\{pid="(\d+)"\} (\S+)$', page, re.M)}  # fmt: skip
        assert started[c] > started[b]  # c took a's place after b had started
        assert re.search(r"^python_info\{", page, re.M)
        # Each process publishes its garbage collections, summed: at least the full collection each live one made as it
        # started (gc_tuning), b's and c's (a's too if it published before it was killed); the young ones counted too.
        wait_for(lambda: _gc_collections(api.url).get("2", 0) >= 2, 30, "b's and c's garbage collections in /metrics")
        assert set(_gc_collections(api.url)) == {"0", "1", "2"}
        assert re.search(r'^python_gc_objects_collected_total\{generation="0"\} \S+$', _metrics(api.url), re.M)
        assert _served(api.url) == 12
        _without(b, lambda: _recommend(api.url, 3))  # by c alone
        assert _served(api.url) == 15

        # SIGHUP: uvicorn replaces each process, the new one serving before the old one stops (which drops its gauge).
        os.kill(supervisor, signal.SIGHUP)
        renewed = wait_for(lambda: len(n := _children(supervisor)) == 2 and not n & {b, c} and n, 90,
                           "uvicorn to replace both API processes")  # fmt: skip
        wait_for(lambda: set(_versions(api.url)) == renewed, 60, "/metrics to list only the new processes' versions")
        assert _labelled_by_pid(api.url) == {name: renewed for name in ("recstream_model_version", *PROCESS_SERIES)}
        assert _served(api.url) == 15

        stop_gracefully(api)
        for pid in renewed:
            assert _gone(pid), f"API process {pid} outlived its stop"
        assert not Path(shared).exists(), "the metrics directory of the run was left behind"
    finally:
        stack.close()


def _gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie its parent has not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_the_api_processes_stop_when_their_supervisor_is_killed(service_env: dict[str, str], processes: list) -> None:
    api = local_services.start_api({**service_env, "RECSTREAM_API_WORKERS": "2"})
    processes.append(api)
    supervisor = api.process.pid
    children = _two_processes(supervisor)
    environ = Path(f"/proc/{min(children)}/environ").read_bytes().split(b"\0")
    shared = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    try:
        os.kill(supervisor, signal.SIGKILL)  # itself alone, not its process group: nobody stops the others
        api.process.wait(10)
        # each was asked to stop when its parent died (SIGTERM) and stops as on a stop, or, still starting then, found
        # its supervisor gone and exited: nothing left serving
        wait_for(lambda: all(_gone(pid) for pid in children), 30, "the API processes to stop after their supervisor")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api.url}/healthz", timeout=5)
        assert Path(shared).is_dir()  # the supervisor, killed, could not remove its metrics directory: the next does
        with api_processes._metrics_directory():
            assert not Path(shared).exists()
    finally:
        for pid in children:  # (the service's stop signals a group whose leader is gone no more)
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(shared, ignore_errors=True)  # (if the test failed before the next start removed it)


# An API process that is still importing the app when its supervisor dies: it waits until it has been reparented,
# then asks to follow the supervisor (too late for the kernel to signal that death), and must stop by itself.
_LATE_PROCESS = """
import os, sys, time
supervisor = int(os.environ[sys.argv[1]])
deadline = time.monotonic() + 30
while os.getppid() == supervisor and time.monotonic() < deadline:
    time.sleep(0.01)
from api.processes import follow_supervisor
follow_supervisor()
time.sleep(120)
"""
_SHORT_LIVED_SUPERVISOR = """
import os, subprocess, sys
env = {**os.environ, sys.argv[1]: str(os.getpid())}
late = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], env=env, stdout=subprocess.DEVNULL,
                        stderr=open(sys.argv[3], "w"))
print(late.pid, flush=True)
"""


def test_an_api_process_whose_supervisor_died_while_it_started_stops(tmp_path: Path) -> None:
    log = tmp_path / "late.log"
    supervisor = subprocess.run(
        [sys.executable, "-c", _SHORT_LIVED_SUPERVISOR, api_processes.SUPERVISOR_PID, _LATE_PROCESS, str(log)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    late = int(supervisor.stdout)
    try:
        wait_for(lambda: _gone(late), 60, "the API process to stop after learning its supervisor was gone")
        assert re.search(r"the API supervisor \(PID \d+\) is gone already: this process stops", log.read_text())
    finally:
        if not _gone(late):
            os.kill(late, signal.SIGKILL)


def test_a_process_that_fails_to_start_ends_the_run_with_status_3(service_env: dict[str, str]) -> None:
    # A setting only the API processes' start checks (the broker's SASL credentials), as with one process.
    for workers in ("1", "2"):
        env = {**os.environ, **service_env, "RECSTREAM_API_WORKERS": workers,
               "RECSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}  # fmt: skip
        result = run_cli("api", "--host", "127.0.0.1", "--port", "0", env=env, timeout=90)
        assert result.returncode == 3, (workers, result.stderr[-2000:])
        assert "needs RECSTREAM_KAFKA_SASL_USERNAME" in result.stderr, workers
        if workers == "2":
            assert re.search(r"API process \d+ failed to start \(its log above says why\)", result.stderr)


def test_a_metrics_directory_the_environment_names_must_be_empty(service_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "counter_12345.db").write_bytes(b"left from another run")
    env = {**os.environ, **service_env, "RECSTREAM_API_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = run_cli("api", "--host", "127.0.0.1", "--port", "0", env=env, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "must be an existing, empty directory" in result.stderr
    assert "Started parent process" not in result.stderr


def _named_metrics(service_env: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty directory, and the environment of two API processes that names it for their metrics."""
    named = tmp_path / "metrics"
    named.mkdir()
    return named, {**service_env, "RECSTREAM_API_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(named)}


def _start_two(env: dict[str, str], processes: list) -> local_services.LocalService:
    api = local_services.start_api(env)
    processes.append(api)
    return api


def test_an_empty_metrics_directory_the_environment_names_is_used_and_emptied_after(
    service_env: dict[str, str], processes: list, tmp_path: Path
) -> None:
    named, env = _named_metrics(service_env, tmp_path)
    api = _start_two(env, processes)
    supervisor = api.process.pid
    children = _two_processes(supervisor)
    # their series, and none of the supervisor's (it imported the metrics with the variable set: its files went)
    wait_for(lambda: _labelled_by_pid(api.url).get("process_resident_memory_bytes") == children, 60,
             "each API process's memory in /metrics")  # fmt: skip
    assert all(pids == children for pids in _labelled_by_pid(api.url).values())
    assert not list(named.glob(f"*_{supervisor}.db"))
    # a gauge file of a process that is not one of them (as a dead one's, its PID then another process's): no series
    shutil.copy(named / f"gauge_livemax_{min(children)}.db", named / f"gauge_livemax_{os.getpid()}.db")
    assert all(pids == children for pids in _labelled_by_pid(api.url).values())
    stop_gracefully(api)
    assert named.is_dir() and not list(named.iterdir())  # the next run may use it


def test_a_metrics_directory_the_environment_names_is_taken_again_after_its_supervisor_was_killed(
    service_env: dict[str, str], processes: list, tmp_path: Path
) -> None:
    named, env = _named_metrics(service_env, tmp_path)
    killed = _start_two(env, processes)
    children = _two_processes(killed.process.pid)
    _ingest(killed.url, 3)
    assert _ingested(killed.url) == 3
    assert (named / api_processes.LOCK_FILE).is_file()
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.process.wait(10)
    wait_for(lambda: all(_gone(pid) for pid in children), 30, "the API processes to stop after their supervisor")
    left = {path.name for path in named.iterdir()}
    assert api_processes.LOCK_FILE in left and any(name.startswith("counter_") for name in left), left
    # the next start empties it (the killed run's counters are not this run's) and serves
    again = _start_two(env, processes)
    _two_processes(again.process.pid)
    assert not any(f"_{pid}.db" in name for pid in children for name in os.listdir(named))
    assert _ingested(again.url) == 0
    _ingest(again.url, 2)
    assert _ingested(again.url) == 2
    stop_gracefully(again)
    assert not list(named.iterdir())


def test_a_metrics_directory_in_use_or_holding_foreign_files_is_refused(tmp_path: Path) -> None:
    named = tmp_path / "metrics"
    named.mkdir()
    (named / "counter_1.db").write_bytes(b"")
    os.close(api_processes._locked_file(str(named)))  # a supervisor that was killed: nobody holds its lock
    with api_processes._named_directory(str(named)):
        assert [path.name for path in named.iterdir()] == [api_processes.LOCK_FILE]
        with pytest.raises(api_processes.MetricsDirectoryRefused, match="used by another running recstream api"):
            with api_processes._named_directory(str(named)):
                pass
        assert (named / api_processes.LOCK_FILE).is_file()  # (the refused start left it to its owner)
    assert not list(named.iterdir())
    # a lock nobody holds, beside a file that is not a metrics file: not what a killed run leaves
    os.close(api_processes._locked_file(str(named)))
    (named / "notes.txt").write_text("mine")
    with pytest.raises(api_processes.MetricsDirectoryRefused, match="holds files that are not metrics"):
        with api_processes._named_directory(str(named)):
            pass
    assert (named / "notes.txt").read_text() == "mine"
    with pytest.raises(api_processes.MetricsDirectoryRefused, match="must be an existing directory"):
        with api_processes._named_directory(str(tmp_path / "missing")):
            pass


def test_a_start_removes_only_the_metrics_directories_of_supervisors_that_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    prefix = api_processes.DIRECTORY_PREFIX
    left, running, unlocked, elsewhere = (tmp_path / f"{prefix}{name}" for name in ("1-a", "2-b", "3-c", "4-d"))
    for directory in (left, running, unlocked, elsewhere):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")
    os.close(api_processes._locked_file(str(left)))  # its supervisor is gone: nobody holds its lock
    held = api_processes._locked_file(str(running))  # (a lock of another open file: as another process's)
    linked = tmp_path / f"{prefix}5-e"
    linked.symlink_to(elsewhere)
    try:
        with monkeypatch.context() as another_user:  # another user's directories are theirs to remove
            another_user.setattr(os, "getuid", lambda: os.geteuid() + 1)
            api_processes._remove_abandoned_directories()
            assert left.is_dir()
        with api_processes._metrics_directory():
            own = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            assert own.name.startswith(f"{prefix}{os.getpid()}-") and own.parent == tmp_path
            assert (own / api_processes.LOCK_FILE).is_file()
            assert not left.exists()
            # kept: the one whose supervisor runs, one with no lock file, a link (and what it links to)
            assert running.is_dir() and unlocked.is_dir() and linked.is_symlink() and elsewhere.is_dir()
        assert not own.exists()
    finally:
        os.close(held)


def test_several_api_processes_refuse_to_start_without_keys(service_env: dict[str, str]) -> None:
    env = {**os.environ, **service_env, "RECSTREAM_API_KEYS": "[]", "RECSTREAM_API_WORKERS": "2"}
    result = run_cli("api", "--host", "127.0.0.1", "--port", "0", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "not starting: no API key is configured" in result.stderr
    assert "Started parent process" not in result.stderr  # refused before uvicorn started anything


def test_workers_outside_the_settings_bounds_are_refused() -> None:
    for value in ("0", "65", "two"):
        result = run_cli("api", "--workers", value, timeout=60)
        assert result.returncode == 2, value
        assert f"argument --workers: expected a whole number from 1 to 64, got '{value}'" in result.stderr

"""``recstream up``'s supervision (recstream.embedded.supervise), on real child processes: a worker or API process
that exits is started again, each exit reported once, the exited one's log file closed; the broker or Redis exiting
ends the run."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from recstream import embedded, local_services


def _service(name: str, workdir: Path, code: str) -> local_services.LocalService:
    """A child process named ``name`` running ``code`` (Python), logging to ``workdir``."""
    return local_services._spawn(
        name,
        [sys.executable, "-c", code],
        url="",
        port=0,
        workdir=workdir,
        owns_workdir=False,
        log_name=f"{name}.log",
    )


#: How long a test lets supervision run before it gives up: its starters stop it once what it waits for happened.
DEADLINE_SECONDS = 60.0


def _run(started: list, starters: dict, stop: threading.Event) -> bool:
    """Supervise until ``stop`` (set by a starter once the test saw what it waits for) or the deadline, which
    fails the test."""
    timer = threading.Timer(DEADLINE_SECONDS, stop.set)
    timer.start()
    try:
        result = embedded.supervise(started, starters, stop)
        assert timer.is_alive(), f"supervision did not get there within {DEADLINE_SECONDS:.0f} s"
        return result
    finally:
        timer.cancel()
        for service in started:
            service.stop(timeout=5)


def test_an_exited_worker_is_started_again_and_the_old_one_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "restart_delay", lambda _previous, _ran: 0.0)
    spawned: list[local_services.LocalService] = []
    stop = threading.Event()

    def start() -> local_services.LocalService:
        spawned.append(_service("worker", tmp_path, "import sys; print('started'); sys.exit(3)"))
        if len(spawned) == 3:  # started again twice: enough
            stop.set()
        return spawned[-1]

    started = [start(), _service("redis", tmp_path, "import time; time.sleep(60)")]
    assert _run(started, {"worker": start}, stop) is True  # stopped on request, Redis ran all along
    err = capsys.readouterr().err
    assert len(spawned) == 3, spawned  # started again and again
    assert err.count("recstream up: worker exited (exit code 3); log tail:") == 2, err  # each exit reported once
    # every exited one was cleaned up: its log file closed, no longer among the live services
    assert all(s._log_file is None or s._log_file.closed for s in spawned)
    assert not set(spawned) & local_services._live


def test_a_start_that_fails_is_reported_once_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "restart_delay", lambda _previous, _ran: 0.0)
    tries: list[int] = []
    stop = threading.Event()

    def start() -> local_services.LocalService:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("recstream api on port 1 did not become ready within 30s")
        stop.set()  # it started on the third try: enough
        return _service("api", tmp_path, "import time; time.sleep(60)")

    started = [_service("api", tmp_path, "import sys; sys.exit(1)")]
    assert _run(started, {"api": start}, stop) is True
    err = capsys.readouterr().err
    assert len(tries) == 3 and started[0].is_running() is False  # (stopped by _run; it had started on the 3rd try)
    assert err.count("api exited (exit code 1)") == 1, err  # the exit reported once, not again after each failed start
    assert err.count("recstream up: the api did not start (recstream api on port 1 did not become ready") == 2


def test_the_broker_exiting_ends_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = [_service("broker", tmp_path, "import sys; sys.exit(1)")]
    assert _run(started, {}, threading.Event()) is False
    assert "recstream up: broker exited (exit code 1)" in capsys.readouterr().err

"""Operator commands pointed at a Redis or broker that is not there say so in one line, not a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from recstream.local_services import free_port
from tests.conftest import run_cli


def run_cli_against_nothing(*args: str) -> subprocess.CompletedProcess[str]:
    closed = free_port()  # nothing listens there
    env = {
        **os.environ,
        "RECSTREAM_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "RECSTREAM_BROKER_URL": f"kafka://127.0.0.1:{closed}",
    }
    return run_cli(*args, env=env)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["models", "list"], "cannot reach Redis"),
        (["status"], "cannot reach Redis"),
        (["quarantine", "list"], "cannot reach the broker"),
    ],
)
def test_an_unreachable_service_is_one_actionable_line(args: list[str], says: str) -> None:
    out = run_cli_against_nothing(*args)
    assert out.returncode == 2
    assert says in out.stderr
    assert "for a `recstream up` run, the one it printed" in out.stderr
    assert "Traceback" not in out.stderr
    assert "Unclosed" not in out.stderr  # a failed start is stopped too


@pytest.mark.integration
def test_a_redis_that_does_not_answer_in_time_is_not_called_unreachable() -> None:
    from recstream import local_services

    redis_server = local_services.start_redis()  # its own: paused below
    try:
        import redis

        redis.Redis.from_url(redis_server.url).execute_command("CLIENT", "PAUSE", "15000", "ALL")
        env = {**os.environ, "RECSTREAM_REDIS_URL": redis_server.url}
        out = run_cli("models", "list", env=env)
    finally:
        redis_server.stop()
    assert out.returncode == 2
    assert "did not answer in time" in out.stderr
    assert "cannot reach" not in out.stderr
    assert "Traceback" not in out.stderr

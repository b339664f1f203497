"""The worker's metrics endpoint: served where the settings say, and a port already taken (a second worker on the
same host with the same settings) stops the worker with a message naming the setting instead of a traceback."""

from __future__ import annotations

import socket

import httpx
import pytest

from recstream import local_services
from recstream.settings import Settings
from stream.app import serve_metrics


def test_the_metrics_endpoint_serves_on_its_port_and_none_on_port_zero() -> None:
    assert serve_metrics(Settings(worker_metrics_port=0)) is None
    port = local_services.free_port()
    server = serve_metrics(Settings(worker_metrics_port=port, worker_metrics_host="127.0.0.1"))
    assert server is not None
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200 and "recstream_events_consumed_total" in response.text
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_metrics_port_stops_the_worker_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            serve_metrics(Settings(worker_metrics_port=port, worker_metrics_host="127.0.0.1"))
    message = str(stopped.value)
    assert f"cannot serve its metrics on 127.0.0.1:{port}" in message
    assert "another worker on this host may hold it; give each worker its own RECSTREAM_WORKER_METRICS_PORT" in message


def test_an_address_the_host_does_not_have_names_the_settings_to_check() -> None:
    port = local_services.free_port()
    with pytest.raises(SystemExit) as stopped:
        serve_metrics(Settings(worker_metrics_port=port, worker_metrics_host="192.0.2.1"))  # TEST-NET-1: not ours
    message = str(stopped.value)
    assert f"cannot serve its metrics on 192.0.2.1:{port}" in message and "another worker" not in message
    assert "check RECSTREAM_WORKER_METRICS_HOST and RECSTREAM_WORKER_METRICS_PORT" in message

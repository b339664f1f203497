"""``POST /v1/gate/resume`` against a real API process and Redis: refused unless the guard is paused.

A request made while the worker learns would otherwise wait in Redis and cancel the model
guard's next pause as soon as it began.
"""

from __future__ import annotations

import pytest
import redis

from recstream import local_services
from store.keys import Keys
from tests.conftest import api_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_resume_is_refused_unless_the_worker_reported_the_guard_paused(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    api = local_services.start_api(service_env)
    processes.append(api)
    r = redis.Redis.from_url(service_env["RECSTREAM_REDIS_URL"])
    keys = Keys(service_env["RECSTREAM_REDIS_PREFIX"])
    try:
        with api_client(api) as client:
            nobody = client.post("/v1/gate/resume")
            assert nobody.status_code == 409, nobody.text
            unknown = {"state": None, "since": None, "reference": None, "reference_count": None}
            assert client.get("/v1/gate").json()["guard"] == unknown
            assert "no worker has reported" in nobody.json()["detail"]

            r.hset(keys.guard_status, mapping={"state": "learning", "since": ""})  # as a learning worker writes it
            learning = client.post("/v1/gate/resume")
            assert learning.status_code == 409, learning.text
            assert "learning is not paused" in learning.json()["detail"] and "'learning'" in learning.json()["detail"]
            assert r.get(keys.guard_resume) is None  # nothing left waiting for the next pause

            r.hset(keys.guard_status, mapping={"state": "paused", "since": "1764500000.0"})
            r.hset(keys.guard_status, mapping={"reference": "0.6125", "reference_count": "2000"})
            report = {"state": "paused", "since": 1764500000.0, "reference": 0.6125, "reference_count": 2000}
            assert client.get("/v1/gate").json()["guard"] == report  # numbers, not the strings Redis holds
            paused = client.post("/v1/gate/resume")
            assert paused.status_code == 202, paused.text
            assert paused.json() == {"status": "resume requested", "paused_since": "1764500000.0"}
            assert r.get(keys.guard_resume) == b"1764500000.0"  # names this pause; the worker takes it next
    finally:
        r.close()

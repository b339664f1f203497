"""The bench harness runs end to end on tiny sizes with real processes, and leaves nothing running.

No assertion is about absolute times: the figures of a 1-second run on a shared machine mean
nothing; what is checked is that every part produces its rows, with a reference next to each
figure, and that the JSON report (with the Markdown table) is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.__main__ import text_table
from bench.common import PIDS_FILE_ENV, Row
from bench.load import load_groups
from bench.load import run as load_run

PROJECT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # reused by another user's process: not ours
        return False
    return True


def _recorded_pids(pids_file: Path) -> list[int]:
    """The PIDs the bench wrote as it started each process (see ``PIDS_FILE_ENV``)."""
    return [int(line) for line in pids_file.read_text().split()] if pids_file.exists() else []


def _stop_bench(process: subprocess.Popen, pids_file: Path) -> None:
    """Stop the bench, then by PID every process it recorded that is still running."""
    if process.poll() is None:
        process.terminate()  # the bench turns SIGTERM into SystemExit: its finally blocks stop what it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in _recorded_pids(pids_file):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # each was started as the leader of its own process group


def test_table_shows_ratio_target_and_met() -> None:
    rows = [
        Row("ingest", "worker ev/s", 30_000.0, "ev/s", 40_000.0, "bare consume", ">= 0.5x", True),
        Row("serving", "p99 ms", 2.0, "ms", 1.0, "/healthz", "<= 1.5x", False),
        Row("top-K", "no reference", 1.0, "ms"),
    ]
    table = text_table(rows)
    assert "0.75" in table and "yes" in table
    assert "2.00" in table and "NO" in table
    assert rows[2].ratio is None


def test_load_generator_refuses_other_hosts() -> None:
    with pytest.raises(SystemExit, match=r"^bench\.load only targets http://127\.0\.0\.1:PORT$"):
        load_run("http://example.com:80/", 0.1)


async def _recording_server(paths: list[str], idle_close: float | None = None) -> tuple[asyncio.Server, list[int]]:
    """A tiny HTTP/1.1 keep-alive server on 127.0.0.1 that records each request's path (and counts the
    connections it accepted); with ``idle_close``, it closes a connection idle for that long, as uvicorn does."""
    opened = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened[0] += 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), idle_close)
                except TimeoutError:
                    break
                if not line:
                    break
                paths.append(line.split()[1].decode())
                while await reader.readline() not in (b"\r\n", b""):
                    pass
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), opened


async def test_paired_loads_go_on_through_the_user_cycle_and_past_closed_connections() -> None:
    """Each connection goes on where it was in the cycle of users from one phase to the next; a connection the
    server closed while the other group ran is replaced, not an error."""
    paths: list[str] = []
    server_a, opened_a = await _recording_server(paths, idle_close=0.15)
    server_b, _ = await _recording_server(paths, idle_close=0.15)
    port_a, port_b = (server.sockets[0].getsockname()[1] for server in (server_a, server_b))
    try:
        a, b = await load_groups(
            [[f"http://127.0.0.1:{port_a}/a/{{user}}"], [f"http://127.0.0.1:{port_b}/b"]], 1.6, None, 1, 10**6, 4
        )
    finally:
        server_a.close()
        server_b.close()
    users = [int(path.rsplit("/u", 1)[1]) for path in paths if path.startswith("/a/")]
    assert users == list(range(len(users)))  # u0, u1, ... on, across the phases
    assert a["errors"] == b["errors"] == 0 and a["requests"] > 0 and b["requests"] > 0
    # A's connection idled through B's phase (0.4 s, the server's limit 0.15 s), A B | B A | ...: 3 connections
    assert opened_a[0] >= 3


async def test_paired_loads_take_turns_on_the_same_connections() -> None:
    """``bench.load --against``: the two groups alternate A B, B A, ... (so a drift of the machine's speed falls
    on both sides of a ratio), each phase on connections kept from the one before."""
    paths: list[str] = []
    server, opened = await _recording_server(paths)
    port = server.sockets[0].getsockname()[1]
    try:
        a, b = await load_groups(
            [[f"http://127.0.0.1:{port}/a"], [f"http://127.0.0.1:{port}/b"]], 0.4, None, 3, 5, rounds=4
        )
    finally:
        server.close()
    blocks = [path for i, path in enumerate(paths) if i == 0 or paths[i - 1] != path]
    assert blocks == ["/a", "/b", "/a", "/b", "/a"]  # A B | B A | A B | B A
    assert opened[0] == 3  # three connections, reused by every phase
    for side, path in ((a, "/a"), (b, "/b")):
        assert len(side["phases_requests_per_second"]) == len(side["phases_p99_ms"]) == 4 and side["errors"] == 0
        assert side["requests"] == paths.count(path) - 3 * (20 + 3 * 2)  # warm-up requests are not counted
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        await load_groups([[f"http://127.0.0.1:{port}/a"]], 0.1, None, 1, 1, rounds=0)


async def test_load_generator_reads_responses_in_pieces_and_refuses_chunked_ones() -> None:
    """The client parses a response as its bytes arrive: headers and body split over many writes, any case of
    header names, a body of any length; a chunked response is refused with a clear error. Its own CPU is
    reported."""
    bodies = [b"", b"x", b"y" * 5_000]
    served: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (line := await reader.readline()) and b"/chunked" not in line:
                while await reader.readline() not in (b"\r\n", b""):
                    pass
                body = bodies[len(served) % len(bodies)]
                served.append(len(body))
                response = b"HTTP/1.1 201 Created\r\nServer: t\r\nCONTENT-LENGTH: %d\r\nX-A: b\r\n\r\n%s" % (
                    len(body),
                    body,
                )
                for start in range(0, len(response), 7):  # seven bytes at a time
                    writer.write(response[start : start + 7])
                    await writer.drain()
            if line:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        (result,) = await load_groups([[f"http://127.0.0.1:{port}/a"]], 0.3, None, 1, 1, rounds=1)
        with pytest.raises(SystemExit, match="chunked responses are not supported"):
            await load_groups([[f"http://127.0.0.1:{port}/chunked"]], 0.1, None, 1, 1, rounds=1)
    finally:
        server.close()
    assert result["requests"] > 0 and result["errors"] == result["requests"]  # 201, not 200: counted as errors
    assert len(served) == result["requests"] + 20 and set(served) == {0, 1, 5_000}
    assert 0 < result["client_cpu_share"] <= 1.5 and result["client_cpu_us_per_request"] > 0


@pytest.mark.integration
def test_bench_quick_run_of_serving_and_topk(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    pids_file = tmp_path / "started.pids"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--only", "serving,topk,memory", "--out", str(out)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", PIDS_FILE_ENV: str(pids_file)},
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
        # Checked before the teardown below stops any leftover, which would hide it.
        left_running = [pid for pid in _recorded_pids(pids_file) if _alive(pid)]
    finally:
        _stop_bench(process, pids_file)
    assert process.returncode == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert set(report["parts"]) == {"serving", "topk", "memory"}
    parts = {row["part"] for row in report["rows"]}
    assert parts == {"serving", "top-K", "memory"}
    for row in report["rows"]:
        assert row["figure"] > 0 and row["reference"] and row["reference"] > 0, row
    serving = report["parts"]["serving"]["1000"]
    assert serving["recommendations_1"]["errors"] == 0 and serving["recommendations_1"]["requests"] > 0
    assert serving["recommendations_32"]["connections"] == 32
    assert serving["recommendations_32_two_processes"]["requests"] > 0
    # each ratio's two sides measured in turns: two processes against one, recommendations against /healthz
    two, one = serving["recommendations_32_two_processes"], serving["recommendations_32_one_process"]
    assert len(two["urls"]) == 2 and one["urls"] == two["urls"][:1] and one["requests"] > 0
    assert len(serving["trivial_1"]["phases_requests_per_second"]) == len(one["phases_requests_per_second"]) > 1
    # then two processes on one port (--workers 2), each of which had served every user before
    shared = serving["recommendations_32_one_port"]
    assert shared["requests"] > 0 and shared["errors"] == 0 and serving["one_port_warm_rounds"] >= 2
    assert shared["urls"] != two["urls"][:1] and serving["recommendations_32_one_port_reference"]["urls"] == one["urls"]
    assert "targets met:" in stdout
    assert report["markdown_table"].startswith("| part |")
    # Every process it started (broker, Redis, API processes, load generators) is gone.
    assert len(report["started_pids"]) >= 5
    assert report["started_pids"] == _recorded_pids(pids_file)  # the teardown knew every one of them
    assert left_running == []


def test_a_parts_environment_does_not_reach_the_next_part(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ingest part's last run switches the gate off in this process (RunEnv.apply); the parts
    # after it (freshness, memory, replay) once measured without the gate because of it.
    monkeypatch.delenv("RECSTREAM_GATE_ENABLED", raising=False)
    monkeypatch.setenv("RECSTREAM_MODEL", "before")
    seen: list[str | None] = []

    def part(name: str, *_: object) -> tuple[dict, list[Row]]:
        seen.append(os.environ.get("RECSTREAM_GATE_ENABLED"))
        os.environ["RECSTREAM_GATE_ENABLED"] = "false"
        os.environ["RECSTREAM_MODEL"] = name
        return {}, []

    monkeypatch.setattr(bench_main, "_run_part_in_this_environment", part)
    for name in ("ingest", "freshness"):
        bench_main._run_part(name, None, None)  # type: ignore[arg-type]
    assert seen == [None, None]
    assert "RECSTREAM_GATE_ENABLED" not in os.environ and os.environ["RECSTREAM_MODEL"] == "before"


def test_the_memory_figure_measures_the_gate_even_when_the_environment_switches_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.memory import _measure_gate

    monkeypatch.setenv("RECSTREAM_GATE_ENABLED", "false")
    users, items = [f"user-{i}" for i in range(1_200)], [f"item-{i}" for i in range(1_200)]
    gate = _measure_gate(users, items, 1_200)
    # Every like came from a new user, so every behaviour rule that counts users holds each of them.
    assert gate["gate_events"] == 1_200
    assert gate["gate_tracked"] == {
        "UserRateRule": 1_200,
        "ItemSurgeRule users": 1_200,
        "ItemSurgeRule items": 1_200,
        "AnomalousBehaviourRule": 1_200,
    }
    assert gate["gate_held"] == {}


def test_the_memory_figure_counts_the_gates_fixed_filters_in_its_growth() -> None:
    """In a fresh process, as the bench measures it: the gate's part before any event (its established users'
    filter, sized by a setting, not by the ids; the previous generation's is made at the first rotation) is reported
    apart and counted in its growth."""
    from learner.gate.behaviour import EstablishedUsers

    code = (
        "import json; from bench.memory import _measure_gate; ids = [f'id-{i}' for i in range(1_200)]; "
        "print(json.dumps(_measure_gate(ids, ids, 1_200)))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    gate = json.loads(done.stdout.splitlines()[-1])
    filters = EstablishedUsers().nbytes  # (the default capacity, as the gate's: 6 MB)
    # (RSS, the heap trimmed before and after it is built: the filters and little else)
    assert 0.9 * filters <= gate["gate_fixed_bytes"] <= gate["gate_rss_growth_bytes"]


def test_freshness_leaves_probes_the_gate_held_out_of_its_percentiles_and_counts_them() -> None:
    from bench.freshness import PROBE_TIMEOUT, summarize

    probes = {
        "lags_s": [0.2, PROBE_TIMEOUT, 0.4, PROBE_TIMEOUT],
        "posts_s": [0.001] * 4,
        "ids": ["a", "b", "c", "d"],
        "missed": {"b": "user-b", "d": "user-d"},
        "held": {"b": "anomalous_behaviour"},  # d was not held: a slow probe, counted at the timeout
        "unsettled": [],
    }
    figures = summarize(probes)
    assert figures["held"] == 1 and figures["held_reasons"] == {"anomalous_behaviour": 1}
    assert figures["timeouts"] == 1 and figures["probes"] == 4
    assert figures["p50_s"] == 0.4 and figures["max_s"] == PROBE_TIMEOUT


def test_freshness_reads_the_apis_load_and_swap_histograms_between_two_reads() -> None:
    import httpx

    from bench.freshness import _api_histograms, _api_means

    pages = iter(
        [
            "# HELP recstream_model_load_seconds ...\n"
            'recstream_model_load_seconds_count{how="whole"} 1.0\n'
            'recstream_model_load_seconds_sum{how="whole"} 0.5\n'
            "recstream_model_swap_delay_seconds_count 1.0\n"
            "recstream_model_swap_delay_seconds_sum 0.25\n",
            'recstream_model_load_seconds_count{how="delta"} 4.0\n'
            'recstream_model_load_seconds_sum{how="delta"} 0.02\n'
            'recstream_model_load_seconds_count{how="whole"} 1.0\n'
            'recstream_model_load_seconds_sum{how="whole"} 0.5\n'
            "recstream_model_swap_delay_seconds_count 5.0\n"
            "recstream_model_swap_delay_seconds_sum 1.05\n",
        ]
    )
    client = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, text=next(pages))))
    before, after = _api_histograms(client, "http://127.0.0.1:1"), _api_histograms(client, "http://127.0.0.1:1")
    means = _api_means(before, after)
    assert means["delta_load_count"] == 4 and means["delta_load_mean_s"] == pytest.approx(0.005)
    assert means["swap_delay_count"] == 4 and means["swap_delay_mean_s"] == pytest.approx(0.2)
    assert means["whole_load_count"] == 0 and means["whole_load_mean_s"] != means["whole_load_mean_s"]  # nan


@pytest.mark.parametrize("case", ["user_rate", "item_surge users", "item_surge items", "anomalous_behaviour"])
def test_the_gate_record_figure_fills_the_table_it_measures(case: str) -> None:
    """``python -m bench.memory --records``: each case's rule keeps one record per like judged (none held, none
    forgotten), so the figure is bytes per record of a full table."""
    import math

    from bench.memory import measure_record

    r = measure_record(case, 20_000)
    assert r["records"] == 20_000
    assert math.isfinite(r["bytes_per_record"]) and r["cpu_us_per_event"] > 0


def test_the_hidden_items_bench_gives_each_case_next_to_its_reference() -> None:
    from bench.hidden import run as hidden_run

    rows = hidden_run(2_000, max_seconds=0.2)
    assert rows[0][0] == "nothing hidden (the reference)" and rows[0][2] == 1.0
    assert len(rows) == 6 and all(micros > 0 and ratio > 0 for _, micros, ratio in rows)
    assert all(abs(ratio - micros / rows[0][1]) < 1e-9 for _, micros, ratio in rows)


def test_the_erasure_bench_gives_each_case_next_to_the_bare_loop() -> None:
    from bench.erasure import run as erasure_run

    rows = erasure_run(2_000)
    assert rows[0][0] == "bare predict+learn loop" and rows[0][2] == 1.0
    assert len(rows) == 3 and all(micros > 0 and ratio > 0 for _, micros, ratio in rows)
    assert all(abs(ratio - micros / rows[0][1]) < 1e-9 for _, micros, ratio in rows)

"""Replay: events/s of ``recstream evaluate`` on the MovieLens stream, default model.

Runs ``recstream evaluate --movielens RATINGS --model <default>`` in a child process and reads its
report: the replay's own events/s (predict, rank the whole catalogue for HR@10 at every positive,
learn) and the gate's. Next to it, in the same run, the bare learner loop over the same events
(predict + learn, no ranking, no gate): what the model's learning alone costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MOVIELENS_RATINGS, PROJECT, Row, TimeBudget, stop_process, track
from learner.online_learner import OnlineLearner
from learner.registry import DEFAULT_MODEL, build_model
from recstream.evaluate import load_movielens

RATINGS = MOVIELENS_RATINGS
TARGET_EVENTS_PER_SECOND = 20_000


def bare_learner(ratings: Path, limit: int | None) -> tuple[float, int]:
    events = load_movielens(ratings, limit).events
    learner = OnlineLearner(model=build_model(DEFAULT_MODEL))
    started = time.perf_counter()
    for e in events:
        learner.learn(e.user, e.item, e.type, e.watch_seconds, e.item_duration_seconds, ts=e.ts)
    return len(events) / (time.perf_counter() - started), len(events)


def run(ratings: Path, budget: TimeBudget, limit: int | None = None) -> tuple[dict, list[Row]]:
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        report_path = Path(tmp) / "replay.json"
        argv = [sys.executable, "-m", "recstream.cli", "evaluate", "--movielens", str(ratings)]
        argv += ["--model", DEFAULT_MODEL, "--report", str(report_path)]
        if limit:
            argv += ["--limit", str(limit)]
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "RECSTREAM_GATE_ENABLED": "true"},  # the "gate + replay" rows need the gate
        )
        track(process.pid)
        try:
            _, err = process.communicate(timeout=budget.left())
        except BaseException:
            stop_process(process)
            raise
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"recstream evaluate failed (exit {process.returncode}): {err[-2000:]}")
        report = json.loads(report_path.read_text())
    model = report["models"][0]
    gate = report["gate"]
    bare_rate, bare_events = bare_learner(ratings, limit)
    replayed = report["events"]
    # Gate + replay, as one pipeline: every checked event passes the gate once, the accepted ones are replayed.
    pipeline_rate = gate["checked"] / (gate["seconds"] + replayed / model["events_per_second"])
    result = {
        "ratings": str(ratings),
        "model": DEFAULT_MODEL,
        "events_checked": gate["checked"],
        "events_replayed": replayed,
        "replay_events_per_second": model["events_per_second"],
        "gate_events_per_second": gate["events_per_second"],
        "gate_and_replay_events_per_second": pipeline_rate,
        "command_wall_seconds": wall,
        "command_events_per_second": gate["checked"] / wall,
        "bare_learner_events_per_second": bare_rate,
        "bare_learner_events": bare_events,
    }
    rows = [
        Row(
            "replay",
            f"evaluate ev/s, {DEFAULT_MODEL} (predict, HR@10, learn)",
            model["events_per_second"],
            "ev/s",
            bare_rate,
            "bare predict+learn loop",
            f">= {TARGET_EVENTS_PER_SECOND:,}",
            model["events_per_second"] >= TARGET_EVENTS_PER_SECOND,
        ),
        Row(
            "replay",
            "evaluate ev/s, gate + replay",
            pipeline_rate,
            "ev/s",
            bare_rate,
            "bare predict+learn loop",
        ),
        Row(
            "replay",
            "evaluate ev/s, whole command (load, gate, replay, report)",
            gate["checked"] / wall,
            "ev/s",
            bare_rate,
            "bare predict+learn loop",
        ),
    ]
    return result, rows

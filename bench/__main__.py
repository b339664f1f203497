"""``python -m bench [--only PARTS] [--quick]``: the measurement suite, every figure next to its reference.

Starts what it needs (local broker, Redis, worker, API processes) on 127.0.0.1, runs each part
within a time budget, prints a table (figure, reference measured in the same run, ratio, target,
met) and writes ``bench/results/latest.json`` (the figures, and the table in Markdown).
Every process it starts is stopped by PID, also on Ctrl-C or SIGTERM.

Parts (``--only ingest,serving``; default: all, about 9-12 minutes on 2 cores):

* ``ingest``: events/s through broker -> gate -> learn -> checkpoint for one worker, gate on and
  off, next to a bare aiokafka consume loop and a bare predict+learn loop; and the worker on a
  model grown by ``--grown-events``, next to the bare loop on a model grown alike and to its own
  start on an empty one (``bench/ingest.py``);
* ``serving``: top-10 recommendations, requests/s and p50/p99 at 1 and 32 connections for
  catalogues of 10k and 100k items, 1 and 2 API processes, next to ``/healthz`` in the same
  server (``bench/serving.py``);
* ``freshness``: ``POST /v1/events`` returning -> the event visible in that user's
  recommendations, under a steady background load, next to the same probe without load; again at
  the highest rate with a model grown by ``--grown-events`` (``bench/freshness.py``);
* ``topk``: time per top-10 over 1k-1M items, default and factor model (``bench/topk.py``);
* ``memory``: worker RSS (learner + quality gate) per million users+items against raw factor bytes
  (``bench/memory.py``);
* ``replay``: events/s of ``recstream evaluate`` on MovieLens (``bench/replay.py``).

Figures depend on the machine and on what else runs on it; the ratios to the references are what
to compare between machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.common import PROJECT, STARTED_PIDS, Row, TimeBudget

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
PARTS = ("ingest", "serving", "freshness", "topk", "memory", "replay")


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the ``finally`` blocks stop every process we started."""
    import signal

    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "ram_bytes": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "nice": os.nice(0),
        "load_average_at_start": os.getloadavg(),
    }


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _met(row: Row) -> str:
    return "" if row.met is None else ("yes" if row.met else "NO")


COLUMNS = ("part", "benchmark", "figure", "unit", "reference", "reference is", "ratio", "target", "met")


def _cells(row: Row) -> list[str]:
    ratio = row.ratio
    return [
        row.part,
        row.name,
        _fmt(row.figure),
        row.unit,
        _fmt(row.reference),
        row.reference_name,
        "-" if ratio is None else f"{ratio:.2f}",
        row.target,
        _met(row),
    ]


def text_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    numeric = {2, 4, 6}
    lines = []
    for c in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True))
            )
        )
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if i in (2, 4, 6) else "---" for i in range(len(COLUMNS))) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short runs (a smoke test, not figures)")
    parser.add_argument("--events", type=int, default=250_000, help="events per ingest run")
    parser.add_argument(
        "--grown-events",
        type=int,
        default=1_000_000,
        help="events learned before the grown-model ingest and freshness runs (0: skip them)",
    )
    parser.add_argument("--catalogues", default="10000,100000", help="serving catalogue sizes")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each serving load run")
    parser.add_argument("--rates", default="1000,5000", help="background events/s levels during the freshness probes")
    parser.add_argument("--probes", type=int, default=30, help="freshness probes under load (10 without)")
    parser.add_argument("--topk-sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--memory-ids", type=int, default=1_000_000, help="users + items for the memory part")
    parser.add_argument("--ratings", default=None, help="MovieLens ratings.csv for the replay part")
    parser.add_argument("--replay-limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--broker", choices=["auto", "kafka", "tansu"], default="auto")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the JSON report")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if args.quick:
        args.events = min(args.events, 3_000)
        args.grown_events = min(args.grown_events, 6_000)
        args.catalogues = "1000"
        args.seconds = min(args.seconds, 1.0)
        args.rates = "200"
        args.probes = min(args.probes, 3)
        args.topk_sizes = "1000,10000"
        args.memory_ids = min(args.memory_ids, 20_000)
        args.replay_limit = args.replay_limit or 5_000

    from bench.stack import Services

    report: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "parts": {},
        "errors": {},
    }
    rows: list[Row] = []
    services = Services(args.broker)
    started = time.perf_counter()
    try:
        for part in [p for p in PARTS if p in parts]:
            part_started = time.perf_counter()
            print(f"bench: {part} ...", file=sys.stderr, flush=True)
            try:
                result, part_rows = _run_part(part, args, services)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one failing part must not lose the others' figures
                report["errors"][part] = f"{type(exc).__name__}: {exc}"
                print(f"bench: {part} failed: {exc}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                continue
            result["seconds"] = time.perf_counter() - part_started
            report["parts"][part] = result
            rows.extend(part_rows)
            print(f"bench: {part} done in {result['seconds']:.0f}s", file=sys.stderr, flush=True)
    finally:
        report["machine"]["broker"] = services.broker_name()
        services.stop()
    report["seconds"] = time.perf_counter() - started
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["rows"] = [r.as_dict() for r in rows]
    report["started_pids"] = STARTED_PIDS
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["markdown_table"] = markdown_table(rows)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    m = report["machine"]
    print(
        f"\n{m['cpus']} x {m['cpu_model']}, {((m['ram_bytes'] or 0) / 2**30):.0f} GiB RAM, Python {m['python']}, "
        f"broker {m['broker']}; {report['seconds']:.0f}s; results in {out}\n"
    )
    print(text_table(rows))
    met = [r for r in rows if r.met is not None]
    print(f"\ntargets met: {sum(bool(r.met) for r in met)} of {len(met)}")
    for part, error in report["errors"].items():
        print(f"FAILED {part}: {error}")
    return 1 if report["errors"] else 0


def _run_part(part: str, args: argparse.Namespace, services) -> tuple[dict, list[Row]]:
    """Run one part in the environment the bench started with: a part's runs set ``RECSTREAM_*``
    variables in this process (``RunEnv.apply``, e.g. the last ingest run's gate switch), which
    would otherwise reach the next part's worker and subprocesses."""
    started_with = dict(os.environ)
    try:
        return _run_part_in_this_environment(part, args, services)
    finally:
        os.environ.clear()
        os.environ.update(started_with)


def _run_part_in_this_environment(part: str, args: argparse.Namespace, services) -> tuple[dict, list[Row]]:
    if part == "ingest":
        from bench import ingest

        # 1,200 s: on a slow stretch of this VM (bare loop ~12k ev/s) the four runs and the grown model's took
        # more than 900 s, and the grown model's figure was lost (twenty-second session)
        return ingest.run(services, args.events, TimeBudget(1_200, part), args.grown_events)
    if part == "serving":
        from bench import serving

        catalogues = [int(c) for c in args.catalogues.split(",")]
        return serving.run(services, catalogues, args.seconds, TimeBudget(240, part))
    if part == "freshness":
        from bench import freshness

        rates = [float(r) for r in args.rates.split(",")]
        idle = 10 if not args.quick else 2
        result, rows = freshness.run(services, rates, idle, args.probes, TimeBudget(200, part))
        if args.grown_events > 0:  # the highest rate again, with the model of a worker that has run a while
            try:
                result["grown_model"], grown_rows = freshness.run(
                    services, [max(rates)], idle, args.probes, TimeBudget(300, part), grow_events=args.grown_events
                )
                rows += grown_rows
            except Exception as exc:  # noqa: BLE001 - the young model's figures stand
                result["grown_model"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"bench: freshness on a grown model failed: {exc}", file=sys.stderr, flush=True)
        return result, rows
    if part == "topk":
        from bench import topk

        results = topk.run_sizes(tuple(int(s) for s in args.topk_sizes.split(",")))
        return {"sizes": results}, topk.rows(results)
    if part == "memory":
        from bench import memory

        return memory.run(args.memory_ids, TimeBudget(300, part))
    if part == "replay":
        from bench import replay

        ratings = Path(args.ratings) if args.ratings else replay.RATINGS
        return replay.run(ratings, TimeBudget(120, part), args.replay_limit)
    raise ValueError(part)


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())

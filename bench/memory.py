"""Memory: resident memory of the worker (learner + quality gate) per million users+items, against the raw factor bytes.

``python -m bench.memory --model implicit_mf --ids 1000000`` runs in a fresh process: it builds
the learner as the worker does (:func:`recstream.components.new_learner`, so the model, the
popularity counts and the progressive metrics), feeds it ``ids / 2`` likes that each bring a new
user and a new item (so ``ids`` users+items in all), and reads ``VmRSS`` from
``/proc/self/status`` before and after; then it serialises the checkpoint blob as the worker does
and reads the peak (``VmHWM``), then the RSS once the blob is freed and the heap trimmed as the
worker does after a checkpoint (:mod:`recstream.heap_trim`): what a worker keeps between
checkpoints. Prints JSON. The figure is the growth of RSS (what the users and
items cost, the process's fixed baseline left out), next to the raw bytes of their factors
(``(users + items) x n_factors x 4`` for float32, plus the item biases). The default model
(``item_cooccurrence``) has no factors: its figure is reported against the same raw size of a
32-factor model, for scale. The worker's other per-user state (the quality gate's windows) is
not included there: it is measured next, as its own figure (``gate_*`` in the JSON).

**The quality gate.** Then the gate is built as the worker builds it
(:func:`recstream.components.quality_gate`, default settings, switched on) and judges the same
``ids / 2`` likes, 500 at a time as the worker's chunks, stamped 50 µs apart (20,000 events/s, so
all of them within every window the gate keeps: its worst case, where no user is idle long
enough to be forgotten). Its events carry the learner's ids (read from its packed index as new
str objects, as a worker's events bring theirs); the gate's tables keep a copy of each id's text,
not the str. Its RSS growth
from before it is built (its fixed part, ~12 MB of filters sized by
``RECSTREAM_GATE_ITEM_SURGE_ESTABLISHED_CAPACITY``, included; ``gate_fixed_bytes`` in the JSON) to after a heap
trim is what the gate holds for that many active users and items; its tables are bounded by the
``RECSTREAM_GATE_*_MAX_USERS`` / ``_MAX_ITEMS`` settings and forget idle users
(docs/quality-gate.md). The worker's figure is the learner's plus the gate's. The gate is
measured in the learner's process, so it may reuse heap the learner freed (after
``implicit_mf`` and after ``item_cooccurrence`` it measured ~3% apart).

**One table at a time.** ``python -m bench.memory --records --ids 500000`` measures what one record
of each behaviour rule's table costs (``learner/gate/records.py``): each rule alone, in a process of
its own, judges ``ids`` likes that each bring a new user (on a new item for ``item_surge``'s items,
on one of 1,000 items for its users); RSS growth after a heap trim, per record (its entry and its
key's fingerprint included), next to the record's fields (8 bytes each, 4 for a float32 or int32 one).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

from bench.common import Row, TimeBudget, peak_rss_bytes, rss_bytes, run_json

TARGET_RATIO = 2.0
FACTORS = 32
GATE_EVENTS_PER_SECOND = 20_000
GATE_CHUNK = 500  # the worker judges a chunk of up to this many events at once (stream.processor)


def measure(model: str, ids: int) -> dict:
    os.environ["RECSTREAM_MODEL"] = model
    from recstream.components import new_learner
    from recstream.heap_trim import trim_heap
    from recstream.settings import Settings

    learner = new_learner(Settings())
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    for i in range(ids // 2):
        learner.learn(f"user-{i:07d}", f"item-{i:07d}", "like", None, None)
    learn_seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    peak_before_snapshot = peak_rss_bytes()
    blob = learner.to_bytes()
    peak = peak_rss_bytes()
    snapshot_bytes = len(blob)
    del blob
    gc.collect()
    untrimmed = rss_bytes()
    trim_heap()  # as the worker does after a checkpoint (recstream.heap_trim)
    after_checkpoint = rss_bytes()  # what a worker keeps between checkpoints (e.g. history arrays)
    m = learner.model
    gate = _measure_gate(m.users.ids, m.items.ids, ids // 2)
    n_users, n_items = len(m.users), len(m.items)
    n_factors = getattr(m, "n_factors", FACTORS)
    if hasattr(m, "user_factors"):
        raw = m.user_factors.nbytes + m.item_factors.nbytes + m.item_bias.nbytes
        raw_kind = "factors"
    else:
        raw = (n_users + n_items) * FACTORS * 4 + n_items * 4
        raw_kind = f"a {FACTORS}-factor float32 model of the same size (no factors)"
    return {
        "model": model,
        "users": n_users,
        "items": n_items,
        "n_factors": n_factors,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
        "peak_rss_bytes_before_snapshot": peak_before_snapshot,
        "peak_rss_bytes_with_snapshot": peak,
        "snapshot_bytes": snapshot_bytes,
        "rss_after_checkpoint_untrimmed_bytes": untrimmed,
        "rss_after_checkpoint_bytes": after_checkpoint,
        "raw_bytes": raw,
        "raw_kind": raw_kind,
        "growth_to_raw": (after - before) / raw,
        "learn_seconds": learn_seconds,
        **gate,
        "worker_growth_bytes": after_checkpoint - before + gate["gate_rss_growth_bytes"],
        "worker_growth_to_raw": (after_checkpoint - before + gate["gate_rss_growth_bytes"]) / raw,
    }


def _measure_gate(users: list[str], items: list[str], n_events: int) -> dict:
    """The worker's gate judging ``n_events`` likes, the i-th by ``users[i]`` on ``items[i]``: RSS
    before it is built, its growth (after a trim), its held counts, seconds, and how many users or
    items each of its behaviour rules then tracks."""
    from learner.gate.base import GateEvent
    from recstream.components import quality_gate
    from recstream.heap_trim import trim_heap
    from recstream.settings import Settings

    gc.collect()
    trim_heap()  # (as after it is built: else freed pages the imports left, trimmed then, would be taken off its size)
    before = rss_bytes()
    gate = quality_gate(Settings(gate_enabled=True))  # its figure, even if RECSTREAM_GATE_ENABLED=false is set
    gc.collect()
    trim_heap()
    fixed = rss_bytes() - before  # what it holds before any event: its established-users filters, mostly
    started = time.perf_counter()
    t0 = time.time()
    step = 1.0 / GATE_EVENTS_PER_SECOND
    for start in range(0, n_events, GATE_CHUNK):
        chunk = [
            GateEvent(f"e{i}", users[i], items[i], "like", t0 + i * step)
            for i in range(start, min(start + GATE_CHUNK, n_events))
        ]
        gate.check_chunk(chunk, chunk[-1].ts)
    seconds = time.perf_counter() - started
    gc.collect()
    trim_heap()
    growth = rss_bytes() - before
    tracked: dict[str, int] = {}
    for rule in gate.rules:
        name = type(rule).__name__
        if hasattr(rule, "__len__"):
            tracked[name] = len(rule)
        for table, size in getattr(rule, "tracked", {}).items():  # a rule of several tables (item_surge)
            tracked[f"{name} {table}"] = size
    result = {
        "gate_rss_before_bytes": before,
        "gate_rss_growth_bytes": growth,  # from before it was built to after a heap trim
        "gate_fixed_bytes": fixed,  # of which before any event (in the growth: sized by settings, not by ids)
        "gate_events": n_events,
        "gate_held": dict(gate.counts),
        "gate_seconds": seconds,
        "gate_tracked": tracked,
    }
    del gate
    return result


def run(ids: int, budget: TimeBudget, models: tuple[str, ...] = ("implicit_mf", "item_cooccurrence")):
    results = {}
    for model in models:
        budget.check(f"memory of {model}")
        results[model] = run_json(["-m", "bench.memory", "--model", model, "--ids", str(ids)], budget.left())
    rows = []
    for model, r in results.items():
        per_million = (r["users"] + r["items"]) / 1e6
        raw_per_million = r["raw_bytes"] / per_million
        is_factor = r["raw_kind"] == "factors"
        reference = "raw factor bytes" if is_factor else "raw bytes of 32 factors"
        rows.append(
            Row(
                "memory",
                f"RSS MB per 1M users+items before any checkpoint (growth's allocator leftovers in), {model}",
                r["rss_growth_bytes"] / per_million / 1e6,
                "MB",
                raw_per_million / 1e6,
                reference,
            )
        )
        # What the learner holds in a running worker: it checkpoints every 0.5 s by default and
        # trims its heap after one (at most every 5 s), so it is in this state, not the one above.
        steady = (r["rss_after_checkpoint_bytes"] - r["rss_before_bytes"]) / per_million
        rows.append(
            Row(
                "memory",
                f"RSS MB per 1M users+items, the learner after a checkpoint and heap trim, {model}",
                steady / 1e6,
                "MB",
                raw_per_million / 1e6,
                reference,
            )
        )
        rows.append(
            Row(
                "memory",
                "RSS MB of the quality gate for the same users+items, all active "
                f"({GATE_EVENTS_PER_SECOND:,} ev/s, none idle long enough to be forgotten)",
                r["gate_rss_growth_bytes"] / per_million / 1e6,
                "MB",
                raw_per_million / 1e6,
                reference,
            )
        )
        # The target's row: the worker is the learner and the gate.
        worker = r["worker_growth_bytes"] / per_million
        rows.append(
            Row(
                "memory",
                f"RSS MB per 1M users+items, worker (learner + quality gate), {model}",
                worker / 1e6,
                "MB",
                raw_per_million / 1e6,
                reference,
                f"<= {TARGET_RATIO:g}x ref" if is_factor else "",
                worker / raw_per_million <= TARGET_RATIO if is_factor else None,
            )
        )
        rows.append(
            Row(
                "memory",
                f"peak RSS MB at checkpoint, {model}",
                (r["peak_rss_bytes_with_snapshot"] - r["rss_before_bytes"]) / 1e6,
                "MB",
                r["raw_bytes"] / 1e6,
                "raw factor bytes" if is_factor else "raw bytes of 32 factors",
            )
        )
    return results, rows


#: --records: each case's rule, and the ids it keeps records of
RECORD_CASES = {
    "user_rate": ("UserRateRule", "users"),
    "item_surge users": ("ItemSurgeRule", "users"),
    "item_surge items": ("ItemSurgeRule", "items"),
    "anomalous_behaviour": ("AnomalousBehaviourRule", "users"),
}


def measure_record(case: str, n: int) -> dict:
    """One behaviour rule alone judging ``n`` likes, each of a new user (and, for a table of items, on a new
    item): RSS growth per record after a heap trim, and CPU per event."""
    from learner.gate import behaviour
    from learner.gate.base import GateEvent
    from recstream.heap_trim import trim_heap

    rule_name, table = RECORD_CASES[case]
    if table == "items":  # one user: the records are the items'
        users, items = ["user-0000000"] * n, [f"item-{i:07d}" for i in range(n)]
    else:
        users, items = [f"user-{i:07d}" for i in range(n)], [f"item-{i % 1000:07d}" for i in range(n)]
    events = [GateEvent(f"e{i}", users[i], items[i], "like", 1e9 + i / GATE_EVENTS_PER_SECOND) for i in range(n)]
    rule = getattr(behaviour, rule_name)()
    gc.collect()
    trim_heap()
    before = rss_bytes()
    started = time.process_time()
    for event in events:
        hold = rule.check(event, event.ts)
        if hold is None:
            rule.observe(event, event.ts)
        else:
            rule.observe_held(event, event.ts, hold)
    cpu = time.process_time() - started
    gc.collect()
    trim_heap()
    kept = getattr(rule, f"_{table}")
    records = len(kept)
    return {
        "case": case,
        "records": records,
        "bytes_per_record": (rss_bytes() - before) / max(records, 1),
        "field_bytes": 8 * kept.width + 4 * (kept.narrow_width + kept.ints),
        "cpu_us_per_event": cpu / n * 1e6,
    }


def records_rows(ids: int, budget: TimeBudget) -> list[Row]:
    rows = []
    for case in RECORD_CASES:
        budget.check(f"records of {case}")
        r = run_json(["-m", "bench.memory", "--record", case, "--ids", str(ids)], budget.left())
        rows.append(
            Row(
                "memory",
                f"bytes per record of the gate's {case} table, table entry included ({r['records']:,} records)",
                r["bytes_per_record"],
                "B",
                r["field_bytes"],
                "the record's fields",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="implicit_mf")
    parser.add_argument("--ids", type=int, default=1_000_000, help="users + items (--record(s): likes judged)")
    parser.add_argument("--records", action="store_true", help="bytes per record of each gate table, as a table")
    parser.add_argument("--record", choices=sorted(RECORD_CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        print(json.dumps(measure_record(args.record, args.ids)))
    elif args.records:
        for row in records_rows(args.ids, TimeBudget(600, "records")):
            print(f"{row.name}: {row.figure:,.0f} B, {row.figure / row.reference:.1f}x {row.reference_name}")
    else:
        print(json.dumps(measure(args.model, args.ids)))


if __name__ == "__main__":
    main()

"""Memory: resident memory of the worker's learner per million users+items, against the raw factor bytes.

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
not included.
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
    }


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
        # The target's row: what a running worker holds. It checkpoints every 0.5 s by default and
        # trims its heap after one (at most every 5 s), so it is in this state, not the one above.
        steady = (r["rss_after_checkpoint_bytes"] - r["rss_before_bytes"]) / per_million
        rows.append(
            Row(
                "memory",
                f"RSS MB per 1M users+items after a checkpoint and heap trim (a running worker), {model}",
                steady / 1e6,
                "MB",
                raw_per_million / 1e6,
                reference,
                f"<= {TARGET_RATIO:g}x ref" if is_factor else "",
                steady / raw_per_million <= TARGET_RATIO if is_factor else None,
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="implicit_mf")
    parser.add_argument("--ids", type=int, default=1_000_000, help="users + items")
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.ids)))


if __name__ == "__main__":
    main()

"""``python -m bench.topk``: time per top-10 request over catalogues of 1k to 1M items.

Two models, each through the API's own ranking path (:meth:`learner.serving.ServingModel.recommend`,
the user's 50 seen items excluded), in this process:

* the factor model (``implicit_mf``: float32 factor arrays, 32 factors), next to the bare
  matrix-vector product over the same arrays (the part no ranking can avoid);
* the default model (``item_cooccurrence``, learned from a synthetic stream in which every
  item is liked at least once and each user likes about five items), next to one
  ``np.argpartition`` over as many scores (the least any whole-catalogue ranking does).

Ratios are measured in the same run; the target (top-10 over 1M items <= 15 ms) is the
default model's.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from learner.base import ModelState
from learner.implicit_mf import ImplicitMF
from learner.online_learner import OnlineLearner
from learner.registry import DEFAULT_MODEL, build_model
from learner.serving import ServingModel

SIZES = (1_000, 10_000, 100_000, 1_000_000)
TARGET_MS_AT_1M = 15.0
SEEN = 50


def per_call_ms(fn, repeats: int, max_seconds: float = 3.0) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    done = 0
    while done < repeats and (time.perf_counter() - started) < max_seconds:
        fn()
        done += 1
    return (time.perf_counter() - started) / done * 1e3


def factor_model(n: int, factors: int = 32, users: int = 1_000, seed: int = 0) -> tuple[ServingModel, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = ModelState(
        kind=ImplicitMF.kind,
        params={"n_factors": factors, "lr": 0.2, "l2": 0.002, "negatives": 2, "init_scale": 0.1, "seed": 42},
        ids={"users": [f"u{i}" for i in range(users)], "items": [f"v{i}" for i in range(n)]},
        arrays={
            "user_factors": rng.normal(0, 0.1, (users, factors)).astype(np.float32),
            "item_factors": rng.normal(0, 0.1, (n, factors)).astype(np.float32),
            "item_bias": rng.normal(0, 0.1, n).astype(np.float32),
        },
    )
    model = ImplicitMF.from_state(state)
    popularity = rng.random(n).astype(np.float64)
    return ServingModel(1, model, [f"v{i}" for i in range(n)], popularity, 0), model.item_factors


def default_model(n: int, seed: int = 0) -> ServingModel:
    learner = OnlineLearner(model=build_model(DEFAULT_MODEL))
    rnd = random.Random(seed)
    users = max(10, n // 5)
    for i in range(n):
        learner.learn(f"u{rnd.randrange(users)}", f"v{i}", "like", None, None)
    for _ in range(min(n, 100_000)):  # a popular head, so co-occurrence rows of busy items are long
        learner.learn(f"u{rnd.randrange(users)}", f"v{min(int(rnd.paretovariate(1.2)), n) - 1}", "like", None, None)
    for i in range(10):  # the probe user: a full window of items, popular and not
        learner.learn("probe", f"v{i * (n // 10)}", "like", None, None)
    return ServingModel(1, learner.model, list(learner.popularity.items.ids), learner.popularity.counts.copy(), 0)


def run_sizes(sizes: tuple[int, ...] = SIZES, max_seconds: float = 3.0) -> list[dict]:
    out = []
    rng = random.Random(1)
    for n in sizes:
        seen = {f"v{rng.randrange(n)}" for _ in range(SEEN)}
        repeats = max(5, 2_000_000 // n)
        serving, items = factor_model(n)
        user = np.asarray(serving.model.user_vector("u7"))
        factor_ms = per_call_ms(lambda s=serving, seen=seen: s.recommend("u7", 10, seen), repeats, max_seconds)
        matvec_ms = per_call_ms(lambda i=items, u=user: i @ u, repeats, max_seconds)
        del serving, items
        built = time.perf_counter()
        serving = default_model(n)
        build_s = time.perf_counter() - built
        scores = np.random.default_rng(2).random(n)
        default_ms = per_call_ms(lambda s=serving, seen=seen: s.recommend("probe", 10, seen), repeats, max_seconds)
        select_ms = per_call_ms(lambda: np.argpartition(scores, -10)[-10:], repeats, max_seconds)  # noqa: B023
        assert serving.recommend("probe", 10, seen).source == "model"
        del serving
        out.append(
            {
                "items": n,
                "factor_top10_ms": factor_ms,
                "factor_matvec_ms": matvec_ms,
                "default_model": DEFAULT_MODEL,
                "default_top10_ms": default_ms,
                "argpartition_ms": select_ms,
                "default_build_seconds": build_s,
            }
        )
    return out


def rows(results: list[dict]):
    from bench.common import Row

    table = []
    for r in results:
        n = r["items"]
        is_target = n == 1_000_000
        table.append(
            Row(
                "top-K",
                f"top-10 ms, {n:,} items, {r['default_model']} (default)",
                r["default_top10_ms"],
                "ms",
                r["argpartition_ms"],
                "argpartition of n scores",
                f"<= {TARGET_MS_AT_1M:g} ms" if is_target else "",
                r["default_top10_ms"] <= TARGET_MS_AT_1M if is_target else None,
            )
        )
        table.append(
            Row(
                "top-K",
                f"top-10 ms, {n:,} items, implicit_mf",
                r["factor_top10_ms"],
                "ms",
                r["factor_matvec_ms"],
                "bare mat-vec",
                f"<= {TARGET_MS_AT_1M:g} ms" if is_target else "",
                r["factor_top10_ms"] <= TARGET_MS_AT_1M if is_target else None,
            )
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topk", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated catalogue sizes")
    args = parser.parse_args()
    results = run_sizes(tuple(int(s) for s in args.sizes.split(",")))
    print(
        f"{'items':>10}{'default ms':>12}{'argpart ms':>12}{'ratio':>8}{'factor ms':>12}{'mat-vec ms':>12}{'ratio':>8}"
    )
    for r in results:
        print(
            f"{r['items']:>10,}{r['default_top10_ms']:>12.3f}{r['argpartition_ms']:>12.3f}"
            f"{r['default_top10_ms'] / r['argpartition_ms']:>8.2f}{r['factor_top10_ms']:>12.3f}"
            f"{r['factor_matvec_ms']:>12.3f}{r['factor_top10_ms'] / r['factor_matvec_ms']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

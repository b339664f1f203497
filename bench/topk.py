"""``python -m bench.topk``: time per top-10 request over catalogues of 1k to 1M items.

Each figure is printed next to the bare matrix-vector product over the same float32 factors (the
part no ranking can avoid), measured in the same run; the ratio is the cost of masking the
user's seen items and selecting the top 10 (``learner.ranking``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from learner.ranking import scores_for_user, top_k


def per_call_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topk", description=__doc__.split("\n")[0])
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--seen", type=int, default=50, help="items the user already saw (excluded)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'items':>10}{'top-10 ms':>12}{'mat-vec ms':>12}{'ratio':>8}")
    for n in (1_000, 10_000, 100_000, 1_000_000):
        items = rng.normal(0, 0.1, (n, args.factors)).astype(np.float32)
        bias = rng.normal(0, 0.1, n).astype(np.float32)
        user = rng.normal(0, 0.1, args.factors).astype(np.float32)
        seen = rng.choice(n, size=min(args.seen, n), replace=False).tolist()
        repeats = max(5, 2_000_000 // n)
        full = per_call_ms(lambda: top_k(scores_for_user(user, items, bias), 10, exclude=seen), repeats)  # noqa: B023
        bare = per_call_ms(lambda: items @ user, repeats)  # noqa: B023
        print(f"{n:>10,}{full:>12.3f}{bare:>12.3f}{full / bare:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

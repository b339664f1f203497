"""``python -m bench.hidden``: a recommendation's ranking with items hidden (taken down by an operator), next to the
same ranking with nothing hidden, in this process.

The default model over 100,000 items (:func:`bench.topk.default_model`), its probe user's 50 seen items left out, top
10 through :meth:`learner.serving.ServingModel.recommend`: with 10, 1,000 and 10,000 random items hidden (one of them
the user's best), with the user's best 40 hidden (more than the slack: ranked again without every hidden item), and
with 10,000 hidden left out of the ranking itself (what the slack avoids), each as a ratio to nothing hidden.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from bench.topk import SEEN, default_model, per_call_ms
from learner.id_index import IdIndex

REPEATS = 3000


def run(n: int = 100_000, max_seconds: float = 2.0) -> list[tuple[str, float, float]]:
    """(case, µs a ranking, ratio to nothing hidden) for each case."""
    serving = default_model(n)
    rng = random.Random(1)
    seen = {f"v{rng.randrange(n)}" for _ in range(SEEN)}
    index: IdIndex = serving.item_index
    seen_rows = np.fromiter(index.rows(seen), np.int64)

    def us(hidden: frozenset[str], exclude: set[str] = seen, rows: np.ndarray = seen_rows) -> float:
        return 1e3 * per_call_ms(lambda: serving.recommend("probe", 10, exclude, rows, hidden), REPEATS, max_seconds)

    best = [item for item, _ in serving.recommend("probe", 40, seen, seen_rows).items]
    reference = us(frozenset())
    cases = []
    for count in (10, 1_000, 10_000):
        hidden = frozenset({f"v{rng.randrange(n)}" for _ in range(count)} | {best[0]})
        cases.append((f"{count:,} hidden, one of them the user's best", us(hidden)))
    cases.append(("the user's best 40 hidden (ranked again)", us(frozenset(best))))
    many = seen | {f"v{rng.randrange(n)}" for _ in range(10_000)}  # (their rows mapped once, as a held set's are)
    cases.append(
        ("10,000 hidden left out of the ranking itself", us(frozenset(), many, np.fromiter(index.rows(many), np.int64)))
    )
    return [("nothing hidden (the reference)", reference, 1.0)] + [(c, t, t / reference) for c, t in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    print(f"top-10 over {args.items:,} items (default model), {SEEN} seen items left out")
    for case, micros, ratio in run(args.items):
        print(f"  {case:<48}{micros:>8.1f} us  {ratio:>5.2f}x")


if __name__ == "__main__":
    main()

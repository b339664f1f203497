"""``python -m bench.hidden``: a recommendation's ranking with items hidden (taken down by an operator), next to the
same ranking with nothing hidden, in this process.

The default model over 100,000 items (:func:`bench.topk.default_model`), top 10 for its probe user through
:meth:`learner.serving.ServingModel.recommend` with 50 random items left out as seen: with 10, 1,000 and 10,000
distinct random items hidden (one of them the user's best), with the user's best 40 hidden (more than the slack: ranked
again without every hidden item), and with 10,000 hidden left out of the ranking itself (what the slack avoids; their
rows mapped once, as a held set's are), each as a ratio to nothing hidden. The cases are timed in turns, three rounds,
each case's best round kept.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from bench.topk import SEEN, default_model, per_call_ms
from learner.id_index import IdIndex

REPEATS = 3000
ROUNDS = 3


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
    catalogue = [f"v{i}" for i in range(n)]
    many = seen | set(rng.sample(catalogue, min(10_000, n)))
    many_rows = np.fromiter(index.rows(many), np.int64)
    cases = {"nothing hidden (the reference)": lambda: us(frozenset())}
    for count in (10, 1_000, 10_000):
        hidden = frozenset(rng.sample(catalogue, min(count, n) - 1)) | {best[0]}
        cases[f"{len(hidden):,} hidden, one of them the user's best"] = lambda h=hidden: us(h)
    cases["the user's best 40 hidden (ranked again)"] = lambda: us(frozenset(best))
    cases[f"{len(many) - len(seen):,} hidden left out of the ranking itself"] = lambda: us(frozenset(), many, many_rows)
    rounds = [{case: measure() for case, measure in cases.items()} for _ in range(ROUNDS)]  # in turns
    timed = {case: min(r[case] for r in rounds) for case in cases}
    reference = timed["nothing hidden (the reference)"]
    return [(case, micros, micros / reference) for case, micros in timed.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    print(f"top-10 over {args.items:,} items (default model), {SEEN} seen items left out")
    for case, micros, ratio in run(args.items):
        print(f"  {case:<48}{micros:>8.1f} us  {ratio:>5.2f}x")


if __name__ == "__main__":
    main()

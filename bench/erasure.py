"""``python -m bench.erasure``: what recorded user erasures cost the worker an event, next to the bare predict+learn
loop over the same events, in this process.

Once a user is erased, the worker looks at every event's time, and at the user of those stamped before the latest
erasure (``EventProcessor._erased_dropped``, learner/erasure.py). Over the ingest bench's events (5,000 users, 10,000
items), in chunks of 500 as the worker handles them: with one erasure recorded before every event (a live stream after
an erasure: one comparison an event) and after every event (a backlog from before it: each user looked up, hashed the
first time). The reference is :func:`bench.ingest.bare_learner` over the same events, as µs an event. Each case's
best of five rounds.
"""

from __future__ import annotations

import argparse
import time

from bench.common import events
from bench.ingest import bare_learner
from learner.erasure import Erasures, fingerprint
from recstream.events import decoded_messages
from stream.processor import EventProcessor

ROUNDS = 5
CHUNK = 500


def run(n: int = 50_000) -> list[tuple[str, float, float]]:
    """(case, µs an event, ratio to the bare loop's µs an event) for each case."""
    values = events(n, users=5_000, items=10_000)
    decoded = [d for message in decoded_messages(values) for d in message]
    for d in decoded:
        assert d.event is not None
        _ = d.event.ts_seconds  # (read once, as the worker's learning does before it is asked)
    chunks = [decoded[i : i + CHUNK] for i in range(0, len(decoded), CHUNK)]
    processor = EventProcessor.__new__(EventProcessor)  # (only its erasure check runs here)

    def us(erasures: Erasures) -> float:
        processor.erasures = erasures
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for chunk in chunks:
                processor._erased_dropped(chunk, [None] * len(chunk))
            best = min(best, time.perf_counter() - started)
        return 1e6 * best / n

    before, after = Erasures(float("inf")), Erasures(float("inf"))
    before.add(fingerprint("someone"), 1.0)
    after.add(fingerprint("someone"), 4e9)
    bare = 1e6 / max(bare_learner(values) for _ in range(2))
    cases = [("erasure before every event (live stream)", us(before)), ("after every event (backlog)", us(after))]
    return [("bare predict+learn loop", bare, 1.0)] + [(case, micros, micros / bare) for case, micros in cases]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    print(f"{args.events:,} events, 5,000 users: the erasure check, per event")
    for case, micros, ratio in run(args.events):
        print(f"  {case:<44}{micros:>8.2f} us  {ratio:>6.3f}x the bare loop")


if __name__ == "__main__":
    main()

"""Steady background traffic, run as a separate process: ``python -m bench.background BOOTSTRAP TOPIC RATE SECONDS``.

Produces ``RATE`` events per second (paced every 10 ms; JSON in the event contract, ``ts`` = now)
to ``TOPIC`` for ``SECONDS`` seconds, over 50,000 users and 20,000 items (half uniform, half from a
popular head). The events of each 10 ms tick go out as one batch message (a JSON list, as
``POST /v1/events`` publishes a request's events); ``--per-event`` sends one message per event
(key = user id) instead, as a publisher writing to Kafka directly might;
prints JSON with what it sent and the rate it achieved. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from bench.common import watch_times

USERS = 50_000
ITEMS = 20_000
TICK = 0.01


def _item(rnd: random.Random) -> int:
    """Half uniform over the catalogue, half from a heavy head (popular items)."""
    if rnd.random() < 0.5:
        return rnd.randrange(ITEMS)
    return min(int(rnd.paretovariate(1.2)), ITEMS) - 1


async def _run(
    bootstrap: str, topic: str, rate: float, seconds: float, seed: int, per_event: bool = False, users: str = "bg"
) -> dict:
    if not bootstrap.startswith("127.0.0.1:"):
        raise SystemExit("bench.background only targets 127.0.0.1")
    rnd = random.Random(seed)
    kinds = ["view", "view", "like", "share", "skip"]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    sent = 0
    started = time.perf_counter()
    try:
        tick = 0
        while True:
            now = time.perf_counter()
            elapsed = now - started
            if elapsed >= seconds:
                break
            due = int(rate * elapsed) - sent
            if due > 0:
                ts = datetime.now(UTC).isoformat()
                tick_events = []
                for _ in range(due):
                    user = f"{users}{rnd.randrange(USERS)}"
                    item, kind = f"v{_item(rnd)}", rnd.choice(kinds)
                    watched, duration = watch_times(rnd, kind)
                    event = {
                        "event_id": f"bg-{seed}-{sent}",
                        "user_id": user,
                        "item_id": item,
                        "type": kind,
                        "ts": ts,
                        "watch_seconds": watched,
                        "item_duration_seconds": duration,
                    }
                    if per_event:
                        await producer.send(topic, value=json.dumps(event).encode(), key=user.encode())
                    else:
                        tick_events.append(event)
                    sent += 1
                if tick_events:
                    await producer.send(topic, value=json.dumps(tick_events).encode())
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * TICK - time.perf_counter()))
        await producer.flush()
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    return {"sent": sent, "seconds": elapsed, "events_per_second": sent / elapsed, "target_rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.background", description=__doc__.split("\n")[0])
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--per-event", action="store_true", help="one message per event instead of one per tick")
    parser.add_argument(
        "--users", default="bg", help="user id prefix (`u`: the users of bench.common.events' streams, 50,000 of them)"
    )
    args = parser.parse_args()
    result = asyncio.run(
        _run(args.bootstrap, args.topic, args.rate, args.seconds, args.seed, args.per_event, args.users)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""A synthetic stream with two taste groups, for tests that check the model learns who likes what."""

from __future__ import annotations

import random
from datetime import timedelta

from tests.clock import BASE

GROUP_A = [f"a{i:02d}" for i in range(20)]
GROUP_B = [f"b{i:02d}" for i in range(20)]


def taste_events(
    seed: int = 0, users_per_group: int = 60, likes: int = 14, skips: int = 3, prefix: str = ""
) -> list[dict]:
    """Users of group A like A items and skip B items; group B the other way round. Shuffled."""
    rnd = random.Random(seed)
    start = BASE
    events = []
    for group, own, other in (("A", GROUP_A, GROUP_B), ("B", GROUP_B, GROUP_A)):
        for u in range(users_per_group):
            user = f"{prefix}{group}{u:03d}"
            for item in rnd.sample(own, likes):
                events.append((user, item, "like"))
            for item in rnd.sample(other, skips):
                events.append((user, item, "skip"))
    rnd.shuffle(events)
    return [
        {
            "event_id": f"{prefix}e{n}",
            "user_id": user,
            "item_id": item,
            "type": kind,
            "ts": (start + timedelta(seconds=n)).isoformat(),
        }
        for n, (user, item, kind) in enumerate(events)
    ]

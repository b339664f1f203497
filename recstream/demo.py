"""Demo traffic: simulated people with tastes, publishing through the HTTP ingest endpoint.

Items belong to genres; each person loves one genre and likes another. They mostly watch
what they love, like and share it, and skip most of the rest. Every few seconds the demo
prints one person's recommendations with the genre of each item, so you can watch them
converge on that person's taste while the model learns online.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

GENRES = ("comedy", "cooking", "dance", "gaming", "pets", "science")
ITEMS_PER_GENRE = 40
USERS = 300


@dataclass(frozen=True)
class Person:
    user_id: str
    loves: str
    likes: str


def catalogue() -> dict[str, str]:
    """item id -> genre."""
    return {f"{genre}-{n:03d}": genre for genre in GENRES for n in range(ITEMS_PER_GENRE)}


def people(rnd: random.Random) -> list[Person]:
    out = []
    for n in range(USERS):
        loves, likes = rnd.sample(GENRES, 2)
        out.append(Person(f"user-{n:04d}", loves, likes))
    return out


def next_event(rnd: random.Random, person: Person, items_by_genre: dict[str, list[str]]) -> dict:
    roll = rnd.random()
    genre = person.loves if roll < 0.6 else person.likes if roll < 0.8 else rnd.choice(GENRES)
    item = rnd.choice(items_by_genre[genre])
    duration = 30.0
    if genre == person.loves:
        kind = rnd.choices(["like", "share", "view"], weights=[6, 1, 3])[0]
        watch = duration * rnd.uniform(0.7, 1.0)
    elif genre == person.likes:
        kind = rnd.choices(["like", "view", "skip"], weights=[4, 4, 2])[0]
        watch = duration * rnd.uniform(0.4, 1.0)
    else:
        kind = rnd.choices(["skip", "view"], weights=[8, 2])[0]
        watch = duration * rnd.uniform(0.0, 0.2)
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": person.user_id,
        "item_id": item,
        "type": kind,
        "ts": datetime.now(UTC).isoformat(),
        "watch_seconds": round(watch, 1),
        "item_duration_seconds": duration,
        "context": {"source": "demo"},
    }


def run_demo(
    url: str,
    rate: float = 50.0,
    duration: float = 0.0,
    seed: int = 7,
    report_every: float = 5.0,
    stop: threading.Event | None = None,
    api_key: str | None = None,
) -> int:
    """Publish about ``rate`` events/s to the API at ``url`` for ``duration`` s (0: until interrupted).

    ``api_key`` needs the scopes ``ingest`` and ``read``.
    """
    stop = stop or threading.Event()
    rnd = random.Random(seed)
    genre_of = catalogue()
    items_by_genre: dict[str, list[str]] = {g: [i for i, gg in genre_of.items() if gg == g] for g in GENRES}
    crowd = people(rnd)
    watched = crowd[0]
    batch_interval = 0.2
    per_batch = max(1, round(rate * batch_interval))
    sent = 0
    started = last_report = time.monotonic()
    print(f"demo: publishing ~{rate:.0f} events/s to {url}; following {watched.user_id}, who loves {watched.loves}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        try:
            while not stop.is_set() and (duration <= 0 or time.monotonic() - started < duration):
                batch = [next_event(rnd, rnd.choice(crowd), items_by_genre) for _ in range(per_batch)]
                try:
                    response = client.post("/v1/events", json=batch)
                except httpx.HTTPError as exc:
                    if not stop.is_set():
                        print(f"demo: API not reachable ({exc}); retrying", file=sys.stderr)
                    stop.wait(1)
                    continue
                if response.status_code in (503, 429):
                    stop.wait(float(response.headers.get("Retry-After", "1")))
                    continue
                if response.status_code in (401, 403):
                    print(f"demo: the API refused the key: {response.json().get('detail')}", file=sys.stderr)
                    return 1
                sent += response.json().get("accepted", 0) if response.status_code == 202 else 0
                now = time.monotonic()
                if now - last_report >= report_every:
                    last_report = now
                    _report(client, watched, genre_of, sent)
                stop.wait(batch_interval)
        except KeyboardInterrupt:
            pass
    print(f"demo: sent {sent} events")
    return 0


def _report(client: httpx.Client, person: Person, genre_of: dict[str, str], sent: int) -> None:
    response = client.get(f"/v1/users/{person.user_id}/recommendations", params={"k": 5})
    if response.status_code != 200:
        print(f"demo: {sent} events sent; recommendations not ready yet ({response.json().get('detail')})")
        return
    body = response.json()
    genres = [genre_of.get(entry["item_id"], "?") for entry in body["items"]]
    share = sum(1 for g in genres if g in (person.loves, person.likes)) / max(1, len(genres))
    print(
        f"demo: {sent:>6} events sent | model v{body['model_version']} ({body['source']}) | "
        f"{person.user_id} (loves {person.loves}, likes {person.likes}) gets: {', '.join(genres)} "
        f"| {share:.0%} to their taste"
    )

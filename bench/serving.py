"""Serving: top-10 recommendations next to ``/healthz`` on the same server, load from another process.

For each catalogue size, a model of the default kind (``RECSTREAM_MODEL``) over that many items
and 2,000 users is written to Redis as the worker's checkpoint would (signed snapshot + current
version) and the users' seen sets are filled; then ``recstream api`` is started, serves each user
once (unmeasured: it then holds their seen sets, as a process that has run a while does; a user's
first request also reads their set from Redis, ~0.2-0.3 ms more: docs/performance-history.md) and
``bench.load`` (a separate process) measures requests/s and p50/p99 at 1 and 32 keep-alive
connections, each request for the next of the 2,000 users. With ``processes=2`` a second API
process on another port serves the same Redis prefix and the 32 connections are split between the
two ports (what a load balancer in front of two processes does); then ``recstream api --workers 2``
serves the same on one port (uvicorn's processes sharing it: the kernel hands each new connection to
one of them, so the split depends on which process accepts first).

Each figure is measured in turns with its reference (``bench.load --against``): recommendations
and ``/healthz`` alternate ``ROUNDS`` times on connections kept from phase to phase, and so do two
processes and one, so a drift of this VM's speed during the run falls on both sides of a ratio alike.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import httpx
import redis

from bench.common import Row, TimeBudget, run_json, wait_for
from bench.stack import Services, run_env, start_api
from recstream.components import new_learner, snapshot_signer
from recstream.settings import Settings
from store.keys import Keys

USERS = 2_000
P99_TARGET_RATIO = 1.5
RPS_TARGET_RATIO = 0.5
SCALE_TARGET = 1.6
#: Turns each load of a pair takes (bench.load --rounds): a figure and its reference alternate this many times.
ROUNDS = 4


def seed_model(redis_url: str, n_items: int, seed: int = 3) -> dict:
    """Learn a model over ``n_items`` items and ``USERS`` users and checkpoint it as version 1."""
    settings = Settings()
    learner = new_learner(settings)
    rnd = random.Random(seed)
    seen: dict[str, set[str]] = {}
    started = time.perf_counter()
    for item in range(n_items):  # every item liked once, so the catalogue has n_items items
        user = f"u{rnd.randrange(USERS)}"
        learner.learn(user, f"v{item}", "like", None, None)
        seen.setdefault(user, set()).add(f"v{item}")
    for _ in range(20 * USERS):  # and some popular structure: 20 more likes per user on average
        user, item = f"u{rnd.randrange(USERS)}", f"v{min(int(rnd.paretovariate(1.2)), n_items) - 1}"
        learner.learn(user, item, "like", None, None)
        seen.setdefault(user, set()).add(item)
    learn_seconds = time.perf_counter() - started
    blob = learner.to_bytes()
    keys = Keys(settings.redis_prefix)
    r = redis.Redis.from_url(redis_url)
    signer = snapshot_signer(settings)
    meta = json.dumps({"events_learned": learner.events_learned})
    with r.pipeline() as pipe:
        pipe.hset(keys.version(1), mapping={"blob": blob, "tag": signer.sign(blob), "meta": meta})
        pipe.set(keys.current_version, 1)
        for user, items in seen.items():
            pipe.sadd(keys.seen(user), *items)
        pipe.execute()
    return {"items": n_items, "users": USERS, "snapshot_bytes": len(blob), "learn_seconds": learn_seconds}


def _get(url: str, api_key: str) -> bytes:
    try:
        return httpx.get(url, timeout=2, headers={"Authorization": f"Bearer {api_key}"}).content
    except httpx.HTTPError:
        return b""


def _serve_every_user(url: str, api_key: str) -> None:
    """Each user's recommendations once, unmeasured: the process then holds every seen set (api/seen_cache.py), as
    one that has served these users a while does, and the measured phases compare processes in the same state (the
    second process of the two-process run used to meet its users for the first time there)."""
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as client:
        for user in range(USERS):
            client.get(f"{url}/v1/users/u{user}/recommendations?k=10").raise_for_status()


def _paired(
    figure: list[str], reference: list[str], seconds: float, api_key: str, connections: int
) -> tuple[dict, dict]:
    """``figure`` and ``reference`` loaded in turns (``bench.load --against``, ``ROUNDS`` phases each, ``seconds`` in
    all each): both over the same stretch of time."""
    both = run_json(
        [
            "-m", "bench.load", ",".join(figure), str(seconds), api_key, "--connections", str(connections),
            "--against", ",".join(reference), "--rounds", str(ROUNDS),
        ],
        timeout=2 * seconds + 90,
    )  # fmt: skip
    return both[0], both[1]


def run_catalogue(services: Services, n_items: int, seconds: float, budget: TimeBudget, two_processes: bool) -> dict:
    run = run_env(services, f"serve{n_items}")
    run.apply()
    model = seed_model(services.redis.url, n_items)
    apis = [start_api(run.env)]
    try:
        if two_processes:
            apis.append(start_api(run.env))
        for api in apis:
            wait_for(
                lambda api=api: b'"model_version":1' in _get(f"{api.url}/v1/users/u7/recommendations", run.api_key),
                min(60, budget.left()),
                "the API to load the model",
            )
            _serve_every_user(api.url, run.api_key)
        trivial = [f"{api.url}/healthz" for api in apis]
        recs = [f"{api.url}/v1/users/{{user}}/recommendations?k=10" for api in apis]
        result: dict = {"model": model}
        for connections in (1, 32):
            budget.check(f"serving {n_items:,} items")
            rec, triv = _paired(recs[:1], trivial[:1], seconds, run.api_key, connections)
            result[f"recommendations_{connections}"], result[f"trivial_{connections}"] = rec, triv
        # The load runs on a model no stream changes, after every user was served once: their seen sets are held
        # (api/seen_cache.py). How many lookups were served from memory, as the API counts them.
        result["seen_sets"] = _seen_lookups(apis[0].url, run.api_key)
        if two_processes:
            budget.check("serving from two processes")
            two, one = _paired(recs, recs[:1], seconds, run.api_key, 32)
            result["recommendations_32_two_processes"], result["recommendations_32_one_process"] = two, one
            two, one = _paired(trivial, trivial[:1], seconds, run.api_key, 32)
            result["trivial_32_two_processes"], result["trivial_32_one_process"] = two, one
            apis.pop().stop()  # (idle meanwhile, but holding the model)
            budget.check("serving from two processes on one port")
            shared = start_api({**run.env, "RECSTREAM_API_WORKERS": "2"})
            apis.append(shared)
            result["one_port_warm_rounds"] = _warm_processes(shared.url, run.api_key, 2, min(120, budget.left()))
            url = f"{shared.url}/v1/users/{{user}}/recommendations?k=10"
            two, one = _paired([url], recs[:1], seconds, run.api_key, 32)
            result["recommendations_32_one_port"], result["recommendations_32_one_port_reference"] = two, one
    finally:
        for api in apis:
            api.stop()
    return result


def _warm_processes(url: str, api_key: str, processes: int, timeout: float) -> int:
    """Serve every user (:func:`_serve_every_user`, one new connection a round) until each of the ``processes`` on
    ``url`` holds every seen set, as the API's gauge of seen sets held (their sum) says; the rounds it took. A round's
    connection goes to whichever process accepts it."""
    deadline = time.monotonic() + timeout
    rounds = 0
    while _seen_users(url, api_key) < processes * USERS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{processes} API processes on {url} did not all serve every user in {timeout:.0f} s")
        wait_for(
            lambda: b'"model_version":1' in _get(f"{url}/v1/users/u7/recommendations", api_key),
            max(1.0, deadline - time.monotonic()),
            "the API processes to load the model",
        )
        _serve_every_user(url, api_key)
        rounds += 1
    return rounds


def _seen_users(url: str, api_key: str) -> float:
    """``recstream_api_seen_cache_users``: the users whose seen sets the API's processes hold (their sum)."""
    found = re.search(r"^recstream_api_seen_cache_users (\S+)$", _get(f"{url}/metrics", api_key).decode(), re.M)
    return float(found.group(1)) if found else 0.0


def _seen_lookups(url: str, api_key: str) -> dict[str, float]:
    """The API's ``recstream_api_seen_cache_lookups_total`` by result (hit: held; miss: read from Redis)."""
    text = _get(f"{url}/metrics", api_key).decode()
    found = re.findall(r'^recstream_api_seen_cache_lookups_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in found}


def run(services: Services, catalogues: list[int], seconds: float, budget: TimeBudget) -> tuple[dict, list[Row]]:
    results: dict = {}
    rows: list[Row] = []
    biggest = max(catalogues)
    for n_items in catalogues:
        result = run_catalogue(services, n_items, seconds, budget, two_processes=n_items == biggest)
        results[str(n_items)] = result
        targeted = n_items == biggest and n_items >= 100_000
        label = f"top-10, {n_items:,} items"
        for connections in (1, 32):
            rec, triv = result[f"recommendations_{connections}"], result[f"trivial_{connections}"]
            for q in ("p50", "p99"):
                has_target = targeted and q == "p99" and connections == 1
                ratio = rec[f"{q}_ms"] / triv[f"{q}_ms"]
                rows.append(
                    Row(
                        "serving",
                        f"{label}, {connections} conn, {q} ms",
                        rec[f"{q}_ms"],
                        "ms",
                        triv[f"{q}_ms"],
                        "/healthz, same server",
                        f"<= {P99_TARGET_RATIO}x ref" if has_target else "",
                        ratio <= P99_TARGET_RATIO if has_target else None,
                    )
                )
            has_target = targeted and connections == 32
            ratio = rec["requests_per_second"] / triv["requests_per_second"]
            rows.append(
                Row(
                    "serving",
                    f"{label}, {connections} conn, req/s",
                    rec["requests_per_second"],
                    "req/s",
                    triv["requests_per_second"],
                    "/healthz, same server",
                    f">= {RPS_TARGET_RATIO}x ref" if has_target else "",
                    ratio >= RPS_TARGET_RATIO if has_target else None,
                )
            )
        seen = result["seen_sets"]
        lookups = seen.get("hit", 0.0) + seen.get("miss", 0.0)
        rows.append(
            Row(
                "serving",
                f"{label}, seen sets held in memory (no stream running; a miss: a user's first request, unmeasured)",
                seen.get("hit", 0.0),
                "lookups",
                lookups,
                "seen-set lookups, one process",
            )
        )
        if "recommendations_32_two_processes" in result:
            two, one = result["recommendations_32_two_processes"], result["recommendations_32_one_process"]
            ratio = two["requests_per_second"] / one["requests_per_second"]
            rows.append(
                Row(
                    "serving",
                    f"{label}, 32 conn, 2 API processes, req/s",
                    two["requests_per_second"],
                    "req/s",
                    one["requests_per_second"],
                    "1 API process",
                    f">= {SCALE_TARGET}x ref",
                    ratio >= SCALE_TARGET,
                )
            )
            two_t, one_t = result["trivial_32_two_processes"], result["trivial_32_one_process"]
            rows.append(
                Row(
                    "serving",
                    "/healthz, 32 conn, 2 API processes, req/s",
                    two_t["requests_per_second"],
                    "req/s",
                    one_t["requests_per_second"],
                    "1 API process",
                )
            )
            if "recommendations_32_one_port" in result:
                shared = result["recommendations_32_one_port"]
                reference = result["recommendations_32_one_port_reference"]
                rows.append(
                    Row(
                        "serving",
                        f"{label}, 32 conn, 2 API processes on one port (--workers 2), req/s",
                        shared["requests_per_second"],
                        "req/s",
                        reference["requests_per_second"],
                        "1 API process",
                    )
                )
            # the load generator shares the machine's cores with the servers: what it took from them
            rows.append(
                Row(
                    "serving",
                    f"{label}, 32 conn, 2 API processes: the load generator's own CPU (cores)",
                    two["client_cpu_share"],
                    "cores",
                    float(os.cpu_count() or 1),
                    "the machine's cores",
                )
            )
    return results, rows

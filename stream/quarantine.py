"""``recstream quarantine``: list what the gate held and replay it into the events topic after review.

Replayed events carry a ``recstream-override`` header naming the reason(s) the operator overrides;
they pass the whole gate again except those rules. A replayed event held again (for another rule, or while the model
guard paused learning) keeps the rules overridden for it in its new record, and its next replay overrides them too:
an operator reviews each reason once. A replay records which quarantine records it sent (their place in
the quarantine topic, in Redis), and the next replay leaves them out unless given ``--again``: the gate's duplicate
check only remembers event ids for ``RECSTREAM_DEDUPE_RETENTION_SECONDS``, so a replay repeated later would learn
them twice. (Within that window a record sent twice, by ``--again`` or a replay interrupted before it recorded what
it sent, is still dropped as a duplicate.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from learner.erasure import Erasures, fingerprint
from learner.gate.gate import GateConfig, default_gate
from recstream import components
from recstream.components import bootstrap_servers, kafka_client_kwargs
from recstream.events import Event
from recstream.settings import Settings, get_settings
from store.erasures import UserErasures, requested_at
from store.keys import Keys
from stream.processor import MODEL_PAUSED, OVERRIDE_HEADER, carried_overrides

#: Where a record read from the quarantine topic was there (``topic:partition:offset``), added by read_quarantine.
PLACE = "_place"


async def _partitions(settings: Settings) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), **kafka_client_kwargs(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic_quarantined])
    finally:
        await admin.close()
    return sorted(p["partition"] for topic in described if not topic.get("error_code") for p in topic["partitions"])


class QuarantineReadTimeout(TimeoutError):
    """The quarantine topic was not read to its end in time."""


class UnknownReason(ValueError):
    """``--reason`` names no reason an event is held for (a typo, most likely)."""


def reason_codes() -> tuple[str, ...]:
    """Every reason the worker may hold an event for: each rule's code (those off by default included: they may have
    been on when the events were held) and the model guard's pause."""
    every_rule = GateConfig(skip_after_full_watch_enabled=True, like_without_view_enabled=True, anomaly_enabled=True)
    return (*default_gate(every_rule).codes, MODEL_PAUSED)


def check_reason(reason: str | None, records: list[dict]) -> None:
    """Raise :class:`UnknownReason` when ``reason`` (``--reason``) is neither a reason code (:func:`reason_codes`),
    ``all``, nor the reason of one of ``records`` (held by an older version, say)."""
    codes = reason_codes()
    if reason in (None, "all") or reason in codes or any(r.get("reason") == reason for r in records):
        return
    raise UnknownReason(
        f"--reason {reason!r} is no reason an event is held for; the reasons are {', '.join(codes)} "
        "(`recstream quarantine list` counts the events held for each)"
    )


#: How long `recstream quarantine` reads the topic to its end before giving up (``--timeout``).
READ_TIMEOUT_SECONDS = 30.0


async def read_quarantine(settings: Settings, timeout: float = READ_TIMEOUT_SECONDS) -> list[dict]:
    """Every record currently in the quarantine topic (reads up to the end offsets taken at start)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_client_kwargs(settings),
    )
    try:  # a failed start must stop it too (else aiokafka warns of an unclosed consumer)
        await consumer.start()
        ids = await _partitions(settings)
        tps = [TopicPartition(settings.topic_quarantined, p) for p in sorted(ids)]
        if not tps:
            return []
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[dict] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if loop.time() > deadline:
                raise QuarantineReadTimeout(
                    f"could not read {settings.topic_quarantined} to its end within {timeout:g} s; give it longer "
                    "with --timeout"
                )
            for messages in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                records.extend({**json.loads(m.value), PLACE: f"{m.topic}:{m.partition}:{m.offset}"} for m in messages)
        return records
    finally:
        await consumer.stop()


def select(records: list[dict], reason: str | None, since: datetime | None) -> list[dict]:
    chosen = []
    for record in records:
        if reason not in (None, "all") and record.get("reason") != reason:
            continue
        if since is not None and datetime.fromisoformat(record["held_at"]) < since:
            continue
        chosen.append(record)
    return chosen


async def not_replayed(settings: Settings, records: list[dict]) -> list[dict]:
    """``records`` but those an earlier replay sent (:data:`PLACE` in the replayed set)."""
    if not records:
        return []
    redis = components.redis_client(settings)
    try:
        sent = await redis.smismember(Keys(settings.redis_prefix).quarantine_replayed, [r[PLACE] for r in records])
    finally:
        await redis.aclose()
    return [record for record, done in zip(records, sent, strict=True) if not done]


async def not_erased(settings: Settings, records: list[dict]) -> list[dict]:
    """``records`` but those of users erased (or waiting to be) stamped before their erasure was asked for: the
    worker would drop them, and a replay would put their data back on the events topic for its whole retention."""
    if not records:
        return []
    redis = components.redis_client(settings)
    try:
        store = UserErasures(redis, Keys(settings.redis_prefix))
        erased = Erasures(float("inf"), await store.erased())
        for user, raw in (await store.requests()).items():
            at = requested_at(raw)
            if at is not None:
                erased.add(fingerprint(user), at)
    finally:
        await redis.aclose()
    if not erased:
        return records
    return [r for r in records if not erased.drops(str(r["event"].get("user_id")), _stamped(r["event"]))]


def _stamped(event: dict) -> float:
    """An event's time (seconds since the epoch), as the worker reads it (+inf if it is not a valid event: the
    worker rejects it, it is not dropped as an erased user's)."""
    try:
        return Event.model_validate(event).ts_seconds
    except ValidationError:
        return float("inf")


async def record_replayed(settings: Settings, records: list[dict]) -> None:
    redis = components.redis_client(settings)
    try:
        await redis.sadd(Keys(settings.redis_prefix).quarantine_replayed, *(r[PLACE] for r in records))
    finally:
        await redis.aclose()


async def replay(settings: Settings, records: list[dict], override: str | None) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(settings), acks="all", **kafka_client_kwargs(settings)
    )
    try:
        await producer.start()
        futures = [
            await producer.send(
                settings.topic_events,
                value=json.dumps(record["event"]).encode(),
                key=record["event"]["user_id"].encode(),
                headers=override_headers(record, override),
            )
            for record in records
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def override_headers(record: dict, override: str | None) -> list[tuple[str, bytes]] | None:
    """The header a replay of ``record`` carries: ``override`` and the rules an earlier replay overrode for it. Never
    ``model_paused``: the guard's pause was the model's state, not a verdict on the event, and a pause while the
    replay is learned holds the replayed events again (the poison that tripped the guard may be among them)."""
    reasons = set(carried_overrides(record.get("overrides", ()))) | ({override} if override else set())
    reasons.discard(MODEL_PAUSED)
    return [(OVERRIDE_HEADER, ",".join(sorted(reasons)).encode())] if reasons else None


def describe(record: dict) -> str:
    """Two lines for ``quarantine show``: when and why, then which event and where it is in the topic."""
    event = record.get("event") or {}
    overridden = f" (overridden before: {', '.join(record['overrides'])})" if record.get("overrides") else ""
    what = " ".join(
        f"{name}={event[name]}" for name in ("event_id", "user_id", "item_id", "type", "ts") if name in event
    )
    why = f"{record.get('reason', '?')}{overridden}: {record.get('detail', '')}"
    return f"{record.get('held_at', '?')}  {why}\n    {what}  [{record[PLACE]}]"


def _carried_note(records: list[dict], override: str | None) -> str:
    """What the replay also overrides for some of ``records``: the rules an earlier replay overrode for them."""
    carried = [set(carried_overrides(r.get("overrides", ()))) - {override} for r in records]
    rules = sorted(set().union(*carried))
    if not rules:
        return ""
    return f"; {sum(1 for c in carried if c)} of them also override {', '.join(rules)} (an earlier replay did)"


def _since(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("--since needs a timezone, e.g. 2026-11-23T10:00:00Z")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quarantine", help="list or replay events the quality gate held")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="counts of held events by reason")
    p.add_argument("--timeout", type=float, default=READ_TIMEOUT_SECONDS, help="seconds to read the topic in")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="the held events themselves: when, why (the rule's detail), which event")
    p.add_argument("--reason", default=None, help="only events held for this reason code")
    p.add_argument("--since", type=_since, default=None, help="only events held at or after this time (ISO 8601)")
    p.add_argument("--limit", type=int, default=20, help="at most this many, the latest held (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON record a line, as in the topic (with its place)")
    p.add_argument("--timeout", type=float, default=READ_TIMEOUT_SECONDS, help="seconds to read the topic in")
    p.set_defaults(func=_show)
    p = sub.add_parser("replay", help="replay held events into the events topic, overriding one rule")
    p.add_argument("--reason", required=True, help="reason code to replay (or 'all'); it is also the rule overridden")
    p.add_argument("--since", type=_since, default=None, help="only events held at or after this time (ISO 8601)")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    p.add_argument("--again", action="store_true", help="also send the records an earlier replay sent")
    p.add_argument("--timeout", type=float, default=READ_TIMEOUT_SECONDS, help="seconds to read the topic in")
    p.set_defaults(func=_replay)


def _list(args: argparse.Namespace) -> int:
    records = asyncio.run(read_quarantine(get_settings(), args.timeout))
    counts = Counter(r.get("reason", "?") for r in records)
    print(f"{'reason':<28}{'held':>8}")
    for reason, count in counts.most_common():
        print(f"{reason:<28}{count:>8}")
    print(f"{'total':<28}{sum(counts.values()):>8}")
    return 0


def _show(args: argparse.Namespace) -> int:
    records = asyncio.run(read_quarantine(get_settings(), args.timeout))
    check_reason(args.reason, records)
    matching = select(records, args.reason, args.since)
    matching.sort(key=lambda record: datetime.fromisoformat(record["held_at"]))  # (partitions are read one by one)
    shown = matching[-args.limit :] if args.limit > 0 else matching
    for record in shown:
        print(json.dumps(record) if args.json else describe(record))
    if not args.json:
        print(
            f"{len(shown)} of {len(matching)} held events shown"
            + (" (--limit 0: all)" if len(shown) < len(matching) else "")
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    settings = get_settings()
    records = asyncio.run(read_quarantine(settings, args.timeout))
    check_reason(args.reason, records)
    matching = select(records, args.reason, args.since)
    chosen = matching if args.again else asyncio.run(not_replayed(settings, matching))
    override = None if args.reason in ("all", MODEL_PAUSED) else args.reason  # (a pause is never overridden)
    before = len(matching) - len(chosen)
    kept = asyncio.run(not_erased(settings, chosen))
    erased, chosen = len(chosen) - len(kept), kept
    notes = (
        _carried_note(chosen, override)
        + (f"; {before} replayed before left out (--again sends them too)" if before else "")
        + (f"; {erased} of erased users left out" if erased else "")
    )
    if args.dry_run:
        print(f"would replay {len(chosen)} events held for {args.reason!r} (overriding {override or 'nothing'}){notes}")
        return 0
    sent = asyncio.run(replay(settings, chosen, override)) if chosen else 0
    if chosen:
        asyncio.run(record_replayed(settings, chosen))
    target = settings.topic_events
    print(f"replayed {sent} events held for {args.reason!r} into {target}; overriding {override or 'nothing'}{notes}")
    return 0

"""What a dead letter carries (the refused bytes up to a cap, then their start, marked as cut) and where it goes."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

from aiokafka.partitioner import DefaultPartitioner

import stream.app
from recstream.settings import Settings
from stream.app import create_app, dead_letter_partition
from stream.processor import DEAD_LETTER_PAYLOAD_BYTES, Record, _now_iso, rejection_payload


def _letter(value: bytes) -> dict:
    return json.loads(rejection_payload(Record("events", 1, 42, None, value), "malformed JSON"))


def test_a_refused_message_under_the_cap_is_carried_whole_as_text_or_base64() -> None:
    text = _letter(b'{"not": json')
    assert text["payload"] == '{"not": json' and "payload_truncated" not in text and "payload_bytes" not in text
    binary = _letter(b"\xff\x00" * 10)
    assert base64.b64decode(binary["payload_base64"]) == b"\xff\x00" * 10 and "payload_truncated" not in binary
    assert (text["topic"], text["partition"], text["offset"]) == ("events", 1, 42)


def test_a_cut_inside_a_character_keeps_the_text_up_to_that_character() -> None:
    original = "a" + "é" * DEAD_LETTER_PAYLOAD_BYTES  # 2 bytes each after the first: the cap falls inside one
    letter = _letter(original.encode())
    assert letter["payload_truncated"] is True and letter["payload_bytes"] == len(original.encode())
    kept = letter["payload"]
    assert original.startswith(kept)
    assert DEAD_LETTER_PAYLOAD_BYTES - 3 <= len(kept.encode()) <= DEAD_LETTER_PAYLOAD_BYTES


def test_a_cut_binary_message_keeps_its_first_bytes_and_the_letter_stays_small() -> None:
    original = bytes(range(256)) * 4000  # ~1 MB: escaped or in base64 it would exceed the producer's 1 MiB
    raw = rejection_payload(Record("events", 0, 7, None, original), "malformed JSON")
    letter = json.loads(raw)
    assert letter["payload_bytes"] == len(original) and letter["payload_truncated"] is True
    assert base64.b64decode(letter["payload_base64"]) == original[:DEAD_LETTER_PAYLOAD_BYTES]
    assert len(raw) < 1024 * 1024 // 2


def test_a_dead_letter_to_a_one_partition_topic_is_not_hashed_and_otherwise_goes_where_kafka_puts_it(
    monkeypatch,
) -> None:
    keyed = DefaultPartitioner()

    def no_hashing(*_: object) -> int:
        raise AssertionError("a one-partition topic needs no hash of the key")

    with monkeypatch.context() as patched:
        patched.setattr(stream.app, "_KEYED", no_hashing)
        assert dead_letter_partition(b"user-1", [0], [0]) == 0
        assert dead_letter_partition(b"user-1", [3], []) == 3
    for key in (b"u1", b"user-42", b"x" * 50, None):
        if key is not None:
            assert dead_letter_partition(key, [0, 1, 2, 3], [0, 1, 2, 3]) == keyed(key, [0, 1, 2, 3], [0, 1, 2, 3])
        else:
            assert dead_letter_partition(key, [0, 1, 2, 3], [2]) == 2  # no key: an available partition


async def test_the_worker_producer_partitions_with_it() -> None:
    app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1"))
    producer = app.producer._new_producer()  # the aiokafka producer Faust makes (not started: no broker needed)
    try:
        assert producer._partitioner is dead_letter_partition
    finally:
        await producer.stop()


def test_a_letters_time_is_exact_to_the_millisecond() -> None:
    """Letters share the time text computed within the same millisecond (cheaper), never an older one."""
    for _ in range(3):
        before = datetime.now(UTC)
        stamped = datetime.fromisoformat(_now_iso())
        after = datetime.now(UTC)
        assert before - timedelta(milliseconds=2) <= stamped <= after  # (1 ms, and the clocks' rounding)
        deadline = time.monotonic() + 1.0
        while datetime.now(UTC) < after + timedelta(milliseconds=3) and time.monotonic() < deadline:
            pass  # a few milliseconds later, the next letter's time has moved with the clock

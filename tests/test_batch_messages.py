"""Batch messages (a JSON list of events in one Kafka message, as the ingest endpoint publishes them)
with a real Redis: every element is judged on its own, refused elements are dead-lettered with their
position and bytes, and a re-delivered batch is not learned twice."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from learner.gate.base import Hold
from learner.gate.gate import GateConfig, QualityGate, default_gate
from learner.online_learner import OnlineLearner
from recstream.events import MAX_MESSAGE_EVENTS
from store.model_store import ModelStore
from stream.processor import DUPLICATE, QUARANTINED, REJECTED, DeadLettersUndelivered, EventProcessor, Record
from tests.clock import iso
from tests.conftest import Endpoint, open_model_store
from tests.transport import Transport

pytestmark = pytest.mark.integration

CONSUMED = "recstream_events_consumed_total"
UNDELIVERED = "recstream_dead_letters_undelivered_total"


def _event(n: int) -> dict:
    return {"event_id": f"e{n}", "user_id": f"u{n % 3}", "item_id": f"v{n % 5}", "type": "like", "ts": iso(n)}


@pytest.fixture
async def store(redis_endpoint: Endpoint):
    async with open_model_store(redis_endpoint.url, b"k", "bm") as opened:
        yield opened


async def test_each_element_of_a_batch_is_learned_or_refused_on_its_own(store: ModelStore) -> None:
    transport = Transport()
    processor = transport.processor(store)
    await processor.start()
    no_user = {k: v for k, v in _event(9).items() if k != "user_id"}
    batch = [_event(0), _event(1), _event(2), no_user, _event(1)]  # a refused element and a repeated one
    records = [
        Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0),
        Record("events", 0, 1, None, b"[{not json", handle=1),
        Record("events", 0, 2, None, b"[]", handle=2),
        Record("events", 0, 3, None, json.dumps([_event(n) for n in range(3, 3 + MAX_MESSAGE_EVENTS + 1)]).encode(), 3),
        Record("events", 0, 4, None, json.dumps(_event(20)).encode(), handle=4),  # a one-event message still works
    ]
    await processor.process(records)
    await processor.checkpoint()

    assert processor.learner.events_learned == 4  # e0, e1, e2 and e20
    rejected = [letter for kind, letter in transport.dead_letters if kind == REJECTED]
    assert [(r["offset"], r.get("index")) for r in rejected] == [(0, 3), (1, None), (2, None), (3, None)]
    assert rejected[0]["reason"].startswith("user_id") and json.loads(rejected[0]["payload"]) == no_user
    assert rejected[1]["reason"].startswith("malformed JSON")
    assert "1 to 5000 events" in rejected[2]["reason"] and "1 to 5000 events" in rejected[3]["reason"]
    assert (await store.gate_counts())[DUPLICATE] == 1
    assert sorted(transport.acked) == [0, 1, 2, 3, 4]

    # The same messages again (a redelivery after a crash): below the checkpoint's offsets, skipped whole.
    again = transport.processor(store)
    await again.start()
    await again.process(records)
    await again.checkpoint()
    assert again.learner.events_learned == 4
    # The same events in a new message (a client resending): recognised as duplicates, not learned.
    await again.process([Record("events", 0, 5, None, json.dumps(batch[:3]).encode(), handle=5)])
    await again.checkpoint()
    assert again.learner.events_learned == 4 and (await store.gate_counts())[DUPLICATE] == 4


async def test_a_retried_batch_is_not_counted_twice_by_the_gate(store: ModelStore) -> None:
    class FailsOnce(Transport):
        """The first dead letter fails (Kafka unreachable for a moment), as a batch's retry then sees it."""

        failed = False

        async def dead_letter(self, kind: str, key: bytes | None, value: bytes) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("broker unreachable")
            await super().dead_letter(kind, key, value)

    transport = FailsOnce()
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    batch = [_event(n) for n in range(10)]
    batch[5] = {**batch[5], "ts": iso(3 * 86_400)}  # from three days ahead: held (future_timestamp)
    batch.append(_event(2))  # a repeat within the batch: a duplicate of e2, never judged by the gate
    records = [Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0)]
    with pytest.raises(ConnectionError):
        await processor.process(records)  # fails at e5's dead letter, sent once the chunk is handled
    # The message was handled whole before its letters were sent: not taken again, its letter is kept for the
    # checkpoint, which sends it again and waits for it.
    assert processor.pending_records == records
    await _checkpoint_after_a_failed_letter(processor)

    assert processor.learner.events_learned == 9
    # The gate judged each distinct event once, and the learned ones are not counted as duplicates of themselves.
    assert gate.passed == 9 and gate.counts == {"future_timestamp": 1}
    assert (await store.gate_counts()) == {DUPLICATE: 1, "future_timestamp": 1}  # e2's repeat
    assert [letter["reason"] for kind, letter in transport.dead_letters if kind == QUARANTINED] == ["future_timestamp"]
    assert transport.acked == [0]


async def _checkpoint_after_a_failed_letter(processor: EventProcessor) -> None:
    """The first checkpoint sends the kept letter again and fails, waiting for its delivery; the next one (the
    agent's retry) goes through."""
    with pytest.raises(DeadLettersUndelivered, match="1 sent again"):
        await processor.checkpoint()
    assert await processor.checkpoint() is not None


class _FailsOnceAt(Transport):
    """The dead letter of the event with this id fails once (Kafka unreachable for a moment)."""

    def __init__(self, event_id: str) -> None:
        super().__init__()
        self.event_id, self.failed = event_id, False

    async def dead_letter(self, kind: str, key: bytes | None, value: bytes) -> None:
        if not self.failed and json.loads(value).get("event", {}).get("event_id") == self.event_id:
            self.failed = True
            raise ConnectionError("broker unreachable")
        await super().dead_letter(kind, key, value)


def _two_chunks() -> list[Record]:
    """One message of two chunks (events 0-499, 500-699) of ordinary traffic (many users and items, so that only the
    dated events are held: e100 and e600, future_timestamp)."""
    batch = [{**_event(n), "user_id": f"u{n % 350}", "item_id": f"v{n}"} for n in range(700)]
    for n in (100, 600):
        batch[n] = {**batch[n], "ts": iso(3 * 86_400)}
    return [Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0)]


async def test_a_retried_large_batch_is_judged_once_across_its_chunks(store: ModelStore) -> None:
    transport = _FailsOnceAt("e100")
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    records = _two_chunks()  # e100's dead letter fails once
    with pytest.raises(ConnectionError):
        await processor.process(records)  # at the first chunk's letter: the message is not handled yet
    assert processor.pending_records == []
    await processor.process(records)  # its retry
    await processor.checkpoint()
    assert processor.learner.events_learned == 698
    assert gate.passed == 698 and gate.counts == {"future_timestamp": 2}  # each event judged once


async def test_a_retried_run_of_one_event_messages_is_judged_once(store: ModelStore) -> None:
    """One-event messages are judged and handled together (EventProcessor._small_run); when their letters fail,
    the messages are handled already: their letters are sent again at the checkpoint, and they are not taken again
    (their learned events would count as duplicates of themselves)."""
    transport = _FailsOnceAt("e5")
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    events = [_event(n) for n in range(10)]
    events[5] = {**events[5], "ts": iso(3 * 86_400)}  # held (future_timestamp); its dead letter fails once
    records = [Record("events", 0, n, None, json.dumps(event).encode(), handle=n) for n, event in enumerate(events)]
    calls = _counting_calls(gate)
    with pytest.raises(ConnectionError):
        await processor.process(records)  # fails at e5's dead letter
    assert calls == [1]  # the ten judged in one call
    assert processor.pending_records == records  # all handled: nothing for the agent to retry
    await _checkpoint_after_a_failed_letter(processor)
    assert processor.learner.events_learned == 9
    assert gate.passed == 9 and gate.counts == {"future_timestamp": 1}  # each event judged once
    assert (await store.gate_counts()) == {"future_timestamp": 1}  # no duplicate
    quarantined = [letter["event"]["event_id"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert quarantined == ["e5"] and sorted(transport.acked) == list(range(10))


async def test_a_run_whose_learning_fails_half_way_is_judged_once_across_its_retry(store: ModelStore) -> None:
    """Learning fails at the fourth of ten one-event messages judged together: the three before it are handled, and
    the retry of the other seven (as the agent retries: those not handled) reuses their verdicts instead of judging
    them again (the gate counted them in its windows already)."""
    transport, gate, processor, records = await _failing_run(store, 10, held=(1, 6), failing_at=3)  # e3 (e1 held)
    learner, judged = processor.learner, _counting_calls(gate)
    with pytest.raises(RuntimeError, match="learning failed"):
        await processor.process(records)
    assert processor.pending_records == records[:3] and judged == [1]
    assert gate.passed == 8 and gate.counts == {"future_timestamp": 2}
    await processor.process(records[3:])  # the retry
    assert judged == [1]  # not judged again...
    assert gate.passed == 8 and gate.counts == {"future_timestamp": 2}  # ...nor counted again
    assert processor._verdicts_ahead == {}  # nothing kept once they are handled
    await _checkpoint_after_a_failed_letter(processor)  # (e1's letter, kept when its run failed, is sent then)
    assert learner.events_learned == 8 and processor.pending_records == []
    quarantined = [letter["event"]["event_id"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert quarantined == ["e6", "e1"] and sorted(transport.acked) == list(range(10))  # (e1's sent last)


async def test_a_retry_judges_together_the_records_that_kept_no_verdicts(store: ModelStore) -> None:
    """A retried slice with records whose verdicts were kept and new records after them: the new ones are judged in
    one call, the kept ones not again, and each verdict goes to its own event."""
    transport, gate, processor, records = await _failing_run(store, 12, held=(4, 9), failing_at=2)  # e1
    learner, judged = processor.learner, _counting_calls(gate)
    with pytest.raises(RuntimeError):
        await processor.process(records[:6])  # e0-e5 judged; e0 handled
    assert processor.pending_records == records[:1] and gate.passed == 5 and judged == [1]
    await processor.process(records[1:])  # e1-e5 kept their verdicts; e6-e11 are judged now, together
    assert judged == [2] and gate.passed == 10 and gate.counts == {"future_timestamp": 2}
    await processor.checkpoint()
    assert learner.events_learned == 10
    quarantined = [letter["event"]["event_id"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert quarantined == ["e4", "e9"]


async def _failing_run(
    store: ModelStore, n: int, held: tuple[int, ...], failing_at: int
) -> tuple[Transport, QualityGate, EventProcessor, list[Record]]:
    """A started processor with the default gate, whose learner's ``failing_at``-th learn() raises (once), and ``n``
    one-event messages for it, e0 to e(n-1), those numbered in ``held`` dated three days ahead (future_timestamp)."""
    transport = Transport()
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    events = [{**_event(k), "ts": iso(3 * 86_400)} if k in held else _event(k) for k in range(n)]
    records = [Record("events", 0, k, None, json.dumps(event).encode(), handle=k) for k, event in enumerate(events)]
    learn, calls = processor.learner.learn, [0]

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == failing_at:
            raise RuntimeError("learning failed")
        return learn(*args, **kwargs)

    processor.learner.learn = failing_once  # type: ignore[method-assign]
    return transport, gate, processor, records


def _counting_calls(gate: QualityGate) -> list[int]:
    """Counts the calls of ``gate.check_chunk`` from now on, in the list's one element."""
    calls = [0]
    check_chunk = gate.check_chunk

    def counting(*args: Any) -> list[Hold | None]:
        calls[0] += 1
        return check_chunk(*args)

    gate.check_chunk = counting  # type: ignore[method-assign]
    return calls


async def test_an_event_that_was_a_duplicate_is_judged_when_its_copy_is_forgotten(store: ModelStore) -> None:
    """The first chunk of a message fails; an operator rolls back meanwhile (the worker forgets what it learned
    since its checkpoint); on the retry, an event that was a duplicate of a learned one is judged by the gate."""
    transport = _FailsOnceAt("a")
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    await processor.process([Record("events", 0, 0, None, json.dumps([_event(0)]).encode(), handle=0)])
    v1 = await processor.checkpoint()
    await processor.process([Record("events", 0, 1, None, json.dumps([_event(5)]).encode(), handle=1)])
    await processor.checkpoint()  # the worker is at v2
    await processor.process([Record("events", 0, 2, None, json.dumps([_event(1)]).encode(), handle=2)])
    ahead = {**_event(1), "ts": iso(5 * 86_400)}  # e1 again, from five days ahead
    failing = {**_event(2), "event_id": "a", "ts": iso(3 * 86_400)}  # held; its dead letter fails once
    # ordinary traffic after them (many users and items: not held), so that the message has a second chunk
    filler = [{**_event(n), "user_id": f"u{n % 350}", "item_id": f"v{n}"} for n in range(10, 510)]
    record = Record("events", 0, 3, None, json.dumps([failing, ahead, *filler]).encode(), handle=3)
    with pytest.raises(ConnectionError):
        await processor.process([record])  # at the first chunk's letter: the message is not handled
    assert [r.offset for r in processor.pending_records] == [2]
    await store.promote(v1, reason="roll back")  # the learned e1 is forgotten by the adopted version
    await processor.process([record])
    await processor.checkpoint()
    quarantined = [letter["event"]["event_id"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert quarantined == ["a", "e1"]  # the future-dated copy of e1 is held, not learned unjudged
    assert gate.counts == {"future_timestamp": 2}


async def test_a_repeat_of_an_event_quarantined_while_paused_is_quarantined_too(store: ModelStore) -> None:
    transport = Transport()
    processor = transport.processor(store, gate=default_gate(GateConfig()))
    await processor.start()
    processor.paused_since = 1.0  # the model guard paused learning
    batch = [_event(0), _event(0)]
    await processor.process([Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0)])
    await processor.checkpoint()
    reasons = [letter["reason"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert reasons == ["model_paused", "model_paused"]  # not learned, so the repeat is no duplicate
    assert DUPLICATE not in await store.gate_counts()


async def test_a_chunks_dead_letters_are_sent_together_in_the_order_of_its_events(store: ModelStore) -> None:
    """The letters of a chunk (up to 500 events) go to the sender in one call, once the chunk is handled, in the
    order of the events they are for; a message of two chunks makes two calls."""
    calls: list[list[tuple[str, int | None]]] = []

    class Recording(Transport):
        async def send_letters(self, letters: Any) -> list[Any]:
            calls.append([(kind, json.loads(value).get("index")) for kind, _, value in letters])
            return await super().send_letters(letters)

    transport = Recording()
    processor = transport.processor(store, gate=default_gate(GateConfig()))
    await processor.start()
    batch = [{**_event(n), "user_id": f"u{n % 350}", "item_id": f"v{n}"} for n in range(700)]
    for n in (3, 8, 650):
        batch[n] = {**batch[n], "ts": iso(3 * 86_400)}  # held (future_timestamp)
    batch[5] = {k: v for k, v in batch[5].items() if k != "user_id"}  # refused
    await processor.process([Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0)])
    assert calls == [[(QUARANTINED, 3), (REJECTED, 5), (QUARANTINED, 8)], [(QUARANTINED, 650)]]
    await processor.checkpoint()
    assert processor.learner.events_learned == 696 and transport.acked == [0]


async def test_what_a_user_was_seen_with_is_what_was_learned_or_held(store: ModelStore) -> None:
    """The items of learned and held events join their user's seen set in Redis with the checkpoint (the API leaves
    them out of recommendations: a held event is not learned, but the person did it); a refused element's and a
    duplicate's do not."""
    transport = Transport()
    processor = transport.processor(store, gate=default_gate(GateConfig()))
    await processor.start()
    learned = [{**_event(n), "user_id": "ann", "item_id": f"v{n}"} for n in range(3)]
    held = {**_event(3), "user_id": "ann", "item_id": "v-future", "ts": iso(3 * 86_400)}  # future_timestamp
    refused = {"event_id": "e4", "user_id": "ann", "item_id": "v-refused", "type": "like"}  # no ts
    other = {**_event(5), "user_id": "bob", "item_id": "v5"}
    batch = [*learned, held, refused, other]
    await processor.process([Record("events", 0, 0, None, json.dumps(batch).encode(), handle=0)])
    await processor.checkpoint()
    # a duplicate of a learned event, with another item for the same id: not learned, not seen
    again = [{**learned[0], "item_id": "v-duplicate"}]
    await processor.process([Record("events", 0, 1, None, json.dumps(again).encode(), handle=1)])
    await processor.checkpoint()

    assert processor.learner.events_learned == 4
    assert await store.seen("ann") == {"v0", "v1", "v2", "v-future"}
    assert await store.seen("bob") == {"v5"}
    assert [kind for kind, _ in transport.dead_letters] == [QUARANTINED, REJECTED]


async def test_a_run_of_small_messages_is_handled_as_each_message_alone(redis_endpoint: Endpoint) -> None:
    """Small messages are judged and handled as one chunk (EventProcessor._small_run). What comes of them (what is
    learned, each dead letter with its own message's offset and reason, the counts, the acknowledged offsets) is what
    comes of processing each message alone, in order; only the gate is called far fewer times."""

    def stream() -> list[Record]:
        events: list[Any] = [{**_event(n), "user_id": f"u{n % 7}", "item_id": f"v{n % 11}"} for n in range(60)]
        events[4] = {**events[4], "ts": iso(3 * 86_400)}  # held (future_timestamp)
        events[9] = {k: v for k, v in events[9].items() if k != "item_id"}  # refused
        events[20] = events[3]  # a repeat of a learned event: a duplicate
        events[30] = {**events[4], "ts": iso(0)}  # e4 again, in time now: judged again, learned
        events[40] = [_event(100), _event(101)]  # a small batch message
        events[41] = [_event(102), _event(102)]  # an event twice in one message: a duplicate the second time
        values = [json.dumps(e).encode() for e in events]
        values[50] = b"{not json"
        return [Record("events", 0, n, None, value, handle=n) for n, value in enumerate(values)]

    async def outcome(prefix: str, one_by_one: bool) -> tuple[Any, ...]:
        async with open_model_store(redis_endpoint.url, b"k", prefix) as store:
            transport = Transport()
            gate = default_gate(GateConfig())
            calls = _counting_calls(gate)
            processor = transport.processor(store, gate=gate)
            await processor.start()
            records = stream()
            for batch in [[r] for r in records] if one_by_one else [records]:
                await processor.process(batch)
            await processor.checkpoint()
            letters = [
                (kind, letter["offset"], letter.get("index"), letter["reason"])
                for kind, letter in transport.dead_letters
            ]
            return (
                processor.learner.events_learned,
                letters,
                await store.gate_counts(),
                gate.passed,
                dict(gate.counts),
                sorted(transport.acked),
                processor.next_offsets,
            ), calls[0]

    alone, calls_alone = await outcome("alone", one_by_one=True)
    together, calls_together = await outcome("together", one_by_one=False)
    assert together == alone
    learned, letters, counts, *_ = together
    assert learned == 62 - 5  # 62 events, less e4 held, the duplicates of e3 and e102, the refused and the malformed
    assert [(kind, offset) for kind, offset, _, _ in letters] == [(QUARANTINED, 4), (REJECTED, 9), (REJECTED, 50)]
    assert counts == {DUPLICATE: 2, "future_timestamp": 1}
    # Runs: messages 0-19 (20 repeats e3), 20-40, 41 alone (e102 twice: judged event by event, without
    # check_chunk), 42-59. Alone: a call for every message but 41 (with nothing to judge for 9, 20 and 50).
    assert (calls_together, calls_alone) == (3, 59)


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_failed_send_after_the_last_chunk_of_a_message_keeps_its_letter(store: ModelStore) -> None:
    """A message of two chunks whose second chunk's letter fails: the message is handled (its letter kept for the
    checkpoint), so no event of it is counted twice, and its events count once as consumed."""
    transport = _FailsOnceAt("e600")
    gate = default_gate(GateConfig())
    processor = transport.processor(store, gate=gate)
    await processor.start()
    records = _two_chunks()  # e600's dead letter fails once
    consumed, undelivered = _counter(CONSUMED), _counter(UNDELIVERED)
    with pytest.raises(ConnectionError):
        await processor.process(records)
    assert processor.pending_records == records
    assert (_counter(CONSUMED) - consumed, _counter(UNDELIVERED) - undelivered) == (700, 1)
    await _checkpoint_after_a_failed_letter(processor)
    assert processor.learner.events_learned == 698 and transport.acked == [0]
    assert gate.passed == 698 and (await store.gate_counts()) == {"future_timestamp": 2}
    quarantined = [letter["event"]["event_id"] for kind, letter in transport.dead_letters if kind == QUARANTINED]
    assert quarantined == ["e100", "e600"]


async def test_a_run_that_fails_part_way_is_handled_up_to_the_failing_message(store: ModelStore) -> None:
    """An event of a run fails (the learner raises): the messages before it are handled (their letters kept for the
    checkpoint), the agent retries from its message, and nothing is counted twice, as when each message is handled
    alone."""

    class LearnFailsOnceAt(OnlineLearner):
        """Learning the event on this item fails once (a fault in the learner, say)."""

        failing_item = "v3"

        def learn(self, user: str, item: str, *args: Any, **kwargs: Any) -> Any:
            if item == self.failing_item:
                type(self).failing_item = ""
                raise RuntimeError("the learner failed")
            return super().learn(user, item, *args, **kwargs)

    transport = Transport()
    processor = transport.processor(store, gate=default_gate(GateConfig()), new_learner=LearnFailsOnceAt)
    await processor.start()
    events = [{**_event(n), "item_id": f"v{n}"} for n in range(6)]
    events[1] = {**events[1], "ts": iso(3 * 86_400)}  # held (future_timestamp): its letter is kept
    records = [Record("events", 0, n, None, json.dumps(event).encode(), handle=n) for n, event in enumerate(events)]
    consumed = _counter(CONSUMED)
    with pytest.raises(RuntimeError, match="the learner failed"):
        await processor.process(records)  # at e3
    assert processor.pending_records == records[:3]
    # the records handled keep only their place and handle until the checkpoint; those to retry keep their bytes
    assert [(r.key, r.value) for r in records[:3]] == [(None, None)] * 3
    assert all(r.value is not None for r in records[3:])
    assert _counter(CONSUMED) - consumed == 3
    await processor.process(records[3:])  # the agent's retry: the messages not handled
    await _checkpoint_after_a_failed_letter(processor)
    assert processor.learner.events_learned == 5 and sorted(transport.acked) == list(range(6))
    assert (await store.gate_counts()) == {"future_timestamp": 1}  # no duplicates
    assert [letter["event"]["event_id"] for _, letter in transport.dead_letters] == ["e1"]
    assert _counter(CONSUMED) - consumed == 6

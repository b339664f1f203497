"""A dead letter the broker refuses is not lost: its event's offset is not acknowledged until the letter is in Kafka.

The producer's flush waits for its requests but does not raise when one failed. Here the broker refuses the letter
for real: the dead-letter topic's ``max.message.bytes`` is smaller than any letter. The worker must keep the
checkpoint (and the offsets it would acknowledge) back, send the letter again, and go on once the topic takes it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from recstream import local_services
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from stream.processor import LETTERS_PRUNE_AT, DeadLettersUndelivered, Record
from tests.clock import iso
from tests.conftest import Endpoint, create_topics, make_env, metric_value, wait_for
from tests.kafka_io import CheckpointReader, bootstrap, produce, read_topic
from tests.transport import Transport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOO_SMALL = "100"  # bytes: less than any record batch holding a letter
KAFKA_DEFAULT = "1048588"


def _admin(broker_url: str, action: str, topic: str, max_message_bytes: str) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(broker_url))
        await admin.start()
        try:
            config = {"max.message.bytes": max_message_bytes}
            if action == "create":
                await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
            else:
                await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=config)])
        finally:
            await admin.close()

    asyncio.run(run())


def _undelivered(metrics_url: str) -> float:
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return metric_value(text, "recstream_dead_letters_undelivered_total")


def test_a_refused_dead_letter_holds_the_checkpoint_back_until_it_is_delivered(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    metrics_port = local_services.free_port()
    env = {**make_env(redis_endpoint, broker_endpoint), "RECSTREAM_WORKER_METRICS_PORT": str(metrics_port)}
    broker, rejected = env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_REJECTED"]
    _admin(broker, "create", rejected, TOO_SMALL)
    create_topics(env)  # the other topics; the rejected one exists already
    worker = local_services.start_worker(env)
    processes.append(worker)
    checkpoints = CheckpointReader(env["RECSTREAM_REDIS_URL"], env["RECSTREAM_REDIS_PREFIX"])
    try:
        good = {"event_id": "after", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}
        # One key: one partition, the refused message first.
        produce(broker, env["RECSTREAM_TOPIC_EVENTS"], [(b"u1", b"{not json"), (b"u1", json.dumps(good).encode())])

        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # Refused once, sent again, refused again: two checkpoints were held back.
        wait_for(lambda: _undelivered(metrics_url) >= 2, 60, f"the letter to be refused twice (log: {worker.log_path})")
        assert checkpoints.version() is None, "a checkpoint acknowledged offsets while their dead letter was refused"
        assert read_topic(broker, rejected, 1, timeout=1) == []

        _admin(broker, "alter", rejected, KAFKA_DEFAULT)  # the operator fixes the topic
        wait_for(lambda: checkpoints.learned() == 1, 60, f"the checkpoint after the fix (log: {worker.log_path})")
        letters = [json.loads(value) for value in read_topic(broker, rejected, 2, timeout=10)]  # (one, not two)
        assert len(letters) == 1, letters
        assert letters[0]["payload"] == "{not json" and letters[0]["offset"] == 0
        assert worker.is_running()
    finally:
        checkpoints.close()


class FlakySender(Transport):
    """Sends dead letters with the outcomes it is given, in order: "ok" (delivered), "refused" (the delivery fails
    later, as a broker's refusal does), "cancelled" (the delivery is cancelled) or "error" (the send itself raises)."""

    def __init__(self, outcomes: list[str]) -> None:
        super().__init__()
        self.outcomes = outcomes
        self.delivered: list[bytes] = []

    async def dead_letter(self, _kind: str, _key: bytes | None, value: bytes) -> asyncio.Future:  # type: ignore[override]
        outcome = self.outcomes.pop(0)
        if outcome == "error":
            raise ConnectionError("send failed")
        delivery = asyncio.get_running_loop().create_future()
        if outcome == "ok":
            self.delivered.append(value)
            delivery.set_result(None)
        elif outcome == "cancelled":
            delivery.cancel()
        else:
            delivery.set_exception(RuntimeError("refused by the broker"))
        return delivery


async def test_undelivered_letters_are_sent_again_and_offsets_wait_for_all_of_them(redis_endpoint: Endpoint) -> None:
    """Two refused messages; their letters are refused, then one is sent again and the other's send raises, then
    that one is sent again: only when both are delivered does a checkpoint acknowledge their offsets."""
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"dl-{uuid.uuid4().hex[:8]}"))
        sender = FlakySender(["refused", "refused", "ok", "error", "ok"])
        processor = sender.processor(store)
        await processor.start()
        records = sender.records([{"user_id": "u1"}, {"user_id": "u2"}])  # no event id: refused as malformed
        await processor.process(records)

        with pytest.raises(DeadLettersUndelivered, match=r"2 dead letter.*send failed.*1 sent again"):
            await processor.checkpoint()  # both refused: sent again, the first delivered, the second's send raises
        assert sender.acked == [] and len(sender.delivered) == 1
        encoded = []
        snapshot = processor._snapshot
        processor._snapshot = lambda learner: encoded.append(1) or snapshot(learner)  # type: ignore[method-assign]
        with pytest.raises(DeadLettersUndelivered, match=r"1 dead letter.*1 sent again"):
            await processor.checkpoint()  # the second sent again (delivered): confirmed at the next attempt
        assert sender.acked == [] and len(sender.delivered) == 2
        assert encoded == []  # while letters are refused, an attempt fails before it encodes a snapshot
        version = await processor.checkpoint()
        assert version is not None and sender.acked == [0, 1]
        assert sorted(json.loads(v)["offset"] for v in sender.delivered) == [0, 1] and sender.outcomes == []
    finally:
        await client.aclose()


async def _processor_with(sender: FlakySender, client: aioredis.Redis):
    store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"dl-{uuid.uuid4().hex[:8]}"))
    processor = sender.processor(store)
    await processor.start()
    return processor


async def test_a_cancelled_delivery_is_sent_again(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        sender = FlakySender(["cancelled", "ok"])
        processor = await _processor_with(sender, client)
        await processor.process(sender.records([{"user_id": "u1"}]))
        with pytest.raises(DeadLettersUndelivered, match=r"1 dead letter.*cancelled"):
            await processor.checkpoint()
        assert sender.acked == []
        assert await processor.checkpoint() is not None and sender.acked == [0] and len(sender.delivered) == 1
    finally:
        await client.aclose()


async def test_delivered_letters_are_forgotten_before_the_checkpoint_and_a_refused_one_is_kept(
    redis_endpoint: Endpoint,
) -> None:
    """Between two checkpoints the worker keeps only the letters not known to be delivered (memory under attack)."""
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        n = 3 * LETTERS_PRUNE_AT
        sender = FlakySender(["ok"] * 10 + ["refused"] + ["ok"] * (n - 11) + ["ok"])
        processor = await _processor_with(sender, client)
        await processor.process(sender.records([{"user_id": f"u{i}"} for i in range(n)]))
        kept = processor._pending.letters
        assert len(kept) < LETTERS_PRUNE_AT and any(json.loads(letter[2])["offset"] == 10 for _, letter in kept)
        with pytest.raises(DeadLettersUndelivered, match="1 dead letter"):
            await processor.checkpoint()  # the refused one, sent again
        assert await processor.checkpoint() is not None and len(sender.acked) == n
        assert sorted(json.loads(v)["offset"] for v in sender.delivered) == list(range(n))
    finally:
        await client.aclose()


class SharedDelivery(Transport):
    """Sends each call's letters as one batch with one delivery, settled by the test (as DeadLetterSender's is)."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[asyncio.Future] = []
        self.calls: list[int] = []

    async def send_letters(self, letters: Any) -> list[Any]:
        delivery = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        self.calls.append(len(letters))
        return [delivery] * len(letters)


async def test_a_failed_batch_sends_each_of_its_letters_again_and_a_cancelled_checkpoint_leaves_it_pending(
    redis_endpoint: Endpoint,
) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"dl-{uuid.uuid4().hex[:8]}"))
        sender = SharedDelivery()
        processor = sender.processor(store)
        await processor.start()
        # one batch message with three refused elements: one chunk, one call, one shared delivery
        await processor.process([Record("events", 0, 0, None, json.dumps([{"n": n} for n in range(3)]).encode(), 0)])
        assert sender.calls == [3]
        sender.deliveries[0].set_exception(RuntimeError("refused by the broker"))
        with pytest.raises(DeadLettersUndelivered, match=r"3 dead letter.*3 sent again"):
            await processor.checkpoint()
        assert sender.calls == [3, 1, 1, 1] and sender.acked == []

        # a checkpoint cancelled while it waits for the deliveries does not cancel them (each is shared by a batch)
        waiting = asyncio.create_task(processor.checkpoint())
        deadline = asyncio.get_running_loop().time() + 10
        while not sender.deliveries[1]._callbacks and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # until the checkpoint waits on the first delivery
        assert sender.deliveries[1]._callbacks and not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not any(d.done() for d in sender.deliveries[1:])
        for delivery in sender.deliveries[1:]:
            delivery.set_result(None)
        assert await processor.checkpoint() is not None and sender.acked == [0] and sender.calls == [3, 1, 1, 1]
    finally:
        await client.aclose()

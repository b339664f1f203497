"""The Faust app: one agent on the events topic feeding :class:`stream.processor.EventProcessor`.

Values are taken as raw bytes (``value_serializer="raw"``) and decoded by the processor, so
a malformed message can never crash Faust's deserializer: it is dead-lettered with a reason.
Each taken message gets an extra reference (``incref``) so Faust cannot commit its offset
when the batch ends; the processor releases it after the checkpoint that covers it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import faust

from recstream import components, metrics
from recstream.settings import Settings
from stream.processor import QUARANTINED, REJECTED, EventProcessor, Record, overrides_from_headers

log = logging.getLogger(__name__)

TAKE_WITHIN_SECONDS = 0.05


def create_app(settings: Settings) -> tuple[faust.App, EventProcessor]:
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        store="memory://",
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=max(settings.broker_session_timeout / 3, 0.5),
        broker_rebalance_timeout=settings.broker_session_timeout,
        stream_wait_empty=False,
        producer_acks=-1,
        broker_credentials=components.faust_broker_credentials(settings),
    )
    events_topic = app.topic(
        settings.topic_events, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions
    )
    dead_letter_topics = {
        REJECTED: app.topic(settings.topic_rejected, key_type=bytes, value_type=bytes, partitions=1),
        QUARANTINED: app.topic(settings.topic_quarantined, key_type=bytes, value_type=bytes, partitions=1),
    }

    redis = components.redis_client(settings)
    store = components.model_store(settings, redis)

    async def dead_letter(kind: str, key: bytes | None, value: bytes) -> Any:
        return await dead_letter_topics[kind].send(key=key, value=value)

    async def flush() -> None:
        await app.producer.flush()

    def ack(event: Any) -> None:
        event.ack()

    processor = EventProcessor(
        store=store,
        new_learner=lambda: components.new_learner(settings),
        learner_from_bytes=lambda blob: components.learner_from_bytes(settings, blob),
        dead_letter=dead_letter,
        flush=flush,
        ack=ack,
        gate=components.quality_gate(settings),
        guard=components.model_guard(settings),
        checkpoint_every_events=settings.checkpoint_every_events,
        checkpoint_interval_seconds=settings.checkpoint_interval_seconds,
    )

    @app.agent(events_topic, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        if not processor.ready:
            await processor.start()
        # Faust's Monitor sensor records per-message statistics we do not use (we export our own
        # Prometheus metrics); measured at about a fifth of the worker's time per event.
        with contextlib.suppress(KeyError):
            app.sensors.remove(app.monitor)
        try:
            async for batch in stream.take_events(settings.batch_max_events, within=TAKE_WITHIN_SECONDS):
                records = []
                for event in batch:
                    event.message.incref()  # released by processor.checkpoint()
                    message = event.message
                    records.append(
                        Record(
                            message.topic,
                            message.partition,
                            message.offset,
                            message.key,
                            message.value,
                            handle=event,
                            overrides=overrides_from_headers(message.headers),
                        )
                    )
                await processor.process(records)
                if processor.checkpoint_due():
                    await _checkpoint_quietly(processor)
        finally:
            log.info("agent stopping: writing a final checkpoint")
            await _checkpoint_quietly(processor)

    @app.timer(interval=settings.checkpoint_interval_seconds)
    async def checkpoint_when_idle() -> None:
        if processor.ready and processor.checkpoint_due():
            await _checkpoint_quietly(processor)
        _export_lag(app, processor, settings.topic_events)

    @app.on_before_shutdown.connect
    async def final_checkpoint(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        await _checkpoint_quietly(processor)

    return app, processor


def _export_lag(app: faust.App, processor: EventProcessor, topic: str) -> None:
    """Consumer lag per partition: the broker's high watermark minus the next offset to learn."""
    consumer = app.consumer
    try:
        assigned = list(consumer.assignment())
    except Exception:  # noqa: BLE001 - not assigned yet (rebalancing): nothing to report
        return
    for tp in assigned:
        if tp.topic != topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - no fetch response for this partition yet
            continue
        if highwater is not None:
            lag = max(0, highwater - processor.next_offsets.get((tp.topic, tp.partition), 0))
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(lag)


async def _checkpoint_quietly(processor: EventProcessor) -> None:
    """A failed checkpoint is logged and retried later; its events stay unacknowledged, so none are lost."""
    try:
        await processor.checkpoint()
    except Exception:  # noqa: BLE001 - logged inside; the worker keeps going
        pass


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in the foreground until SIGTERM/SIGINT (which checkpoint before exit)."""
    import asyncio

    from prometheus_client import start_http_server

    from stream.topics import ensure_topics

    # Faust runs on the thread's current loop: create topics on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    app, _ = create_app(settings)
    worker = faust.Worker(app, loglevel="INFO", redirect_stdouts=False)
    worker.execute_from_commandline()

"""The live page in headless Chromium against a running service with traffic: numbers move, rollback works.

Writes a screenshot to ``$RECSTREAM_TEST_ARTIFACTS`` (default ``test-artifacts/``) as a test artefact.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from recstream import local_services
from tests.cdp import Browser, open_page
from tests.clock import iso
from tests.conftest import TEST_API_KEY, api_client, create_topics, require_tool, wait_for
from tests.kafka_io import CheckpointReader, bootstrap, produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ARTIFACTS = Path(os.environ.get("RECSTREAM_TEST_ARTIFACTS", "test-artifacts"))


def _chromium() -> None:
    require_tool("chromium", "chromium")


def test_live_page_shows_the_stream_and_rolls_back(
    service_env: dict[str, str], processes: list[local_services.LocalService]
) -> None:
    _chromium()
    broker, topic = service_env["RECSTREAM_BROKER_URL"], service_env["RECSTREAM_TOPIC_EVENTS"]
    checkpoints = CheckpointReader(service_env["RECSTREAM_REDIS_URL"], service_env["RECSTREAM_REDIS_PREFIX"])
    # Before anything produces: a topic the traffic's producer auto-creates has the broker's one partition, and
    # the end offsets of the partitions the run expects (below) can then never be read (seen in CI at 8257581).
    create_topics(service_env)
    worker = local_services.start_worker(service_env)
    processes.append(worker)
    api = local_services.start_api(service_env)
    processes.append(api)
    client = api_client(api, timeout=10)

    stop_traffic = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop_traffic.is_set():
            # 60 users, each liking once per 6 s of event time: under the gate's per-user limit (30
            # likes a minute), so the learned count keeps moving while the traffic runs. With 9 users
            # every one was held after 30 likes, ~4 s in, and a page slower than that saw no movement.
            batch = [
                {
                    "event_id": f"b{k}",
                    "user_id": f"u{k % 60}",
                    "item_id": f"v{k % 17}",
                    "type": "like",
                    "ts": iso(k * 0.1),
                }
                for k in range(n, n + 20)
            ]
            produce_events(broker, topic, batch)
            n += 20
            stop_traffic.wait(0.3)

    publisher = threading.Thread(target=traffic, daemon=True)
    publisher.start()
    browser = Browser()

    async def drive() -> tuple[int, int]:
        ws, page = await open_page(browser)
        try:
            await page.send("Page.navigate", url=f"{api.url}/dashboard")
            await page.wait_for("document.readyState === 'complete'", 10, "the page to load")
            # The operator types the admin key into the form and connects.
            await page.evaluate(
                f"document.getElementById('key').value = {json.dumps(TEST_API_KEY)};"
                "document.getElementById('login').requestSubmit(); true"
            )
            first = await page.wait_for(
                "(t => t && t !== '–' ? Number(t.replace(/[^0-9]/g, '')) : 0)"
                "(document.getElementById('t-learned').textContent)",
                30,
                "the page to show events learned",
            )
            await page.wait_for(
                f"Number(document.getElementById('t-learned').textContent.replace(/[^0-9]/g, '')) > {first}",
                30,
                "the events-learned number to move",
            )
            await page.wait_for("document.querySelectorAll('#versions tbody tr').length >= 2", 30, "two versions")
            stop_traffic.set()
            publisher.join(10)
            assert not publisher.is_alive(), "the traffic thread did not stop"
            # Quiet stream: once the worker has checkpointed every message in the topic, it writes no
            # further version (nothing is pending), so the current version is final.
            end = await _end_offsets(broker, topic, int(service_env["RECSTREAM_TOPIC_PARTITIONS"]))
            wait_for(lambda: checkpoints.meta().get("offsets") == end, 30, f"the worker to checkpoint up to {end}")
            before = checkpoints.version()
            await page.wait_for(
                f"document.getElementById('t-model').textContent.startsWith('v{before} ')", 20, "the current version"
            )
            await page.evaluate("setTimeout(() => document.getElementById('rollback').click(), 0); true")
            asked = await page.answer_prompt("rolled back by the browser test")
            assert "roll back" in asked
            after_text = await page.wait_for(
                f"(t => t.startsWith('v') && !t.startsWith('v{before} ') ? t : '')"
                "(document.getElementById('t-model').textContent)",
                20,
                "the page to show the rolled-back version",
            )
            said = await page.wait_for(
                "(t => t.includes('done') ? t : '')(document.getElementById('action').textContent)", 20, "the answer"
            )
            after = int(str(after_text).split(" ")[0][1:])
            assert said == f"roll back: done, v{after} is current", said  # the page says where it landed
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(str(ARTIFACTS / "dashboard.png"))
            return before, after
        finally:
            await ws.close()

    try:
        before, after = asyncio.run(drive())
        assert after < before
        models = client.get("/v1/models").json()
        assert models["current"] == after
        assert models["promotions"][-1]["reason"] == "rolled back by the browser test"
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        stop_traffic.set()
        browser.stop()
        client.close()
        checkpoints.close()


async def _end_offsets(broker_url: str, topic: str, n_partitions: int) -> dict[str, int]:
    """The topic's end offsets, keyed as a checkpoint keys its offsets (partitions never written to left out)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker_url), enable_auto_commit=False)
    await consumer.start()
    try:
        end = await consumer.end_offsets([TopicPartition(topic, p) for p in range(n_partitions)])
    finally:
        await consumer.stop()
    return {f"{tp.topic}/{tp.partition}": offset for tp, offset in end.items() if offset}


def test_the_browser_leaves_no_directory_behind() -> None:
    """Stopped by a signal, Chromium leaves its temporary directories (``org.chromium.Chromium.*``): the test
    browser gives it a TMPDIR inside its profile, which it removes."""
    _chromium()
    tmp = Path(tempfile.gettempdir())

    def ours() -> set[str]:
        return {p.name for p in tmp.iterdir() if p.name.startswith(("org.chromium.", "recstream-chromium-"))}

    before = ours()
    browser = Browser()
    try:
        assert ours() - before, "the browser's profile is not in the temporary directory"
    finally:
        browser.stop()
    assert ours() - before == set()

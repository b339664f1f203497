"""Faust's aiokafka consumer with fetch limits of our choosing (``RECSTREAM_BROKER_FETCH_*``).

Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and offers no setting for it. aiokafka
keeps one fetch in flight per broker, and leaves out of it the partitions whose fetched records the worker has
not taken yet; the broker holds that fetch until one of its partitions has data, or for the wait. So after
any pause of the worker (a whole snapshot encoded, a long checkpoint) the fetch in flight covers only the
partitions that were quiet meanwhile, and the ones just drained wait behind it: with a few messages a second
per partition, measured on the grown bench model under 5,000 ev/s, the worker then sat idle ~1 s and a
probe's event was learned 2.1-2.4 s after its POST. With a 0.1 s wait no probe took over 0.71 s (114 probes).
A quiet worker then sends up to ten empty fetches a second, which costs the broker next to nothing.

The broker also holds a fetch until it has ``RECSTREAM_BROKER_FETCH_MIN_BYTES`` (64 KiB) for it, within the same
wait; aiokafka's default of 1 byte answers every produce at once. Under a steady load that is a fetch per
producer request (~100 a second from the bench's background load at 5,000 ev/s), each one handled by the
consumer's thread, which holds the GIL the worker learns with, and by the broker. Measured at 5,000 ev/s (worker
and broker alone, three runs each): the worker's CPU per event 114-131 us instead of 133-188, the broker's CPU
0.32-0.40 cores instead of 0.45-0.59. The price is latency when traffic is light: a fetch then waits out the
wait (0.1 s) before it returns what little there is.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


def use_fetch_limits(app: faust.App, seconds: float, min_bytes: int) -> None:
    """Make ``app``'s consumer ask the broker to answer a fetch once it has ``min_bytes`` for it, or within
    ``seconds`` with whatever it has (nothing included)."""
    wait_ms = max(1, round(seconds * 1000))

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # read when it starts (its fetcher is made then)
            consumer._fetch_max_wait_ms = wait_ms
            consumer._fetch_min_bytes = min_bytes
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = Consumer  # type: ignore[misc]  # the transport creates the app's consumer from it

"""Garbage-collector settings of recstream's long-running processes.

Every recstream process imports River's anomaly detectors, which import ``scipy.stats``: some
60,000 objects that live as long as the process. CPython's full collection (of the oldest
generation) walks every one of them each time: 50-100 ms in the API process, measured 16 times
in 7 s under load, which *was* the p99 of recommendations at 32 connections (about 100 ms,
against a p50 of 16 ms). :func:`freeze_startup_objects` moves everything alive at startup
(modules, the app) into the permanent generation, which collections skip; objects created later
(models, requests, the gate's state) are collected as before.
"""

from __future__ import annotations

import gc

#: The worker allocates many short-lived objects per event (decoded events, gate features) while
#: holding a large, long-lived model; with CPython's default generation-0 threshold (700) the
#: collector runs every few events and its older generations scan the model. Measured with the
#: processor alone on batch messages: 10-20% more events/s with this threshold.
WORKER_GC_THRESHOLD = (50_000, 20, 100)


_frozen = False


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object alive now from future collections (see the module doc).

    Once per process: a second app in the same process (tests) does not freeze what the first
    one left behind.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()

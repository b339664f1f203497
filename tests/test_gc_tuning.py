"""The startup freeze takes the imported libraries out of every later full collection."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
import api.app, stream.app  # what the API and the worker import
from recstream.gc_tuning import freeze_startup_objects
before = len(gc.get_objects())
freeze_startup_objects()
freeze_startup_objects()  # once per process: the second call changes nothing
print(json.dumps({"before": before, "after": len(gc.get_objects()), "frozen": gc.get_freeze_count()}))
"""


def test_after_the_freeze_a_full_collection_walks_almost_nothing_of_the_imports() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    # tens of thousands of objects (scipy.stats through River's anomaly detectors, FastAPI, Faust) ...
    assert counts["before"] > 50_000
    # ... are frozen, and the collector tracks only what is created afterwards
    assert counts["frozen"] >= counts["before"] - 1_000
    assert counts["after"] < 1_000

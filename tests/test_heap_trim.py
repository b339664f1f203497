"""The worker's heap trim gives freed memory back to the OS (in a fresh process: RSS is per process)."""

from __future__ import annotations

import json
import subprocess
import sys

# 1. Free one 16 MB block that glibc mapped on its own: glibc's threshold for such mappings rises
#    to its size (up to 32 MB), so the next blocks of 1 MB come from the heap (as a growing model's arrays and a
#    checkpoint's intermediates do).
# 2. Allocate 120 of them with a small block after each (so that freed ones cannot shrink the heap
#    from its top), free the big ones, and read RSS: the pages stay with the process.
# 3. trim_heap(), and read RSS again.
PROBE = """
import json
from bench.common import rss_bytes
from recstream.heap_trim import malloc_trim, trim_heap
big = bytearray(16 << 20)
del big
blocks, pins = [], []
for _ in range(120):
    blocks.append(bytearray(1 << 20))
    pins.append(bytearray(64 << 10))
held = rss_bytes()
del blocks
freed = rss_bytes()
trimmed = trim_heap()
after = rss_bytes()
print(json.dumps({"available": malloc_trim is not None, "trimmed": trimmed,
                  "held": held, "freed": freed, "after": after, "pins": len(pins)}))
"""


def test_trim_returns_freed_heap_pages_that_free_alone_keeps() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["available"] and r["trimmed"], "glibc's malloc_trim not found (this test expects Linux with glibc)"
    mb = 1 << 20
    assert r["held"] - r["freed"] < 20 * mb, "freeing alone already returned the pages: the probe tests nothing"
    assert r["freed"] - r["after"] > 80 * mb, r

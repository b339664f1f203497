"""Which model versions a checkpoint deletes: a pure function of the version numbers and their times.

The worker writes a version at every checkpoint (about twice a second by default), so keeping
only the newest few would let an operator roll back seconds, not minutes. Kept are:

* every pinned version (an operator's explicit choice);
* the newest ``keep_latest`` versions (``RECSTREAM_MODEL_RETENTION``);
* the parent of the newest version (what ``recstream models rollback`` promotes, even when it is
  an old version an operator promoted);
* the version the latest promotion replaced, while it is the latest (what undoing it promotes: the checkpoint adds it
  to ``pinned``, store/model_store.py);
* the first version written in each of the last ``spaced_count`` periods of ``spaced_every``
  seconds (``RECSTREAM_MODEL_KEEP_SPACED`` × ``RECSTREAM_MODEL_KEEP_EVERY_SECONDS``: one version
  per 5 minutes for the last hour by default); its first *whole* version when it has one (a kept
  delta version keeps the chain it is built from, ``bases``: a whole one costs one snapshot). A
  period's first (whole) version stays the same as newer versions arrive, so what is kept does
  not churn. Versions without a recorded time (written before times were recorded) are kept by
  count only.

>>> stale(range(1, 9), {v: 100.0 * v for v in range(1, 9)}, pinned=(), keep_latest=1, parent=None,
...       spaced_every=400, spaced_count=2, now=800, bases={4: 3, 5: 4})  # 400-799: v6 is its first whole
[1, 2, 3, 4, 5, 7]

>>> times = {v: 100.0 * v for v in range(1, 31)}   # v1..v30, one every 100 s; now is v30's time
>>> deleted = stale(range(1, 31), times, pinned={2}, keep_latest=3, parent=29,
...                 spaced_every=600, spaced_count=3, now=3_000)
>>> sorted(set(range(1, 31)) - set(deleted))        # pinned, first of each of 3 periods, newest 3
[2, 18, 24, 28, 29, 30]
>>> stale(range(1, 31), times, pinned=(), keep_latest=3, parent=12, spaced_every=0, spaced_count=0, now=3_000)[-4:]
[24, 25, 26, 27]
>>> 12 in stale(range(1, 31), times, pinned=(), keep_latest=3, parent=12, spaced_every=0, spaced_count=0, now=3_000)
False
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping


def stale(
    versions: Iterable[int],
    times: Mapping[int, float],
    pinned: Collection[int],
    keep_latest: int,
    parent: int | None,
    spaced_every: float,
    spaced_count: int,
    now: float,
    bases: Mapping[int, int] | None = None,
) -> list[int]:
    """The versions to delete, oldest first (see the module doc for what is kept; the chains of the kept
    delta versions are the caller's to keep)."""
    bases = bases or {}
    candidates = sorted(v for v in set(versions) if v not in pinned)
    keep = set(candidates[-keep_latest:]) if keep_latest > 0 else set()
    if parent is not None:
        keep.add(parent)
    if spaced_every > 0 and spaced_count > 0:
        oldest_period = math.floor(now / spaced_every) - spaced_count + 1
        first_of_period: dict[int, int] = {}
        first_whole_of_period: dict[int, int] = {}
        for version in candidates:
            written = times.get(version)
            if written is None:
                continue
            period = math.floor(written / spaced_every)
            if period >= oldest_period:
                first_of_period.setdefault(period, version)
                if version not in bases:
                    first_whole_of_period.setdefault(period, version)
        keep.update({**first_of_period, **first_whole_of_period}.values())
    return [v for v in candidates if v not in keep]

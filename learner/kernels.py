"""Compiled loops for ranking a whole catalogue and for the co-occurrence update, when they are built; numpy's
operations (and Python's) otherwise.

``learner/_kernels.c`` is built with the package (``pip install``, an optional C extension: where
no C compiler is found the install goes on without it). Each kernel computes the same numbers as
the code it stands in for, with the same floating-point operations in the same order (tests
compare them). The ranking loops make one or two passes over the catalogue where numpy makes five
or six, which is what a request over 100,000 items or more spends its time on; the update
(``PoolRows``, used by :mod:`learner.sparse_rows`) finds each entry in one hash table instead of a
dict per row, which is what learning spends its time on. ``RateCore``, ``SurgeCore`` and ``AnomalyCore`` are
the quality gate's user-rate, item-surge and anomaly rules (:mod:`learner.gate.behaviour` uses them when they
are built).

>>> describe().startswith("ranking and learning with")
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

try:
    from learner import _kernels as _built
except ImportError:  # not built (no C compiler at install time): numpy does the same work
    _built = None

_use: ModuleType | None = _built

if _built is not None:  # a model's packed ids (learner.id_index) are a read-only sequence of str: random.sample etc.
    Sequence.register(_built.IdTable)


def compiled() -> ModuleType | None:
    """The compiled kernels, or None when they are not built (or switched off by :func:`numpy_only`)."""
    return _use


def describe() -> str:
    """One line for a process's log at start: how it ranks and learns."""
    if _use is not None:
        vectors = " (catalogue passes four scores at a time: AVX2)" if _use.vector_loops() else ""
        return f"ranking and learning with the compiled loops (learner/_kernels.c){vectors}"
    if _built is None:
        return (
            "ranking and learning without the compiled loops: learner/_kernels.c is not built (no C compiler when "
            "recstream was installed); install gcc and run scripts/setup.sh again for faster recommendations and "
            "learning"
        )
    return "ranking and learning without the compiled loops (switched off)"


@contextmanager
def numpy_only() -> Iterator[None]:
    """Within the block, rank with numpy only and learn in Python (to compare both, or to measure the difference);
    co-occurrence rows bound to the compiled update before the block use it until they next grow (the same numbers
    either way: learner.sparse_rows). Events still read their timestamps with the compiled loop
    (``Event.ts_seconds``: the same float as ``datetime.timestamp``)."""
    global _use
    saved, _use = _use, None
    try:
        yield
    finally:
        _use = saved

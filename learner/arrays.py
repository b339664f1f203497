"""Growable numpy arrays: amortised O(1) appends for per-user and per-item rows (:func:`ensure_rows`), and
one-dimensional arrays that grow and shrink in place (:func:`mapped_empty`, :func:`resize_mapped`: the
co-occurrence pool's, :mod:`learner.sparse_rows`).

An array that grows in place lives in an anonymous private memory map of its own. Growing it asks the kernel to
extend the map (``mremap``): the entries it holds are neither copied nor touched, and the new room costs nothing
until it is written; shrinking it hands the pages past its new end back at once. A numpy array grown the usual way
is copied into fresh memory instead, and every page of the copy is faulted in at once: growing the pool of a grown
model (two arrays of ~15M entries) took 0.07-0.46 s on a half-speed VM, with the GIL held, each time the pool grew
by a quarter (``/tmp/s44/pause10.py``); in place it takes under 10 ms.

A map cannot change its size while any array made from it is alive elsewhere (a view, a compiled kernel's
buffer): Python's ``mmap`` refuses with ``BufferError``, and :func:`resize_mapped` then copies into a new map, as
numpy would. So a view kept by mistake costs a copy, never a dangling pointer. Where there is no ``mremap`` (not
Linux), it copies too.

>>> a = ensure_rows(np.zeros((0, 2), dtype=np.float32), 3)
>>> a.shape[0] >= 4, a.dtype
(True, dtype('float32'))
>>> class Pool: ...
>>> pool = Pool()
>>> pool.cols = mapped_empty(4, np.int32)
>>> pool.cols[:] = [1, 2, 3, 4]
>>> resize_mapped(pool, "cols", 6, keep=3)
>>> len(pool.cols), pool.cols[:3].tolist(), map_of(pool.cols) is not None
(6, [1, 2, 3], True)
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

#: Maps at least this large are asked for transparent huge pages (``MADV_HUGEPAGE``), as numpy asks for its own
#: arrays from 4 MiB.
HUGE_PAGES_FROM = 4 << 20

_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_MAPPED = hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")


def mapped_empty(size: int, dtype: Any) -> np.ndarray:
    """An array of ``size`` entries (zeros: fresh pages) in a memory map of its own, that :func:`resize_mapped`
    resizes in place; a plain numpy array where memory maps are not available."""
    dtype = np.dtype(dtype)
    if not _MAPPED:
        return np.zeros(size, dtype=dtype)
    memory = mmap.mmap(-1, max(size, 1) * dtype.itemsize, flags=_FLAGS)
    _advise(memory)
    return np.frombuffer(memory, dtype=dtype, count=size)


def resize_mapped(owner: object, name: str, size: int, keep: int) -> None:
    """Make ``owner.<name>`` (a one-dimensional array) ``size`` entries long, its first ``keep`` entries kept and
    the rest undefined: in place when it is a :func:`mapped_empty` array that nothing else holds a view of (shrinking it
    hands its tail's pages back); else copied into a new one. The caller must hold no reference to the array itself
    (only ``owner`` does), or the resize becomes a copy. Should it fail (out of memory, interrupted), ``owner.<name>``
    is the array it was."""
    array = getattr(owner, name)
    dtype = array.dtype
    memory = map_of(array)
    if memory is not None:
        setattr(owner, name, None)
        del array  # the last view of the map, unless something else holds one
        try:
            memory.resize(max(size, 1) * dtype.itemsize)
        except BaseException as error:
            setattr(owner, name, np.frombuffer(memory, dtype=dtype))  # the map as it was: nothing lost
            # a view alive elsewhere (BufferError); no mremap on this system (SystemError; AttributeError from
            # Python 3.15, which has no resize there); the system's refusal (OSError), or a map newer Pythons will
            # not resize (ValueError): copy as numpy would
            if not isinstance(error, BufferError | SystemError | AttributeError | OSError | ValueError):
                raise
        else:
            _advise(memory)
            setattr(owner, name, np.frombuffer(memory, dtype=dtype, count=size))
            return
        array = getattr(owner, name)
    grown = mapped_empty(size, dtype)
    grown[:keep] = array[:keep]
    setattr(owner, name, grown)


def map_of(array: np.ndarray) -> mmap.mmap | None:
    """The memory map ``array`` is the whole of (a :func:`mapped_empty` array, or one :func:`resize_mapped`
    made), else None."""
    base = array.base
    if type(base) is memoryview and type(base.obj) is mmap.mmap and array.nbytes == base.nbytes == len(base.obj):
        return base.obj
    return None


def _advise(memory: mmap.mmap) -> None:
    if len(memory) >= HUGE_PAGES_FROM and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages
            pass


def ensure_rows(array: np.ndarray, row: int) -> np.ndarray:
    """``array`` itself if it has a row ``row``, else a copy grown (doubling, zero-filled) to hold it."""
    if row < len(array):
        return array
    grown = np.zeros((max(16, 2 * len(array), row + 1), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown

"""Arrays that grow in place: per-user and per-item rows that double as ids come (:func:`grow_rows`: the factor
models' factors, the item counts), and one-dimensional arrays that grow and shrink (:func:`mapped_empty`,
:func:`resize_mapped`: the co-occurrence pool's, :mod:`learner.sparse_rows`).

An array that grows in place lives in an anonymous private memory map of its own. Growing it asks the kernel to
extend the map (``mremap``): the entries it holds are neither copied nor touched, and the new room costs nothing
until it is written; shrinking it hands the pages past its new end back at once. A numpy array grown the usual way
is copied into fresh memory instead, and every page of the copy is faulted in at once: growing the pool of a grown
model (two arrays of ~15M entries) took 0.07-0.46 s on a half-speed VM, with the GIL held, each time the pool grew
by a quarter (``/tmp/s44/pause10.py``); in place it takes under 10 ms. An ``implicit_mf`` model's factors, doubled
by a copy as users and items came, held one ``learn()`` call for up to ~0.1 s at 500,000 users and items
(``/tmp/s45/mfpause.py``).

A map cannot change its size while any array made from it is alive elsewhere (a view, a compiled kernel's
buffer): Python's ``mmap`` refuses with ``BufferError``, and :func:`resize_mapped` then copies into a new map, as
numpy would. So a view kept by mistake costs a copy, never a dangling pointer; the copies are counted
(:func:`copied_resizes`, exported as ``recstream_array_copies_total``), so such a mistake shows. (An array made with
``np.ndarray(buffer=map)`` holds no such export, and the map would resize under it: arrays here are made with
``np.frombuffer``, which holds one.) Where there is no ``mremap`` (not Linux), it copies too.

Maps that grow are not asked for transparent huge pages (``MADV_HUGEPAGE``, which numpy asks for its own arrays
from 4 MiB; :func:`resize_mapped` takes the advice back from a map it resizes in place). Where the kernel compacts
memory for the pages asked (``defrag`` set to ``madvise``, its default), the first write to each new 2 MiB page
waited for it: the ``implicit_mf`` model above stalled ~11 ms every 16,384 new users and items (a page of factors each),
and learned no faster (500,000 of each: 33.9-34.8 s against 31.1-32.5 s); grown after a load, 13 calls over
5 ms against 5 (``/tmp/s45/loadgrow.py 150000 400000``). The co-occurrence pool learned no faster with them either
(1.2M events of the grown stream: 26.5-29.3 s against 25.3-26.4 s, ``/tmp/s44/pause10.py``). A copy made whole
(:func:`mapped_copy`: a loaded model's arrays) is asked for them, as numpy would: a scan of 1M x 32 factors, as
an API process ranks a factor model's catalogue, took ~10% longer on 4 KiB pages (``/tmp/s45/thp.py``).

>>> class Model: ...
>>> model = Model()
>>> model.factors = np.zeros((0, 2), dtype=np.float32)
>>> grow_rows(model, "factors", 3)
>>> model.factors.shape, model.factors.dtype, map_of(model.factors) is not None
((16, 2), dtype('float32'), True)
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

#: A copy this large is asked for transparent huge pages (as numpy asks for its own arrays from 4 MiB).
HUGE_PAGES_FROM = 4 << 20

_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_MAPPED = hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")

_copied = 0  # resizes of a map that became copies (copied_resizes)


def copied_resizes() -> int:
    """How many times in this process :func:`resize_mapped` copied an array that lives in a map of its own, instead of
    resizing the map in place: a view of it was alive elsewhere (a bug: each such copy held its caller while it
    copied, ~0.1-0.5 s for a grown model's pool), or the system would not resize it (no ``mremap``). The worker and the
    API export it as ``recstream_array_copies_total``; it stays 0 where nothing keeps a view by mistake."""
    return _copied


def mapped_empty(size: int, dtype: Any, row_shape: tuple[int, ...] = ()) -> np.ndarray:
    """An array of ``size`` entries (zeros: fresh pages) in a memory map of its own, that :func:`resize_mapped`
    resizes in place; a plain numpy array where memory maps are not available. Each entry is a row of
    ``row_shape`` (none: a one-dimensional array)."""
    dtype = np.dtype(dtype)
    if not _MAPPED:
        return np.zeros((size, *row_shape), dtype=dtype)
    memory = mmap.mmap(-1, max(size * _row_bytes(dtype, row_shape), 1), flags=_FLAGS)
    return _over(memory, dtype, size, row_shape)


def resize_mapped(owner: object, name: str, size: int, keep: int) -> None:
    """Make ``owner.<name>`` (an array of rows) ``size`` rows long, its first ``keep`` rows kept and the rest
    undefined: in place when it is a :func:`mapped_empty` array that nothing else holds a view of (shrinking it
    hands its tail's pages back); else copied into a new one. The caller must hold no reference to the array itself
    (only ``owner`` does), or the resize becomes a copy. Should it fail (out of memory, interrupted), ``owner.<name>``
    is the array it was."""
    array = getattr(owner, name)
    dtype, row_shape = array.dtype, array.shape[1:]
    memory = map_of(array)
    if memory is not None:
        row_bytes = _row_bytes(dtype, row_shape)
        whole = len(memory) // row_bytes
        setattr(owner, name, None)
        del array  # the last view of the map, unless something else holds one
        resized = False
        try:
            memory.resize(max(size * row_bytes, 1))
            resized = True
        except (BufferError, SystemError, AttributeError, OSError, ValueError):
            # a view alive elsewhere (BufferError); no mremap on this system (SystemError; AttributeError from
            # Python 3.15, which has no resize there); the system's refusal (OSError), or a map newer Pythons will
            # not resize (ValueError): copy as numpy would, below
            pass
        finally:  # also when interrupted: the map as it is, nothing lost
            setattr(owner, name, _over(memory, dtype, size if resized else whole, row_shape))
        if resized:
            _advise(memory, "MADV_NOHUGEPAGE")  # grown or shrunk in place: written a little at a time from now on
            return
        global _copied
        _copied += 1
        array = getattr(owner, name)
    grown = mapped_empty(size, dtype, row_shape)
    grown[:keep] = array[:keep]
    setattr(owner, name, grown)


def grow_rows(owner: object, name: str, row: int) -> None:
    """Make ``owner.<name>`` (an array of rows, zero-filled beyond those written) hold a row ``row``: doubled (at
    least 16 rows, at least ``row + 1``), the new rows zeros; in place where it can (:func:`resize_mapped`). The
    caller must hold no view of it while it grows, or the growth is a copy."""
    array = getattr(owner, name)
    rows = len(array)
    if row < rows:
        return
    size = max(16, 2 * rows, row + 1)
    row_bytes = _row_bytes(array.dtype, array.shape[1:])
    del array
    resize_mapped(owner, name, size, keep=rows)
    if row_bytes:
        # Grown in place, the new rows are fresh pages (zeros) but for the rest of the page the old end was in,
        # which holds what it held before a shrink, if any: zero that part (a page at most, resident already).
        page_end = -(-rows * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        getattr(owner, name)[rows : min(size, -(-page_end // row_bytes))] = 0


def mapped_copy(array: np.ndarray, rows: int) -> np.ndarray:
    """A copy of ``array`` (an array of rows) in a memory map of its own, ``rows`` rows long at least (the rest
    zeros): what :func:`grow_rows` then grows in place (a model's arrays as a snapshot loads them)."""
    copy = mapped_empty(max(rows, len(array)), array.dtype, array.shape[1:])
    memory = map_of(copy)
    if memory is not None and len(memory) >= HUGE_PAGES_FROM:
        _advise(memory, "MADV_HUGEPAGE")  # written whole, here, and scanned whole when it serves
    copy[: len(array)] = array
    return copy


def map_of(array: np.ndarray) -> mmap.mmap | None:
    """The memory map ``array`` is the whole of (a :func:`mapped_empty` array, or one :func:`resize_mapped`
    made), else None."""
    base = array.base
    if type(base) is np.ndarray and array.ndim > 1:  # rows: a reshaped view of the map's flat array
        if not array.flags.c_contiguous:
            return None
        base = base.base if array.nbytes == base.nbytes else None
    if type(base) is memoryview and type(base.obj) is mmap.mmap and array.nbytes == base.nbytes == len(base.obj):
        return base.obj
    return None


def _row_bytes(dtype: np.dtype, row_shape: tuple[int, ...]) -> int:
    return dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))


def _advise(memory: mmap.mmap, advice: str) -> None:
    """``memory.madvise(mmap.<advice>)`` where the system has it; a kernel without transparent huge pages refuses
    their advice (EINVAL), which changes nothing here."""
    if hasattr(mmap, advice):
        try:
            memory.madvise(getattr(mmap, advice))
        except OSError:
            pass


def _over(memory: mmap.mmap, dtype: np.dtype, size: int, row_shape: tuple[int, ...]) -> np.ndarray:
    """The first ``size`` rows of ``memory`` as an array (made with ``np.frombuffer``, which holds the map's buffer
    while the array lives: the map cannot resize under it)."""
    flat = np.frombuffer(memory, dtype=dtype, count=size * int(np.prod(row_shape, dtype=np.int64)))
    return flat.reshape(size, *row_shape) if row_shape else flat

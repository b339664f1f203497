"""Arrays that grow and shrink in place (learner/arrays.py): in their own memory map when nothing else views it,
copied otherwise, and never lost when a resize fails."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from prometheus_client import REGISTRY

from learner import arrays
from learner.arrays import map_of, mapped_empty, resize_mapped
from recstream import metrics


class Owner:
    values: np.ndarray


def _owner(size: int) -> Owner:
    owner = Owner()
    owner.values = mapped_empty(size, np.float32)
    owner.values[:] = np.arange(size, dtype=np.float32)
    return owner


def test_a_resize_keeps_the_map_and_the_entries_growing_and_shrinking() -> None:
    owner = _owner(5_000)
    memory = map_of(owner.values)
    copied = arrays.copied_resizes()
    resize_mapped(owner, "values", 20_000, keep=5_000)
    assert map_of(owner.values) is memory and len(owner.values) == 20_000
    assert owner.values[:5_000].tolist() == list(range(5_000))
    owner.values[5_000:] = 7
    resize_mapped(owner, "values", 3_000, keep=3_000)
    assert map_of(owner.values) is memory and len(memory) == 3_000 * 4
    assert owner.values.tolist() == list(range(3_000))
    assert arrays.copied_resizes() == copied  # in place: not counted


def test_a_view_alive_makes_it_a_copy_and_the_view_still_reads_the_old_entries() -> None:
    owner = _owner(100)
    memory = map_of(owner.values)
    view = owner.values[10:13]
    copied = arrays.copied_resizes()
    resize_mapped(owner, "values", 1_000, keep=100)
    assert map_of(owner.values) is not memory and map_of(owner.values) is not None
    assert owner.values[:100].tolist() == list(range(100)) and view.tolist() == [10, 11, 12]
    assert arrays.copied_resizes() == copied + 1  # counted: the worker and the API export it
    unmapped = Owner()
    unmapped.values = np.arange(10, dtype=np.float32)  # (a loaded model's array: moved into a map, as meant)
    resize_mapped(unmapped, "values", 100, keep=10)
    assert map_of(unmapped.values) is not None and arrays.copied_resizes() == copied + 1


def test_the_copies_are_published_as_a_counter() -> None:
    """recstream_array_copies_total takes what learner.arrays counted since it was last published, once."""
    before = REGISTRY.get_sample_value("recstream_array_copies_total") or 0.0
    metrics.publish_array_copies()  # whatever earlier tests in this process copied
    start = REGISTRY.get_sample_value("recstream_array_copies_total")
    assert start is not None and start >= before
    owner = _owner(100)
    view = owner.values[:1]
    for size in (1_000, 2_000):
        resize_mapped(owner, "values", size, keep=100)
        view = owner.values[:1]  # (held again: the next resize is a copy too)
    metrics.publish_array_copies()
    metrics.publish_array_copies()
    assert REGISTRY.get_sample_value("recstream_array_copies_total") == start + 2
    del view


def test_a_failed_resize_leaves_the_array_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = _owner(100)
    view = owner.values[:1]  # the map cannot grow in place: a copy, which fails

    def out_of_memory(*_: object) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(arrays, "mapped_empty", out_of_memory)
    with pytest.raises(MemoryError):
        resize_mapped(owner, "values", 1_000, keep=100)
    assert len(owner.values) == 100 and owner.values.tolist() == list(range(100)) and view.tolist() == [0]
    del view

    class Refusing(mmap.mmap):  # the map's own resize interrupted (not an error that means "copy instead")
        def resize(self, *_: object) -> None:
            raise KeyboardInterrupt

    refusing = Refusing(-1, 400, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    owner.values = np.frombuffer(refusing, dtype=np.float32)
    monkeypatch.setattr(arrays, "map_of", lambda *_: refusing)
    with pytest.raises(KeyboardInterrupt):
        resize_mapped(owner, "values", 1_000, keep=100)
    assert owner.values is not None and len(owner.values) == 100


def test_only_an_array_that_is_a_whole_map_counts_as_one() -> None:
    memory = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    assert map_of(np.frombuffer(memory, dtype=np.int32)) is memory
    assert map_of(np.frombuffer(memoryview(memory)[64:], dtype=np.int32)) is None  # resized, it would shift
    assert map_of(np.frombuffer(memory, dtype=np.int32, offset=64)) is None
    assert map_of(np.frombuffer(memory, dtype=np.int32)[1:]) is None
    assert map_of(np.zeros(1024, dtype=np.int32)) is None


def test_rows_grow_by_doubling_into_a_map_and_then_in_place_the_new_rows_zeros() -> None:
    owner = Owner()
    owner.values = np.zeros((0, 3), dtype=np.float32)
    arrays.grow_rows(owner, "values", 0)
    assert owner.values.shape == (16, 3) and owner.values.dtype == np.float32 and not owner.values.any()
    memory = map_of(owner.values)
    assert memory is not None
    owner.values[:] = 5
    arrays.grow_rows(owner, "values", 15)  # there already
    arrays.grow_rows(owner, "values", 16)
    assert owner.values.shape == (32, 3) and map_of(owner.values) is memory
    assert (owner.values[:16] == 5).all() and not owner.values[16:].any()
    arrays.grow_rows(owner, "values", 1_000)  # beyond a doubling: exactly the row asked for
    assert owner.values.shape == (1_001, 3) and map_of(owner.values) is memory and not owner.values[16:].any()


def test_rows_grown_after_a_shrink_are_zeros_not_what_the_page_held() -> None:
    owner = Owner()
    owner.values = mapped_empty(4_096, np.float64, (2,))
    owner.values[:] = 9.0
    resize_mapped(owner, "values", 100, keep=100)  # the page that ends it still holds 9s past its end
    memory = map_of(owner.values)
    arrays.grow_rows(owner, "values", 100)
    assert map_of(owner.values) is memory and owner.values.shape == (200, 2)
    assert (owner.values[:100] == 9).all() and not owner.values[100:].any()


def test_rows_with_a_view_alive_are_copied_and_the_view_still_reads_them() -> None:
    owner = Owner()
    owner.values = arrays.mapped_copy(np.arange(12, dtype=np.float64).reshape(6, 2), 0)
    memory = map_of(owner.values)
    assert memory is not None and owner.values.shape == (6, 2)
    row = owner.values[1]
    arrays.grow_rows(owner, "values", 6)
    assert map_of(owner.values) not in (None, memory) and owner.values.shape == (16, 2)
    assert owner.values[:6].ravel().tolist() == list(range(12)) and not owner.values[6:].any()
    assert row.tolist() == [2.0, 3.0]


def test_only_rows_that_are_a_whole_map_count_as_one() -> None:
    rows = mapped_empty(64, np.float32, (4,))
    assert map_of(rows) is not None and map_of(rows[:]) is map_of(rows)
    assert map_of(rows[1:]) is None and map_of(rows[:, :2]) is None and map_of(rows.T) is None
    assert map_of(rows.reshape(-1)) is None and map_of(np.zeros((64, 4), dtype=np.float32)) is None


def _vm_flags(array: np.ndarray) -> set[str]:
    """The kernel's flags of the mapping ``array``'s data lies in (``VmFlags`` in ``/proc/self/smaps``)."""
    address = array.__array_interface__["data"][0]
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not hasattr(mmap, "MADV_NOHUGEPAGE"), reason="no transparent huge pages on this system")
def test_a_whole_copy_asks_for_huge_pages_and_growing_it_takes_the_advice_back() -> None:
    owner = Owner()
    owner.values = arrays.mapped_copy(np.ones((70_000, 16), dtype=np.float32), 0)  # 4.5 MB
    assert "hg" in _vm_flags(owner.values)
    arrays.grow_rows(owner, "values", 70_000)
    assert "hg" not in _vm_flags(owner.values) and "nh" in _vm_flags(owner.values)
    assert owner.values[:70_000].all() and not owner.values[70_000:].any()
    small = arrays.mapped_copy(np.ones((10, 16), dtype=np.float32), 0)  # under 4 MiB: as numpy would, no advice
    assert "hg" not in _vm_flags(small)


def test_a_kernel_that_refuses_the_huge_page_advice_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoHugePages(mmap.mmap):  # a kernel built without transparent huge pages: EINVAL for their advice
        def madvise(self, *_: object) -> None:
            raise OSError(22, "Invalid argument")

    memory = NoHugePages(-1, 4_096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    owner = Owner()
    owner.values = np.frombuffer(memory, dtype=np.float32)
    owner.values[:] = 3
    monkeypatch.setattr(arrays, "map_of", lambda *_: memory)
    resize_mapped(owner, "values", 2_048, keep=1_024)  # in place, then the advice refused
    assert len(owner.values) == 2_048 and (owner.values[:1_024] == 3).all()

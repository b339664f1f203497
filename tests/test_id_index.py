"""IdIndex: dense rows in order of first appearance, with the compiled packed table and without it (a dict and a
list: one shared int object per row number, and shared id strings)."""

from __future__ import annotations

import json
import random
import struct
import sys
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import orjson
import pytest

from learner import codec, id_index, kernels
from learner.id_index import IdIndex, _DictTable, reusing, row_object
from tests.conftest import skip_unless_ci

COMPILED = kernels.compiled() is not None


@pytest.fixture
def kernels_built() -> None:
    """The compiled tables: skipped where learner/_kernels.c is not built (a failure in CI, which builds it)."""
    if not COMPILED:
        skip_unless_ci("learner/_kernels.c is not built")


needs_kernels = pytest.mark.usefixtures("kernels_built")


@pytest.fixture(params=["compiled", "python"])
def table_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test of both tables: the compiled IdTable (where built) and the dict and list."""
    if request.param == "compiled":
        if not COMPILED:
            skip_unless_ci("learner/_kernels.c is not built")
        yield "compiled"
    else:
        with kernels.numpy_only():
            yield "python"


# CPython caches the ints up to 256, so sharing is only visible above them.
N = 2_000


def _fresh(text: str) -> str:
    """An equal string that is a different object (as ids decoded from a message or a snapshot are)."""
    return "".join(list(text))


def test_rows_are_dense_in_order_of_first_appearance_and_match_a_plain_dict(table_kind: str) -> None:
    rng = random.Random(0)
    index, expected = IdIndex(), {}
    assert isinstance(index._table, _DictTable) == (table_kind == "python")
    for _ in range(5 * N):
        id_ = f"id-{rng.randrange(N)}"
        row, created = index.add(id_)
        assert created == (id_ not in expected)
        expected.setdefault(id_, len(expected))
        assert row == expected[id_]
    assert index.ids == list(expected)
    assert len(index) == len(expected)
    assert all(index.get(i) == r for i, r in expected.items())
    assert index.get("never") is None and "never" not in index
    assert index.rows(["id-2", "never", "id-1"]) == [expected[i] for i in ("id-2", "id-1") if i in expected]


def test_two_indexes_share_the_int_object_of_each_row() -> None:
    with kernels.numpy_only():  # the dict and list (the compiled table makes an int for each lookup)
        _two_indexes_share_the_int_object_of_each_row()


def _two_indexes_share_the_int_object_of_each_row() -> None:
    users = IdIndex(f"user-{i}" for i in range(N))
    items = IdIndex()
    for i in range(N // 2):
        items.add(f"item-{i}")
    restored = IdIndex(list(users.ids))  # as from_state builds an index from a snapshot's ids
    for row in range(300, N // 2):
        u, i = users.get(f"user-{row}"), items.get(f"item-{row}")
        assert u == row and i == row
        assert u is i, f"row {row}: each index made its own int"
        assert restored.get(f"user-{row}") is u
    assert row_object(N - 1) is users.get(f"user-{N - 1}")


@pytest.mark.usefixtures("table_kind")
def test_the_row_pool_stays_aligned_when_threads_grow_it() -> None:
    start = threading.Barrier(4)
    built: list[IdIndex] = []

    def build(prefix: str) -> None:
        start.wait()
        index = IdIndex()
        for i in range(3 * N):
            index.add(f"{prefix}-{i}")
        built.append(index)

    threads = [threading.Thread(target=build, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 4
    for index in built:
        prefix = index.ids[0].split("-")[0]
        assert all(index.get(f"{prefix}-{i}") == i for i in range(3 * N))
    assert all(row_object(r) == r for r in range(3 * N))


def test_canonical_gives_the_index_own_string_objects() -> None:
    with kernels.numpy_only():
        index = IdIndex(f"item-{i}" for i in range(50))
    asked = [_fresh("item-7"), "unknown", _fresh("item-3"), _fresh("item-7")]
    assert asked[0] is not index.ids[7]
    out = index.canonical(asked)
    assert out == asked
    assert out[0] is index.ids[7] and out[2] is index.ids[3] and out[3] is index.ids[7]
    assert out[1] is asked[1]
    assert len(index) == 50  # canonical never adds


@needs_kernels
def test_canonical_of_a_packed_index_is_the_list_as_given() -> None:
    index = IdIndex(f"item-{i}" for i in range(50))
    asked = [_fresh("item-7"), "unknown"]
    assert index.canonical(asked) is asked and index.canonical(iter(asked)) == asked


def test_building_from_a_list_equals_adding_one_by_one_with_or_without_repeats(table_kind: str) -> None:
    rng = random.Random(1)
    distinct = [f"d-{k}" for k in rng.sample(range(10 * N), N)]
    repeated = [f"r-{rng.randrange(N)}" for _ in range(3 * N)]
    for ids in (distinct, repeated):
        one_by_one = IdIndex()
        for id_ in ids:
            one_by_one.add(id_)
        built = IdIndex(ids)
        assert built.ids == one_by_one.ids and len(built) == len(one_by_one)
        assert all(built.get(i) == one_by_one.get(i) == r for r, i in enumerate(one_by_one.ids))
        if table_kind == "python":
            assert built._table._rows == one_by_one._table._rows
            assert all(built.get(i) is row_object(r) for r, i in enumerate(built.ids))
        assert built.add("new") == (len(one_by_one), True)
        assert ids[-1] != "new" and "new" not in ids  # the list given stays the caller's


def test_an_index_built_while_reusing_equals_a_fresh_one_and_leaves_the_old_alone(
    table_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = IdIndex([f"id-{i}" for i in range(1_000)])
    extended = [f"id-{i}" for i in range(1_000)] + ["new-1", "id-5", "new-2"]  # a repeat in the tail too
    built: list[int] = []  # the sizes of the tables built from scratch
    new_table = id_index._new_table
    monkeypatch.setattr(id_index, "_new_table", lambda ids: built.append(len(ids)) or new_table(ids))
    with reusing([IdIndex(["unrelated"]), old]):
        reused = IdIndex(extended)
    assert built == [1]  # only the unrelated one: the reused index started from a copy of the old one's table
    fresh = IdIndex(extended)
    assert reused.ids == fresh.ids and all(reused.get(i) == fresh.get(i) for i in extended)
    if table_kind == "python":
        assert reused.ids[0] is old.ids[0]  # (and its strings)
    assert type(reused._table) is type(old._table)
    assert len(old) == 1_000 and old.get("new-1") is None  # the old one is unchanged
    reused.add("newer")
    assert "newer" not in old and len(old) == 1_000


@pytest.mark.usefixtures("table_kind")
def test_a_list_that_does_not_start_with_the_old_ids_is_built_from_scratch() -> None:
    old = IdIndex(["a", "b", "c"])
    for ids in (["a", "x", "c", "d"], ["a", "b"], ["z", "y", "x", "c"]):  # diverges; shorter; other ends
        with reusing([old]):
            index = IdIndex(ids)
        assert index.ids == ids and [index.get(i) for i in ids] == list(range(len(ids)))


class _Text(str):
    """A str subclass with its own equality and hash: an index compares and hashes it as its text."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 7


def _random_id(rng: random.Random) -> str:
    """An id of 0-12 characters of one to four bytes in UTF-8 (so str objects of each kind: 1, 2 and 4 bytes a
    code point), quotes, backslashes and controls among them."""
    alphabet = ["a", "b", "Z", "0", "-", '"', "\\", "\n", "\x00", "\x7f", "é", "ÿ", "€", "ł", "😀", "𝄞"]
    return "".join(rng.choice(alphabet[: rng.choice((5, 10, 12, 14, 16))]) for _ in range(rng.randrange(13)))


def test_both_tables_agree_with_a_plain_dict_on_ids_of_every_kind(table_kind: str) -> None:
    rng = random.Random(7)
    index, expected = IdIndex(), {}
    for step in range(6_000):
        id_ = _fresh(_random_id(rng))
        row, created = index.add(id_)
        assert (row, created) == (expected.setdefault(id_, len(expected)), row == len(expected) - 1 and created)
        if step % 500 == 0:  # reads in between, as a model's are
            assert list(index.ids) == list(expected)
    ids = list(expected)
    assert len(index) == len(index.ids) == len(ids) and index.ids == ids and ids == index.ids
    assert not (index.ids != ids) and index.ids != ids[:-1] and index.ids != [*ids[:-1], ids[-1] + "x"]
    assert (
        [index.ids[r] for r in range(len(ids))] == ids and index.ids[-1] == ids[-1] and index.ids[-len(ids)] == ids[0]
    )
    assert index.ids[3:40] == ids[3:40] and index.ids[::-7] == ids[::-7] and index.ids[-5:] == ids[-5:]
    with pytest.raises(IndexError):
        index.ids[len(ids)]
    probes = [_fresh(i) for i in ids[::3]] + ["never", ""]
    if table_kind == "compiled":  # a subclass is found by its text (a dict would use its own hash)
        probes += [_Text("a"), _Text("never")]
    assert [index.get(p) for p in probes] == [expected.get(str(p)) for p in probes]
    assert [p in index for p in probes] == [str(p) in expected for p in probes]
    assert index.rows(probes) == [expected[str(p)] for p in probes if str(p) in expected]
    assert index.get("never", -1) == -1
    assert orjson.loads(codec._header_json({"ids": index.ids})) == {"ids": ids}
    assert json.loads(codec._header_json({"ids": index.ids})) == {"ids": ids}


@needs_kernels
def test_a_packed_table_writes_its_ids_as_orjson_writes_the_list() -> None:
    rng = random.Random(8)
    ids = list(dict.fromkeys(_random_id(rng) for _ in range(3_000)))
    table = IdIndex(ids).ids
    assert table.json_array() == orjson.dumps(ids)
    assert IdIndex().ids.json_array() == b"[]"
    assert codec._header_json({"a": 1, "ids": {"users": table}}) == orjson.dumps({"a": 1, "ids": {"users": ids}})


def _packed_sections(blob: bytes) -> list[tuple[int, bytes]]:
    """The packed id sections of a snapshot, by the documented layout (learner.codec): after the header and the arrays
    its header names, each section's id count and byte size (big-endian) and its bytes."""
    assert blob.startswith(codec.MAGIC_PACKED_IDS)
    (head_len,) = struct.unpack(">Q", blob[7:15])
    header = json.loads(blob[15 : 15 + head_len])
    pos = (
        15 + head_len + sum(int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize for spec in header["arrays"])
    )
    sections = []
    while pos < len(blob):
        count, size = struct.unpack(">QQ", blob[pos : pos + 16])
        sections.append((count, blob[pos + 16 : pos + 16 + size]))
        pos += 16 + size
    assert pos == len(blob)
    return sections


def _reference_packed(ids: list[str]) -> bytes:
    """IdTable.packed()'s bytes as documented, written the plain way: each id's kind, its length in code points
    (little-endian uint32), then the code points of each id at its kind (little-endian)."""
    kinds = [1 if max(map(ord, i), default=0) < 0x100 else 2 if max(map(ord, i)) < 0x10000 else 4 for i in ids]
    codecs = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
    return (
        bytes(kinds)
        + b"".join(struct.pack("<I", len(i)) for i in ids)
        + b"".join(i.encode(codecs[k]) for i, k in zip(ids, kinds, strict=True))
    )


@needs_kernels
def test_a_snapshot_holds_packed_ids_as_documented_and_reads_them_back_with_either_table() -> None:
    rng = random.Random(11)
    users = list(dict.fromkeys(_random_id(rng) for _ in range(2_000)))
    items = ["", "x", "é", "😀", *(f"item-{k}" for k in range(300))]
    u, i = IdIndex(users).ids, IdIndex(items).ids
    header = {"kind": "demo", "ids": {"users": u, "items": i}, "popularity_ids": i, "plain": ["a", "b"], "n": [1, 2]}
    blob = codec.encode(header, {"x": np.arange(3.0)})
    # one section a table (items twice, as a model's and popularity's: once), each as documented
    assert _packed_sections(blob) == [(len(users), _reference_packed(users)), (len(items), _reference_packed(items))]
    assert u.packed() == _reference_packed(users)
    decoded, arrays = codec.decode(blob)
    assert decoded == {**header, "ids": {"users": users, "items": items}, "popularity_ids": items}
    assert type(decoded["ids"]["users"]) is type(u) and decoded["popularity_ids"] is decoded["ids"]["items"]
    assert decoded["ids"]["users"].get(_fresh(users[5])) == 5 and arrays["x"].tolist() == [0.0, 1.0, 2.0]
    with kernels.numpy_only():  # a process without the kernels reads the same ids, as lists
        python_decoded, _ = codec.decode(blob)
    assert python_decoded == decoded and type(python_decoded["ids"]["users"]) is list
    index = IdIndex(decoded["ids"]["users"])  # a model's index copies the table: the header's is not changed
    index.add("new")
    assert len(decoded["ids"]["users"]) == len(users) and index.ids == [*users, "new"]
    # a header without packed ids (no kernels, or lists) is written as before: RSNAP1, JSON ids
    assert codec.encode({"ids": {"users": users}}, {}).startswith(codec.MAGIC)


@needs_kernels
def test_the_compiled_reader_of_packed_ids_refuses_what_the_python_one_refuses() -> None:
    """Packed ids read by the C reader (learner._kernels.id_table_from_packed) and the Python one
    (codec.unpack_ids): the same ids, or both refuse; bytes of every kind cut, flipped and made up."""
    kernel = kernels.compiled()
    rng = random.Random(12)

    def both(data: bytes, count: int) -> list[str] | None:
        try:
            compiled = list(kernel.id_table_from_packed(data, count))
        except ValueError:
            compiled = None
        try:
            python = codec.unpack_ids(data, count)
        except ValueError:
            python = None
        assert compiled == python, (data, count)
        return compiled

    accepted = refused = 0
    for _ in range(3_000):
        ids = list(dict.fromkeys(_random_id(rng) for _ in range(rng.randrange(6))))
        data = bytearray(_reference_packed(ids))
        assert both(bytes(data), len(ids)) == ids
        for _ in range(rng.randrange(1, 3)):
            change = rng.randrange(4)
            if change == 0 and data:
                data[rng.randrange(len(data))] = rng.choice([0, 1, 2, 3, 4, 0xD8, 0xDC, 0xFF, 0x11, rng.randrange(256)])
            elif change == 1:
                del data[rng.randrange(len(data) + 1) :]
            elif change == 2:
                data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
            else:
                ids = [*ids, rng.choice(ids)] if ids else ids  # a repeated id
                data = bytearray(_reference_packed(ids))
        count = len(ids) + rng.choice([0, 0, 0, -1, 1])
        if both(bytes(data), count) is None:
            refused += 1
        else:
            accepted += 1
    assert accepted > 300 and refused > 300  # (both outcomes seen: the comparison compared something)
    for bad, why in [
        (b"\x03\x01\x00\x00\x00a", "kind is not 1, 2 or 4"),
        (b"\x02\x01\x00\x00\x00a\x00", "kind wider than its code points need"),  # "a" is a 1-byte str
        (b"\x02\x01\x00\x00\x00\x00\xd8", "a surrogate"),
        (b"\x04\x01\x00\x00\x00\x00\x00\x11\x00", "beyond U"),
        (b"\x01\x01\x01\x00\x00\x00\x01\x00\x00\x00aa", "repeated"),
        (b"\x01\x02\x00\x00\x00a", "not its ids' kinds, lengths and text"),
    ]:
        count = 2 if b"aa" in bad else 1
        with pytest.raises(ValueError, match=why):
            kernel.id_table_from_packed(bad, count)
        with pytest.raises(ValueError, match=why):
            codec.unpack_ids(bad, count)


@needs_kernels
def test_a_snapshot_whose_packed_ids_do_not_add_up_is_refused() -> None:
    index = IdIndex(["a", "b"])
    blob = codec.encode({"ids": {"users": index.ids}}, {})
    (head_len,) = struct.unpack(">Q", blob[7:15])
    head = blob[15 : 15 + head_len]
    rest = blob[15 + head_len :]

    def with_header(text: bytes, tail: bytes = rest) -> bytes:
        return codec.MAGIC_PACKED_IDS + struct.pack(">Q", len(text)) + text + tail

    for blob_, why in [
        (with_header(head.replace(b'{"$ids":0}', b'{"$ids":1}')), "does not have"),
        (with_header(head.replace(b'{"$ids":0}', b'{"$ids":0,"x":1}')), "does not have"),
        (with_header(head.replace(b'{"$ids":0}', b'["a","b"]')), "does not refer to"),
        (with_header(head, rest[:-1]), "truncated"),
        (with_header(head, struct.pack(">Q", 3) + rest[8:]), "not ids"),  # its count is not its ids
        (with_header(head, rest[:10]), "truncated"),
        (with_header(head, rest + b"\x00"), "truncated"),
        (with_header(head, rest.replace(b"b", b"a")), "repeated"),
    ]:
        with pytest.raises(codec.CodecError, match=why):
            codec.decode(blob_)


@pytest.mark.usefixtures("table_kind")
def test_an_id_that_is_not_a_str_is_never_held() -> None:
    index = IdIndex(["1", "a"])
    assert index.get(1) is None and 1 not in index and None not in index and index.rows([1, "a", b"a"]) == [1]
    with pytest.raises(TypeError, match="ids are str"):
        index.add(1)  # type: ignore[arg-type]
    assert len(index) == 2
    with pytest.raises(TypeError, match="ids are str, not int"):  # nor when a table is built from a list
        IdIndex(["a", 1])  # type: ignore[list-item]


@needs_kernels
def test_an_id_with_a_lone_surrogate_is_held_but_not_written() -> None:
    index = IdIndex(["a", "b\ud800"])
    assert index.get(_fresh("b\ud800")) == 1 and index.ids[1] == "b\ud800"
    with pytest.raises(ValueError, match="id 1 is not valid UTF-8"):
        index.ids.json_array()
    with pytest.raises(codec.CodecError, match="surrogates not allowed"):
        codec._header_json({"ids": index.ids})
    with pytest.raises(codec.CodecError, match="surrogates not allowed"):  # nor packed into a snapshot's section
        codec.encode({"ids": {"users": index.ids}}, {})


@needs_kernels
def test_packed_tables_compare_equal_by_their_ids_and_copies_are_their_own() -> None:
    a = IdIndex(["x", "é", "😀"]).ids
    b = IdIndex([_fresh("x"), _fresh("é"), _fresh("😀")]).ids
    assert a == b and not (a != b) and a == ("x", "é", "😀") and a != ["x", "é"] and a != "xé😀"
    rng = random.Random(9)
    for _ in range(300):  # ids of mixed kinds, so padding between them (kept zeroed: compared with the text)
        ids = list(dict.fromkeys(_random_id(rng) for _ in range(rng.randrange(1, 12))))
        garbage = [bytes(rng.randrange(256) for _ in range(80)) for _ in range(20)]  # reused memory, dirty
        assert IdIndex(ids).ids == IdIndex([_fresh(i) for i in ids]).ids and garbage
    empty_id = IdIndex([""]).ids  # no text at all: the arena is made even so
    assert empty_id == IdIndex([_fresh("")]).ids and empty_id.json_array() == b'[""]' and empty_id[0] == ""
    assert a[1 :: sys.maxsize] == ["é"] and a[:: -sys.maxsize] == ["😀"]
    assert isinstance(a, Sequence) and a.index("é") == 1 and a.count("😀") == 1 and a.count("zz") == 0
    assert list(reversed(a)) == ["😀", "é", "x"] and random.Random(0).sample(a, 3) != []
    with pytest.raises(ValueError):
        a.index("zz")
    copy = a.copy()
    copy.add("new")
    assert a != copy and len(a) == 3 and a.get("new") is None and copy.get("new") == 3
    with pytest.raises(TypeError):
        hash(a)


@needs_kernels
def test_the_slots_double_a_little_at_a_time_and_every_id_is_found_meanwhile() -> None:
    """A doubling keeps the old slots while their entries move to the new ones a few with each id added: meanwhile
    (just after the doubling, and later on in the moves) every id is found, in either, a new id goes in once, and a
    copy and a packed copy hold them all; the old slots are freed (nbytes falls) some adds after the doubling, not in
    the add that made it. Grown past 1 MiB of slots, of ends and of text (each then a memory map of its own)."""
    kernel = kernels.compiled()
    table = kernel.IdTable()
    ids = [f"id-{i:09d}-{i % 7}" for i in range(300_000)]  # 14 characters: 4.2 MB of text
    rng = random.Random(5)
    falls = 0
    check_at: set[int] = set()
    for n, key in enumerate(ids):
        before = table.nbytes
        assert table.add(key) == (n, True) and table.add(_fresh(key)) == (n, False)
        earlier = rng.randrange(n + 1)
        assert table.get(_fresh(ids[earlier])) == earlier and table.get(f"absent-{n}") is None
        falls += table.nbytes < before
        if table.nbytes > before:  # grown (the slots doubled, or the ids' arrays): checked now and later in the moves
            check_at.update((n, n + 1, n + 97, n + 997, n + 4_999))
        if n in check_at:
            some = sorted(rng.sample(range(n + 1), min(n + 1, 2_000)))
            assert table.rows([ids[r] for r in some]) == some and len(table) == n + 1
            copy = table.copy()
            assert copy == table and copy.rows([ids[r] for r in some]) == some and copy.nbytes <= table.nbytes
            assert copy.add(f"new-{n}") == (n + 1, True) and copy.get(f"new-{n}") == n + 1
            assert table.get(f"new-{n}") is None and copy.rows(ids[: n + 1]) == list(range(n + 1))
            packed = kernel.id_table_from_packed(table.packed(), len(table))
            assert packed == table and packed.rows([ids[r] for r in some]) == some
    # 16 slots doubled at the 11th id, then 32, 64, ... 262,144 at the 174,763rd: each of the old tables of 64 slots
    # and more is freed in an add of its own
    assert falls >= 13 and table.nbytes > 7 * 2**20  # slots 2 MiB, ends 1.2 MB, kinds 0.3 and text 4.2 MB at least
    assert table.rows(ids) == list(range(len(ids))) and table.copy() == table


@needs_kernels
def test_a_packed_index_costs_under_half_of_a_dict_and_list() -> None:
    n = 100_000
    ids = [f"user-{i:07d}" for i in range(n)]  # 12 characters, as the memory benchmark's
    index = IdIndex(ids)
    per_id = index.nbytes / n
    # text 12, end 4 (each at most 1.5x what is used) and 4-byte slots, 6 to 12 an id (no kinds: all one byte)
    assert 12 + 4 + 6 <= per_id <= 1.5 * (12 + 4) + 12
    with kernels.numpy_only():  # the same ids in a dict and a list of their str objects
        table = IdIndex(_fresh(i) for i in ids)._table
    dict_and_list = sum(map(sys.getsizeof, table.ids)) + sys.getsizeof(table._rows) + sys.getsizeof(table.ids)
    assert per_id < dict_and_list / n / 2


@needs_kernels
def test_ids_of_one_byte_a_code_point_keep_no_kinds_until_a_wider_one_comes() -> None:
    """A table keeps its ids' kinds (bytes a code point: 1, 2 or 4) only once an id of 2 or 4 bytes a code point is
    added; until then every id's is 1 (a byte an id less for ids of Latin-1 text). The earlier ids are then still
    found and read back, and a copy and a packed copy have the same ids, with or without the kinds."""
    kernel = kernels.compiled()
    ids = [f"user-{i:07d}" for i in range(50_000)]
    narrow, wide = kernel.IdTable(), kernel.IdTable()
    for key in ids:
        narrow.add(key)
        wide.add(key)
    packed = kernel.id_table_from_packed(narrow.packed(), len(narrow))
    assert packed == narrow and packed.nbytes < narrow.nbytes  # (its arrays exactly as long as the ids need)
    narrow.add("user-x")
    wide.add("\u0101ser")  # (a code point of 2 bytes)
    assert 50_001 <= wide.nbytes - narrow.nbytes <= 1.5 * 50_001 + 16  # its kinds: made when it came
    assert wide.rows(ids) == list(range(50_000)) and wide[50_000] == "\u0101ser" and wide[7] == ids[7]
    for table in (narrow, wide):
        copy = table.copy()
        packed = kernel.id_table_from_packed(table.packed(), len(table))
        assert copy == table and packed == table and list(packed) == list(table) and copy.get(table[-1]) == 50_000
    assert narrow != wide and wide.get("user-x") is None and wide.get("\u0101ser") == 50_000


@needs_kernels
def test_only_the_id_lists_are_packed_and_odd_headers_read_back_or_are_refused_as_snapshots() -> None:
    """(helper-65's review) A packed section's count is checked before either reader sees it; references are read
    only in the id lists, so the same key elsewhere is data, and a deeply nested header is not walked."""
    table = IdIndex(["a", "b"]).ids
    nested: dict = {"x": 1}
    for _ in range(250):  # (orjson writes at most 255 levels)
        nested = {"n": nested}
    header = {"ids": {"users": table}, "meta": {"$ids": 0}, "deep": nested, "other": {"t": table}}
    decoded, _ = codec.decode(codec.encode(header, {}))
    assert decoded == {**header, "ids": {"users": ["a", "b"]}, "other": {"t": ["a", "b"]}}
    assert type(decoded["other"]["t"]) is list  # (a table elsewhere is written as JSON: not a section)
    blob = codec.encode({"ids": {"users": table}}, {})
    section = blob.index(struct.pack(">QQ", 2, len(table.packed())))
    for count in (2**63, 2**64 - 1, 10**6):
        bad = blob[:section] + struct.pack(">Q", count) + blob[section + 8 :]
        with pytest.raises(codec.CodecError, match="fewer bytes"):
            codec.decode(bad)
        with kernels.numpy_only(), pytest.raises(codec.CodecError, match="fewer bytes"):
            codec.decode(bad)
    not_ids = blob.replace(b'{"$ids":0}', b'{"$ids":0,"more":1}')
    not_ids = not_ids[:7] + struct.pack(">Q", struct.unpack(">Q", blob[7:15])[0] + 9) + not_ids[15:]
    with pytest.raises(codec.CodecError, match="does not have"):
        codec.decode(not_ids)


@needs_kernels
def test_a_delta_extends_a_snapshots_packed_ids_without_changing_them() -> None:
    from learner.cooccurrence_delta import _extended

    base = IdIndex(["a", "b"]).ids
    whole = _extended(base, ["c"])
    assert whole == ["a", "b", "c"] and base == ["a", "b"] and type(whole) is type(base)
    assert _extended(["a", "b"], ["c"]) == ["a", "b", "c"]
    for ids in (base, ["a", "b"]):  # an id the base holds, or one added twice, on either base
        for added in (["b"], ["c", "c"]):
            with pytest.raises(codec.CodecError, match="already holds"):
                _extended(ids, added)
    for ids in (base, ["a", "b"]):  # added ids that are not a list of str, on either base
        with pytest.raises(codec.CodecError, match="not a list of str"):
            _extended(ids, "cd")  # type: ignore[arg-type]
        with pytest.raises(codec.CodecError, match="not a list of str"):
            _extended(ids, [1])  # type: ignore[list-item]

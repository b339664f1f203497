"""A pickle-free byte format for model state: a JSON header followed by raw numpy arrays.

Layout: ``b"RSNAP1\\n"``, 8-byte big-endian header length, the UTF-8 JSON header, then each
array's raw little-endian bytes in header order. The header names every array's dtype and
shape; only plain numeric dtypes are accepted, so decoding never runs code.

A header's packed id sequences (the compiled ``IdTable`` of ``learner.id_index``) in its id lists (the values of
``ids``, and ``popularity_ids``) are not written as JSON arrays: the header holds ``{"$ids": k}`` in their place,
and their ids follow the arrays as the ``k``-th packed section (``b"RSNAP2\\n"`` then, instead of ``RSNAP1``): its id
count and byte size (two 8-byte big-endian numbers), then each id's kind (1, 2 or 4 bytes a code point), its length
in code points (little-endian uint32) and every id's code points (``IdTable.packed``). Decoded, such a section is an
``IdTable`` again where the kernels are built (no str object made an id: a million ids decode in ~40 ms instead of
~170 ms of JSON, without ~100 MB of str objects the heap keeps), else a list of str; the sequences it replaces read
the same either way.

>>> import numpy as np
>>> blob = encode({"kind": "demo"}, {"x": np.arange(3, dtype=np.float32)})
>>> header, arrays = decode(blob)
>>> header["kind"], arrays["x"].tolist()
('demo', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from learner import kernels

MAGIC = b"RSNAP1\n"
MAGIC_PACKED_IDS = b"RSNAP2\n"  # a snapshot whose header refers to packed id sections (above)
PACKED_IDS = "$ids"  # the key of a header's reference to a packed id section
ALLOWED_DTYPES = {"<f4", "<f8", "<i4", "<i8", "<u4", "<u8"}


class CodecError(ValueError):
    """The bytes are not a well-formed snapshot."""


class Chunks(NamedTuple):
    """A 1-D array given as its consecutive pieces, each a contiguous buffer of ``dtype`` items (an
    ``array.array``, a numpy array; ``dtype`` names their byte order, e.g. ``np.dtype(np.int32).str`` for
    native buffers), with ``length`` items in all: :func:`encode` copies the pieces straight into the
    snapshot instead of joining them into an array first (one copy of the model's largest arrays, not two:
    on the grown bench model ~90 MB less to copy into fresh memory while the worker waits). The pieces are
    read when encoded: encode right away, before whatever owns them changes. ``owned``: the pieces are new
    arrays that nothing else holds or changes, which :func:`encode_later` need not copy."""

    dtype: str
    parts: Sequence[Any]
    length: int
    owned: bool = False

    def array(self) -> np.ndarray:
        """The pieces joined into one read-only array (bytes.join reads each buffer once)."""
        joined = b"".join(self.parts)
        if len(joined) != self.length * np.dtype(self.dtype).itemsize:
            raise CodecError(f"pieces of {len(joined)} bytes are not {self.length} items of {self.dtype}")
        return np.frombuffer(joined, dtype=self.dtype)


def encode(header: dict[str, Any], arrays: Mapping[str, np.ndarray | Chunks]) -> bytes:
    """The snapshot of ``header`` and ``arrays`` (numpy arrays, or :class:`Chunks`)."""
    parts, size = _parts(header, arrays, copy=False)
    return _joined(parts, size, b"".join)


def encode_later(header: dict[str, Any], arrays: Mapping[str, np.ndarray | Chunks]) -> Callable[[], bytes]:
    """:func:`encode`, whose last step, joining the parts into one ``bytes``, the returned function does: what the
    snapshot holds is read now (every array copied, but for the pieces of ``owned`` :class:`Chunks`), so the
    function may run later, in a thread, while the arrays change. Where the kernels are built it copies with
    the GIL released (``join_buffers``): a worker's whole snapshot (~100 MB at a million events; ~60 ms of
    copying into fresh memory, in process, more on a busy machine) is joined while its event loop learns on.

    >>> later = encode_later({"kind": "demo"}, {"x": np.arange(3, dtype=np.float32)})
    >>> later() == encode({"kind": "demo"}, {"x": np.arange(3, dtype=np.float32)})
    True
    """
    parts, size = _parts(header, arrays, copy=True)
    kernel = kernels.compiled()
    join = b"".join if kernel is None else kernel.join_buffers
    return lambda: _joined(parts, size, join)


def _joined(parts: list[Any], size: int, join: Callable[[list[Any]], bytes]) -> bytes:
    blob = join(parts)
    if len(blob) != size:
        raise CodecError("snapshot arrays do not add up to their declared shapes")  # (a Chunks' pieces are not them)
    return blob


def _parts(header: dict[str, Any], arrays: Mapping[str, np.ndarray | Chunks], copy: bool) -> tuple[list[Any], int]:
    """The buffers a snapshot is made of, in order, and the size they must add up to; ``copy``: each array's
    buffer a copy (bytes), but for the pieces of ``owned`` :class:`Chunks`."""
    specs = []
    chunks: list[Any] = []
    expected = 0
    for name, array in arrays.items():
        if isinstance(array, Chunks) and array.dtype.startswith(">"):
            array = array.array()  # not the snapshot's byte order (a big-endian host): joined, then converted below
        if isinstance(array, Chunks):
            if array.dtype not in ALLOWED_DTYPES:
                raise CodecError(f"array {name!r} has unsupported dtype {array.dtype}")
            specs.append({"name": name, "dtype": array.dtype, "shape": [array.length]})
            chunks.extend(array.parts if array.owned or not copy else map(bytes, array.parts))
            expected += array.length * np.dtype(array.dtype).itemsize
            continue
        a = np.ascontiguousarray(array)
        dtype = a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise CodecError(f"array {name!r} has unsupported dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
        specs.append({"name": name, "dtype": dtype, "shape": list(a.shape)})
        chunks.append(a.tobytes() if copy else a)  # contiguous: a join reads its buffer, no intermediate copy
        expected += a.nbytes
    sections: list[bytes] = []
    head = _header_json({**_with_id_sections(header, sections), "arrays": specs})
    magic = MAGIC_PACKED_IDS if sections else MAGIC
    prefix = [magic, struct.pack(">Q", len(head)), head]
    return [*prefix, *chunks, *sections], expected + sum(map(len, prefix)) + sum(map(len, sections))


def _with_id_sections(header: dict[str, Any], sections: list[bytes]) -> dict[str, Any]:
    """``header`` with each packed id table (``learner.id_index``: the compiled ``IdTable``) among its id lists
    (``ids``' values, ``popularity_ids``; nowhere else) replaced by a reference to a packed section appended to
    ``sections``: its count, size and ``IdTable.packed()``. The same table twice (a model's items and popularity's)
    is one section. On a big-endian host the tables stay: written as JSON (:func:`_as_json`)."""
    refs: dict[int, dict[str, int]] = {}

    def packed(ids: Any) -> Any:
        if getattr(ids, "packed", None) is None or sys.byteorder != "little":
            return ids
        ref = refs.get(id(ids))
        if ref is None:
            try:
                data = ids.packed()
            except ValueError as exc:  # an id with a lone surrogate (as orjson refuses one in a str)
                raise CodecError(f"snapshot header is not plain JSON: {exc}") from exc
            sections.append(struct.pack(">QQ", len(ids), len(data)) + data)
            ref = refs[id(ids)] = {PACKED_IDS: len(sections) - 1}
        return ref

    changed = dict(header)
    if isinstance(header.get("ids"), dict):
        changed["ids"] = {name: packed(ids) for name, ids in header["ids"].items()}
    if "popularity_ids" in header:
        changed["popularity_ids"] = packed(header["popularity_ids"])
    return changed


def _as_json(value: Any) -> orjson.Fragment:
    """orjson's ``default`` for a header: a packed sequence of ids (the compiled ``IdTable``) anywhere but in a
    packed section as the JSON array of its ids, written by the table itself (no str objects made); anything else is
    not JSON."""
    json_array = getattr(value, "json_array", None)
    if json_array is None:
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
    return orjson.Fragment(json_array())


def _header_json(header: dict[str, Any]) -> bytes:
    """Compact JSON of the header; orjson: ~7x faster than ``json.dumps`` on the id lists.

    Decoded with ``json.loads`` to the same value as ``json.dumps`` would give, for what a header
    holds (str keys; str, int, finite float, bool, None, lists, dicts). Refused: a float that is
    not finite (orjson would write ``null``), an int beyond 64 bits, a key that is not a str, and
    numpy scalars (orjson raises for these).

    >>> _header_json({"a": [1, 2.5, "x", None]})
    b'{"a":[1,2.5,"x",null]}'
    >>> _header_json({"x": float("nan")})
    Traceback (most recent call last):
    ...
    learner.codec.CodecError: snapshot header has a float that is not finite: nan
    >>> _header_json({"ids": ["null", "a,null]"], "x": [float("inf")]})
    Traceback (most recent call last):
    ...
    learner.codec.CodecError: snapshot header has a float that is not finite: inf
    """
    try:
        head = orjson.dumps(header, default=_as_json)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise CodecError(f"snapshot header is not plain JSON: {exc.__cause__ or exc}") from exc
    if b"null" in head and _NULL_TOKEN.search(head):  # a None somewhere, or a NaN orjson wrote as null: look
        _refuse_non_finite(header)  # (rare: a worker's headers have none once the learner has a clock)
    return head


#: ``null`` as a JSON value in orjson's compact output (after ``:``, ``,`` or ``[``; before ``,``, ``]`` or ``}``),
#: not inside a string such as an id ``"nullable-clip"``: only then is the header walked (~0.13 µs per id).
_NULL_TOKEN = re.compile(rb"[:,\[]null[,\]}]")


def _refuse_non_finite(value: Any) -> None:
    """Raise on a NaN or infinity anywhere in ``value`` (every element of every list and dict)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"snapshot header has a float that is not finite: {value}")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_non_finite(item)


def decode(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    packed = blob.startswith(MAGIC_PACKED_IDS)
    if not (packed or blob.startswith(MAGIC)) or len(blob) < len(MAGIC) + 8:
        raise CodecError("not a recstream snapshot (bad magic)")
    pos = len(MAGIC)
    (head_len,) = struct.unpack(">Q", blob[pos : pos + 8])
    pos += 8
    try:
        header = json.loads(blob[pos : pos + head_len])
    except ValueError as exc:
        raise CodecError(f"snapshot header is not JSON: {exc}") from exc
    pos += head_len
    arrays: dict[str, np.ndarray] = {}
    for spec in header.pop("arrays", []):
        dtype = spec["dtype"]
        if dtype not in ALLOWED_DTYPES:
            raise CodecError(f"array {spec['name']!r} has unsupported dtype {dtype}")
        shape = tuple(int(n) for n in spec["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if pos + size > len(blob):
            raise CodecError("snapshot is truncated")
        arrays[spec["name"]] = np.frombuffer(
            blob, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=pos
        ).reshape(shape)
        pos += size
    if packed:
        header = _with_packed_ids(header, _packed_sections(blob, pos))
    elif pos != len(blob):
        raise CodecError("snapshot has trailing bytes")
    return header, arrays


def _packed_sections(blob: bytes, pos: int) -> list[Sequence[str]]:
    """The id sequences of the packed sections from ``pos`` to the end of ``blob`` (see the module's doc)."""
    kernel = kernels.compiled()
    view = memoryview(blob)
    sections: list[Sequence[str]] = []
    while pos < len(blob):
        if pos + 16 > len(blob):
            raise CodecError("snapshot is truncated (a packed id section)")
        count, size = struct.unpack_from(">QQ", blob, pos)
        pos += 16
        if size > len(blob) - pos:
            raise CodecError("snapshot is truncated (a packed id section)")
        if count * 5 > size:  # (each id has at least its kind and length: also keeps a huge count from the readers)
            raise CodecError(f"snapshot's id section {len(sections)} is not ids: fewer bytes than {count} ids need")
        data = view[pos : pos + size]
        try:
            ids = unpack_ids(data, count) if kernel is None else kernel.id_table_from_packed(data, count)
        except ValueError as exc:
            raise CodecError(f"snapshot's id section {len(sections)} is not ids: {exc}") from exc
        sections.append(ids)
        pos += size
    return sections


def _with_packed_ids(header: dict[str, Any], sections: list[Sequence[str]]) -> dict[str, Any]:
    """``header`` with each reference to a packed section among its id lists (``ids``' values, ``popularity_ids``:
    where :func:`encode` writes them; nowhere else) replaced by the section's ids; each section referred to."""
    used: set[int] = set()

    def ids_of(value: Any) -> Any:
        if type(value) is not dict:
            return value
        k = value.get(PACKED_IDS)
        if len(value) != 1 or type(k) is not int or not 0 <= k < len(sections):
            raise CodecError(f"snapshot header refers to an id section it does not have: {value!r:.100}")
        used.add(k)
        return sections[k]

    if type(header.get("ids")) is dict:
        header["ids"] = {name: ids_of(ids) for name, ids in header["ids"].items()}
    if "popularity_ids" in header:
        header["popularity_ids"] = ids_of(header["popularity_ids"])
    if len(used) != len(sections):
        raise CodecError("snapshot has an id section its header does not refer to")
    return header


def unpack_ids(data: bytes | memoryview, count: int) -> list[str]:
    """The ids of a packed section (``IdTable.packed``'s bytes) as a list of str: without the kernels, and the
    reference ``learner._kernels.id_table_from_packed`` is tested against. ValueError for bytes that are not
    ``count`` ids as a str holds them (a kind other than 1, 2, 4; a surrogate; a kind wider than its code points
    need; a repeated id; bytes that do not add up)."""
    data = bytes(data)
    if count < 0 or count * 5 > len(data):
        raise ValueError("packed ids: fewer bytes than its ids' kinds and lengths")
    kinds = data[:count]
    lengths = struct.unpack_from(f"<{count}I", data, count)
    if any(k not in (1, 2, 4) for k in kinds):
        raise ValueError("packed ids: an id's kind is not 1, 2 or 4 bytes a code point")
    if count * 5 + sum(k * n for k, n in zip(kinds, lengths, strict=True)) != len(data):
        raise ValueError("packed ids: its bytes are not its ids' kinds, lengths and text")
    ids: list[str] = []
    at = count * 5
    for kind, n in zip(kinds, lengths, strict=True):
        raw = data[at : at + kind * n]
        at += kind * n
        try:
            text = raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind])  # (refuses surrogates)
        except UnicodeDecodeError:
            text = None
        if (
            text is None
            or len(text) != n
            or (kind > 1 and max(map(ord, text), default=0) <= (0xFF if kind == 2 else 0xFFFF))
        ):
            raise ValueError(
                "packed ids: an id is not text as a str holds it (a surrogate, beyond U+10FFFF, or a kind wider "
                "than its code points need)"
            )
        ids.append(text)
    if len(set(ids)) != len(ids):
        raise ValueError("packed ids: an id is repeated")
    return ids

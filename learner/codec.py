"""A pickle-free byte format for model state: a JSON header followed by raw numpy arrays.

Layout: ``b"RSNAP1\\n"``, 8-byte big-endian header length, the UTF-8 JSON header, then each
array's raw little-endian bytes in header order. The header names every array's dtype and
shape; only plain numeric dtypes are accepted, so decoding never runs code.

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
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

MAGIC = b"RSNAP1\n"
ALLOWED_DTYPES = {"<f4", "<f8", "<i4", "<i8", "<u4", "<u8"}


class CodecError(ValueError):
    """The bytes are not a well-formed snapshot."""


class Chunks(NamedTuple):
    """A 1-D array given as its consecutive pieces, each a contiguous buffer of ``dtype`` items (an
    ``array.array``, a numpy array; ``dtype`` names their byte order, e.g. ``np.dtype(np.int32).str`` for
    native buffers), with ``length`` items in all: :func:`encode` copies the pieces straight into the
    snapshot instead of joining them into an array first (one copy of the model's largest arrays, not two:
    on the grown bench model ~90 MB less to copy into fresh memory while the worker waits). The pieces are
    read when encoded: encode right away, before whatever owns them changes."""

    dtype: str
    parts: Sequence[Any]
    length: int

    def array(self) -> np.ndarray:
        """The pieces joined into one read-only array (bytes.join reads each buffer once)."""
        joined = b"".join(self.parts)
        if len(joined) != self.length * np.dtype(self.dtype).itemsize:
            raise CodecError(f"pieces of {len(joined)} bytes are not {self.length} items of {self.dtype}")
        return np.frombuffer(joined, dtype=self.dtype)


def encode(header: dict[str, Any], arrays: Mapping[str, np.ndarray | Chunks]) -> bytes:
    """The snapshot of ``header`` and ``arrays`` (numpy arrays, or :class:`Chunks`)."""
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
            chunks.extend(array.parts)
            expected += array.length * np.dtype(array.dtype).itemsize
            continue
        a = np.ascontiguousarray(array)
        dtype = a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise CodecError(f"array {name!r} has unsupported dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
        specs.append({"name": name, "dtype": dtype, "shape": list(a.shape)})
        chunks.append(a)  # contiguous: bytes.join below reads its buffer, no intermediate copy
        expected += a.nbytes
    head = _header_json({**header, "arrays": specs})
    prefix = [MAGIC, struct.pack(">Q", len(head)), head]
    blob = b"".join([*prefix, *chunks])
    if len(blob) != expected + sum(map(len, prefix)):  # pieces that are not the items their Chunks declares
        raise CodecError("snapshot arrays do not add up to their declared shapes")
    return blob


def _packed_ids(value: Any) -> orjson.Fragment:
    """A packed sequence of ids (``learner.id_index``: the compiled ``IdTable``) as the JSON array of its ids, written
    by the table itself (no str objects made); anything else is not JSON."""
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
        head = orjson.dumps(header, default=_packed_ids)
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
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
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
    if pos != len(blob):
        raise CodecError("snapshot has trailing bytes")
    return header, arrays

"""The snapshot byte format: the documented layout, whatever the arrays' order and byte order."""

from __future__ import annotations

import json
import struct

import numpy as np

from learner import codec


def _reference(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The layout as documented in :mod:`learner.codec`, written out the plain way."""
    specs, chunks = [], []
    for name, array in arrays.items():
        little = np.asarray(array, dtype=array.dtype.newbyteorder("<"))
        specs.append({"name": name, "dtype": little.dtype.str, "shape": list(little.shape)})
        chunks.append(little.tobytes(order="C"))
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode()
    return codec.MAGIC + struct.pack(">Q", len(head)) + head + b"".join(chunks)


def test_encode_writes_the_documented_layout_and_decodes_back() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f8": rng.normal(size=7),
        "f4_2d": rng.normal(size=(3, 4)).astype(np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 3))),
        "strided": np.arange(20, dtype=np.int64)[::3],
        "big_endian": np.arange(5, dtype=">i4"),
        "empty": np.zeros((0, 10), dtype=np.int32),
        "u8": np.array([1, 2**63], dtype=np.uint64),
    }
    blob = codec.encode({"kind": "demo", "ids": ["a", "é"]}, arrays)
    assert blob == _reference({"kind": "demo", "ids": ["a", "é"]}, arrays)
    header, decoded = codec.decode(blob)
    assert header == {"kind": "demo", "ids": ["a", "é"]}
    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array, err_msg=name)
        assert decoded[name].shape == array.shape
